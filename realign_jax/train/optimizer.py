"""AdamW with warm-up + cosine decay, global-norm clipping and per-group learning rates.

Groups are regexes on dotted parameter paths (`projector.linear_1.kernel`, ...), so the
papers' setup (adapters at 1e-5, projector at 2e-5) is a config line, not code.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

from realign_jax.settings.sections import OptimConfig

DEFAULT_GROUP = "default"


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
        for index, (pattern, _lr) in enumerate(config.groups):
            if re.search(pattern, name):
                return f"group{index}"
        return DEFAULT_GROUP
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: OptimConfig, total_steps: int, params: Any) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The transformation for `params` and each group's schedule (for logging the lr)."""
    peaks = {DEFAULT_GROUP: config.lr} | {f"group{i}": lr for i, (_, lr) in enumerate(config.groups)}
    schedules = {name: schedule(peak, config, total_steps) for name, peak in peaks.items()}

    def adamw(sched: optax.Schedule) -> optax.GradientTransformation:
        decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norms and biases
        return optax.adamw(sched, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask)

    inner = optax.multi_transform({name: adamw(s) for name, s in schedules.items()}, group_labels(params, config))
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    return optax.chain(*parts, inner), schedules
