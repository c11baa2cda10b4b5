"""One host batch's shape for the step: trimmed to a length bucket, or packed (with shared
prefixes, per micro-batch). Training, the reference pass, `mode=inspect` and the AOT check all
shape their batches here, from a small `BatchShape` value (no Trainer needed).

The micro-batch convention is the step's: with `micro_batches` > 1 the step splits the batch
strided (train/step.py `_micro_batches`: micro-batch m holds examples m, m + count, ...), and
`to_packed` places the packed rows where that split finds them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from realign_jax.data import packing


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """How host batches are shaped: `buckets` when padded, the packing keys when packed."""

    layout: Any  # the objective's rows: `.stacked_kinds` and `.image_slots` (settings/runs.RowLayout)
    num_image_tokens: int
    image_token_id: int
    buckets: tuple[int, ...] = ()  # padded rows are trimmed to the shortest of these that holds them
    packing: bool = False
    share_prefix: bool = False
    pack_len: int = 0  # tokens per packed row; 0 = the batch's row length
    micro_batches: int = 1  # packed one by one (train.grad_accum; 1 for a whole-batch reference pass)
    row_multiple: int = 1  # packed row counts are rounded up to a multiple of this (`packed_row_multiple`)


def shape_batch(batch: dict[str, np.ndarray], shape: BatchShape) -> dict[str, np.ndarray]:
    """The host batch as the step takes it."""
    if shape.packing:
        return to_packed(batch, shape.layout, shape, shape.row_multiple, shape.share_prefix, shape.pack_len,
                         shape.micro_batches)
    return to_bucket(batch, shape.buckets)


def packed_row_multiple(batch_size: int, data_shards: int) -> int:
    """What this process's packed row count is rounded up to: a multiple of the data shards its
    rows are split over, and coarse enough (an eighth of the batch) that a run compiles a few
    row counts."""
    local_shards = max(1, data_shards // jax.process_count())
    return math.lcm(local_shards, max(1, batch_size // jax.process_count() // 8))


def parse_buckets(spec: str, seq_len: int) -> tuple[int, ...]:
    """'auto' -> quarters of seq_len; '' -> seq_len only; '128,256' -> those (seq_len added)."""
    if spec == "auto":
        lengths = {max(8, -(-seq_len * q // 4) // 8 * 8) for q in (1, 2, 3)}
    elif spec:
        try:
            lengths = {int(x) for x in spec.split(",")}
        except ValueError:
            raise ValueError(f"data.length_buckets={spec!r}: give 'auto', '' or comma-separated lengths") from None
        if min(lengths) <= 0 or max(lengths) > seq_len:
            raise ValueError(f"data.length_buckets={spec!r}: lengths must be in 1..data.seq_len={seq_len}")
    else:
        lengths = set()
    return tuple(sorted(lengths | {seq_len}))


def bucket_length(batch: dict[str, np.ndarray], buckets: Sequence[int]) -> int:
    """The shortest bucket that holds every (right-padded) row of the batch."""
    longest = int(batch["attention_mask"].sum(-1).max())
    return next(b for b in buckets if b >= longest)


def trim(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Cut the token arrays ([..., T]) to `length`; images and reference log-probs are kept."""
    token_keys = ("input_ids", "attention_mask", "loss_mask")
    return {k: (v[..., :length] if k in token_keys else v) for k, v in batch.items()}


def _agreed(value: int) -> int:
    """The largest `value` of all processes (they must agree on the global shapes)."""
    if jax.process_count() > 1:
        return int(np.max(multihost_utils.process_allgather(np.int32(value))))
    return value


def to_bucket(batch: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Trim the batch to its length bucket; every process takes the longest any of them needs,
    so the global arrays agree in shape."""
    return trim(batch, _agreed(bucket_length(batch, buckets)))


def to_packed(batch: dict[str, np.ndarray], layout: Any, model: Any, row_multiple: int,
              share_prefix: bool = False, pack_len: int = 0, micro_batches: int = 1) -> dict[str, np.ndarray]:
    """Pack the batch's rows (`data.packing`, `data.share_prefix`) into a multiple of
    `row_multiple` rows of `pack_len` tokens (0: the batch's row length); every process packs
    its own examples into as many rows as the fullest of them needs. `model` gives
    `num_image_tokens` and `image_token_id` (a LlavaConfig or a BatchShape).

    With `micro_batches` > 1 (`train.grad_accum`) the step splits the batch strided
    (`step._micro_batches`: micro-batch m holds examples m, m + count, ...), so each
    micro-batch's examples are packed on their own, into the same number of rows, and row r of
    micro-batch m is placed at r * count + m, where the strided split finds it."""
    pack_len = pack_len or batch["input_ids"].shape[-1]
    k = len(layout.stacked_kinds)
    subs = [{key: value[m::micro_batches] for key, value in batch.items()} for m in range(micro_batches)]
    bins = []
    for sub in subs:
        groups = packing.units(sub, layout.image_slots, share_prefix, pack_len)
        bins.append([[groups[i] for i in members]
                     for members in packing.assign_rows([u.length for u in groups], pack_len)])
    rows = _agreed(-(-max(len(b) for b in bins) // row_multiple) * row_multiple)
    offset = jax.process_index() * (batch["input_ids"].shape[0] // micro_batches) * k
    packed = [packing.pack(sub, sub_bins, rows, pack_len, layout.image_slots, model.num_image_tokens,
                           model.image_token_id, offset) for sub, sub_bins in zip(subs, bins)]
    token_keys = ("input_ids", "attention_mask", "loss_mask", *packing.PACKED_KEYS)
    out = dict(batch)  # per-example arrays (images, ref_logps) stay whole: the step splits them itself
    out.update({key: np.stack([p[key] for p in packed], axis=1).reshape(rows * micro_batches, pack_len)
                for key in token_keys})
    return out
