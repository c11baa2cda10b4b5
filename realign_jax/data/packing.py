"""Sequence packing: a batch's rows laid end to end in fewer rows of `seq_len` tokens.

A padded batch costs every row its longest neighbour's length: the world's captions average 62
tokens but pad to 96 or 128. Packed, the same examples fill rows of `seq_len` tokens one after
another (first-fit decreasing), and each keeps its own view of the sequence:

    segment_ids   int [R, L]  1, 2, ... per packed row, 0 on padding: attention stays inside a
                              segment (models/decoder.py), so no example sees another
    position_ids  int [R, L]  restart at 0 in each segment, as in its own padded row
    row_index     int [R, L]  which unpacked row (b * K + k) a token belongs to; the step sums
                              log-probs per row with it, so losses are those of the padded batch
    image_index   int [R, L]  for the j-th image token of packed row r: where its feature sits
                              in the flattened per-image features [B * M * N] (slot of the
                              row's kind, token within the image)

`pixel_values` and `ref_logps` keep their per-example shapes: each image is still encoded once
per step. The caller rounds the number of packed rows up (train/inputs.py `to_packed`), so a
run compiles a few row counts, as length buckets do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PACKED_KEYS = ("segment_ids", "position_ids", "row_index", "image_index")


def assign_rows(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """First-fit decreasing: lists of row indices whose lengths sum to at most seq_len each."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > seq_len:
            raise ValueError(f"row {i} has {lengths[i]} tokens, more than data.seq_len={seq_len}")
        slot = next((j for j, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            bins.append([])
            free.append(seq_len)
            slot = len(bins) - 1
        bins[slot].append(i)
        free[slot] -= lengths[i]
    return bins


def row_lengths(batch: dict[str, np.ndarray]) -> list[int]:
    """Tokens of each of the batch's B * K rows, example-major."""
    mask = batch["attention_mask"]
    return [int(n) for n in mask.reshape(-1, mask.shape[-1]).sum(-1)]


def pack(batch: dict[str, np.ndarray], bins: Sequence[Sequence[int]], num_rows: int, image_slots: Sequence[int],
         num_image_tokens: int, image_token_id: int, row_offset: int = 0) -> dict[str, np.ndarray]:
    """The padded batch ([B, K, L] token arrays) -> packed arrays [num_rows, L], packed row r
    holding the rows `bins[r]` (`assign_rows` of `row_lengths`).

    `image_slots[k]`: the image slot row kind k reads; `row_offset`: this process's first
    global example times K (global indices, as the jitted step sees the whole batch).
    """
    ids, loss = batch["input_ids"], batch["loss_mask"]
    b, k, length = ids.shape
    num_images = batch["pixel_values"].shape[1]
    flat_ids, flat_loss = ids.reshape(b * k, length), loss.reshape(b * k, length)
    lengths = row_lengths(batch)
    if len(bins) > num_rows:
        raise ValueError(f"the batch needs {len(bins)} packed rows, more than the {num_rows} given")
    out = {key: np.zeros((num_rows, length), np.int32) for key in ("input_ids", "attention_mask", "loss_mask",
                                                                   *PACKED_KEYS)}
    out["row_index"][:] = row_offset + b * k  # past the last row: dropped when summing per row
    for r, members in enumerate(bins):
        start = image_count = 0
        for segment, i in enumerate(members, start=1):
            n, end = lengths[i], start + lengths[i]
            out["input_ids"][r, start:end] = flat_ids[i, :n]
            out["attention_mask"][r, start:end] = 1
            out["loss_mask"][r, start:end] = flat_loss[i, :n]
            out["segment_ids"][r, start:end] = segment
            out["position_ids"][r, start:end] = np.arange(n)
            out["row_index"][r, start:end] = row_offset + i
            images = int((flat_ids[i, :n] == image_token_id).sum())
            example, kind = divmod(i, k)
            first = ((row_offset // k + example) * num_images + image_slots[kind]) * num_image_tokens
            out["image_index"][r, image_count:image_count + images] = first + np.arange(images) % num_image_tokens
            image_count += images
            start = end
    out.update({key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask", "loss_mask")})
    return out
