"""The validated, typed view of a training config (configs/*.py are ml_collections files).

Every check happens here, before anything is built, and fails with one line naming the key,
e.g. `reference='lora_off' needs lora.rank > 0`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from realign_jax.data.encode import TRUNCATION
from realign_jax.data.keyvalue import parse_key_values
from realign_jax.data.batching import parse_buckets
from realign_jax.data.records import check_on_bad_record
from realign_jax.data.sources import RECORD_SOURCES
from realign_jax.objectives.losses import LossConfig, loss_spec
from realign_jax.train.lora import LoraConfig
from realign_jax.train.optimizer import OptimConfig
from realign_jax.train.rows import RowLayout
from realign_jax.train.step import REFERENCES

MODEL_RUNTIME_KEYS = ("dtype", "param_dtype", "remat", "scan_layers", "attention_impl")
DATA_SOURCES = ("random", *RECORD_SOURCES)
ON_NONFINITE = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, Any], ...] = ()  # overrides of partitioning.DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    objective: str  # "sft" or a loss name
    layout: RowLayout
    loss: LossConfig
    lora: LoraConfig
    optim: OptimConfig
    mesh: MeshSettings
    reference: str
    trainable: str  # regex on base parameter paths trained in full ("" = none)
    steps: int
    batch_size: int
    grad_accum: int
    seed: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    on_nonfinite: str  # skip | stop (train/loop.py NonFiniteSteps)
    max_consecutive_skips: int
    export: bool
    profile_start: int
    profile_steps: int
    model: dict[str, Any]  # path, preset, seed and runtime switches


def _section(config: Any, name: str) -> Any:
    if name not in config:
        raise ValueError(f"config has no '{name}' section")
    return config[name]


def _parse_rules(text: str) -> tuple[tuple[str, Any], ...]:
    """'embed=fsdp,mlp=tensor,vocab=' -> rule pairs (empty target = replicated, '+' joins axes)."""
    rules = []
    for name, target in parse_key_values(text, "mesh.rules item {item!r} is not 'logical_axis=mesh_axis'"):
        axes = tuple(a for a in target.split("+") if a)
        bad = [a for a in axes if a not in ("data", "fsdp", "tensor")]
        if bad:
            raise ValueError(f"mesh.rules: {bad} are not mesh axes (data, fsdp, tensor)")
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(rules)


def parse(config: Any) -> TrainSettings:
    """ConfigDict -> TrainSettings, raising ValueError('<key>...') on the first bad value."""
    mode = config.mode
    loss_cfg, train, optim, lora, mesh = (_section(config, n) for n in ("loss", "train", "optim", "lora", "mesh"))
    # `inspect` shows the rows of the config it is pointed at: an SFT config (no reference) inspects as sft.
    objective = "sft" if mode == "sft" or (mode == "inspect" and config.reference == "none") else loss_cfg.name
    if objective != "sft":
        loss_spec(objective)  # raises for an unknown loss.name
    reference = config.reference
    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r}: choose one of {REFERENCES}")
    if objective == "sft" and reference != "none":
        raise ValueError(f"reference={reference!r}: mode 'sft' uses no reference; set reference='none'")
    if objective != "sft" and reference == "none":
        raise ValueError("reference='none' only fits mode 'sft'; preference losses need a reference")
    lora_config = LoraConfig(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets)
    if reference == "lora_off" and not lora_config.rank:
        raise ValueError("reference='lora_off' needs lora.rank > 0 (or use reference='frozen_copy')")
    layout = RowLayout.for_objective(objective, rejected_scoring=loss_cfg.rejected_scoring,
                                     noisy_scoring=loss_cfg.noisy_scoring, alt_image=loss_cfg.get("alt_image", "rejected_image"),
                                     vocab_chunk=loss_cfg.vocab_chunk)
    if reference == "precomputed" and layout.noisy_scoring == "argmax":
        raise ValueError("reference='precomputed' cannot go with loss.noisy_scoring='argmax': the noisy "
                         "response comes from the current policy, so its reference log-prob changes every step")
    pack_len = config.data.get("pack_len", 0)
    if pack_len and pack_len < config.data.seq_len:
        raise ValueError(f"data.pack_len={pack_len} is shorter than data.seq_len={config.data.seq_len}: a row "
                         "must fit a packed row (0 = seq_len)")
    if config.data.get("share_prefix") and not config.data.packing:
        raise ValueError("data.share_prefix=True needs data.packing=True: shared prefixes live in packed rows")
    if config.data.packing and layout.noisy_scoring == "argmax":
        raise ValueError("data.packing=True cannot go with loss.noisy_scoring='argmax': the noisy row is rebuilt "
                         "from the chosen row inside the step, which needs the rows unpacked")
    loss = LossConfig(beta=loss_cfg.beta, label_smoothing=loss_cfg.label_smoothing,
                      length_normalize=loss_cfg.length_normalize, sft_weight=loss_cfg.sft_weight,
                      visual_weight=loss_cfg.visual_weight, mdpo_anchor_delta=loss_cfg.mdpo_anchor_delta,
                      povid_weights=tuple(loss_cfg.povid_weights))
    optim_config = OptimConfig(lr=optim.lr, warmup_ratio=optim.warmup_ratio, schedule=optim.schedule,
                               weight_decay=optim.weight_decay, clip_norm=optim.clip_norm, b1=optim.b1, b2=optim.b2,
                               lr_groups=OptimConfig.parse_groups(optim.lr_groups))
    try:
        re.compile(train.trainable)
    except re.error as e:
        raise ValueError(f"train.trainable={train.trainable!r} is not a regex: {e}") from None
    if not train.trainable and not lora_config.rank:
        raise ValueError("nothing to train: train.trainable is empty and lora.rank is 0")
    for key in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        if train[key] < 1:
            raise ValueError(f"train.{key}={train[key]} must be >= 1")
    if train.batch_size % train.grad_accum:
        raise ValueError(f"train.batch_size={train.batch_size} is not a multiple of train.grad_accum={train.grad_accum}")
    if train.checkpoint_every < 0:
        raise ValueError(f"train.checkpoint_every={train.checkpoint_every} must be >= 0 (0 = only at the end)")
    if train.on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"train.on_nonfinite={train.on_nonfinite!r}: choose one of {ON_NONFINITE}")
    if train.max_consecutive_skips < 0:
        raise ValueError(f"train.max_consecutive_skips={train.max_consecutive_skips} must be >= 0")
    if train.profile_steps < 1 or train.profile_start < 1:
        raise ValueError("train.profile_start and train.profile_steps must be >= 1")
    data = _section(config, "data")
    if data.source not in DATA_SOURCES:
        raise ValueError(f"data.source={data.source!r} is unknown; available: {DATA_SOURCES}")
    if data.source != "random" and not data.path:
        raise ValueError(f"data.source={data.source!r} needs data.path (the records: file, folder or pattern)")
    if data.workers < 0:
        raise ValueError(f"data.workers={data.workers} must be >= 0 (0 = threads in the training process)")
    for key, value, least in (("data.seq_len", data.seq_len, 1), ("data.seed", data.seed, 0), ("seed", config.seed, 0),
                              ("data.cache_mb", data.cache_mb, 0),
                              ("loss.vocab_chunk", loss_cfg.vocab_chunk, 1)):
        if value < least:
            raise ValueError(f"{key}={value} must be >= {least}")
    if data.source == "random" and data.num_examples < 1:
        raise ValueError(f"data.num_examples={data.num_examples} must be >= 1")
    parse_buckets(data.length_buckets, data.seq_len)
    check_on_bad_record(data.on_bad_record)
    if data.truncation not in TRUNCATION:
        raise ValueError(f"data.truncation={data.truncation!r}: choose one of {TRUNCATION}")
    model = config.model.to_dict()
    if not model.get("path") and not model.get("preset"):
        raise ValueError("model.path is empty and there is no model.preset to build a random model from: give "
                         "the Hugging Face folder of the model to start from")
    return TrainSettings(
        objective=objective, layout=layout, loss=loss, lora=lora_config, optim=optim_config,
        mesh=MeshSettings(mesh.data, mesh.fsdp, mesh.tensor, _parse_rules(mesh.rules)), reference=reference,
        trainable=train.trainable, steps=train.steps, batch_size=train.batch_size, grad_accum=train.grad_accum,
        seed=config.seed, log_every=train.log_every, checkpoint_every=train.checkpoint_every,
        keep_checkpoints=train.keep_checkpoints, on_nonfinite=train.on_nonfinite,
        max_consecutive_skips=train.max_consecutive_skips, export=train.export, profile_start=train.profile_start,
        profile_steps=train.profile_steps, model=model,
    )
