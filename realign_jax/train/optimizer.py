"""AdamW with warm-up + cosine decay, global-norm clipping and per-group learning rates.

Groups are regexes on dotted parameter paths (`projector.linear_1.kernel`, ...), so the
papers' setup (adapters at 1e-5, projector at 2e-5) is a config line, not code.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import optax

from realign_jax.data.keyvalue import parse_key_values

DEFAULT_GROUP = "default"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0 = no clipping
    b1: float = 0.9
    b2: float = 0.999
    lr_groups: tuple[tuple[str, float], ...] = ()  # (regex, lr); first match wins

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} and optim.clip_norm={self.clip_norm} must be >= 0")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule={self.schedule!r}: choose cosine or constant")
        for pattern, lr in self.lr_groups:
            if lr <= 0:
                raise ValueError(f"optim.lr_groups: lr {lr} for {pattern!r} must be positive")

    @classmethod
    def parse_groups(cls, text: str) -> tuple[tuple[str, float], ...]:
        """'regex=lr,regex=lr' (the command-line form) -> ((regex, lr), ...)."""
        error = "optim.lr_groups item {item!r} is not 'regex=learning_rate'"
        groups = []
        for pattern, value in parse_key_values(text, error, at_last=True):  # a regex may hold '='
            try:
                re.compile(pattern)
                groups.append((pattern, float(value)))
            except (ValueError, re.error):
                raise ValueError(error.format(item=f"{pattern}={value}")) from None
        return tuple(groups)


def schedule(peak: float, config: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = int(config.warmup_ratio * total_steps)
    if config.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                                    [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end_value=0.0)


def dotted(path: tuple[Any, ...]) -> str:
    """'decoder.layers.q_proj.kernel' from a jax key path through nnx.State and Variables."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path
                    if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"))


def group_labels(params: Any, config: OptimConfig) -> Any:
    """The lr group of every leaf (same tree structure as `params`)."""
    def label(path: tuple[Any, ...], _: Any) -> str:
        name = dotted(path)
        for index, (pattern, _lr) in enumerate(config.lr_groups):
            if re.search(pattern, name):
                return f"group{index}"
        return DEFAULT_GROUP
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: OptimConfig, total_steps: int, params: Any) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The transformation for `params` and each group's schedule (for logging the lr)."""
    peaks = {DEFAULT_GROUP: config.lr} | {f"group{i}": lr for i, (_, lr) in enumerate(config.lr_groups)}
    schedules = {name: schedule(peak, config, total_steps) for name, peak in peaks.items()}

    def adamw(sched: optax.Schedule) -> optax.GradientTransformation:
        decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norms and biases
        return optax.adamw(sched, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask)

    inner = optax.multi_transform({name: adamw(s) for name, s in schedules.items()}, group_labels(params, config))
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    return optax.chain(*parts, inner), schedules
