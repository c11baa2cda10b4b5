"""Sequence packing: a batch's rows laid end to end in fewer rows of `pack_len` tokens, and
prefix sharing: rows of one example that share their image and prompt keep one copy of it.

A padded batch costs every row its longest neighbour's length: the world's captions average 62
tokens but pad to 96 or 128. Packed, the same examples fill rows of `pack_len` tokens
(`data.pack_len`, by default `data.seq_len`) one after another (first-fit decreasing), and each
keeps its own view of the sequence.

Prefix sharing (`share_prefix`): a preference example's chosen and rejected rows read the same
image and prompt (576 image tokens for LLaVA-1.5), so they become one *unit*

    [ prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected ]

where each response attends to the shared part and to itself only, and its positions continue
from the shared part as in its own row. Every response starts with a copy of the prompt's last
token, so each response token is still predicted by the token before it and log-probs are those
of the unshared rows; the copy costs one token per extra response. Rows reading another image
(rDPO's retrieved image, mDPO's crop) form units of their own.

The packed arrays, beside input_ids / attention_mask / loss_mask:

    segment_ids   int [R, L]  1, 2, ... per unit in a packed row, 0 on padding: attention stays
                              inside a unit (models/decoder.py), so no example sees another
    branch_ids    int [R, L]  0 on a unit's shared prefix, j on its j-th response: a response
                              sees the prefix and itself, never a sibling response
    position_ids  int [R, L]  each token's position in its own unpacked row
    row_index     int [R, L]  which unpacked row (b * K + k) a token belongs to; the step sums
                              log-probs per row with it, so losses are those of the padded batch
    image_index   int [R, L]  for the j-th image token of packed row r: where its feature sits
                              in the flattened per-image features [B * M * N] (slot of the
                              row's kind, token within the image)

`pixel_values` and `ref_logps` keep their per-example shapes: each image is still encoded once
per step. The caller rounds the number of packed rows up (data/batching.py `to_packed`), so a
run compiles a few row counts, as length buckets do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

PACKED_KEYS = ("segment_ids", "branch_ids", "position_ids", "row_index", "image_index")


@dataclasses.dataclass(frozen=True)
class Unit:
    """Rows (flat indices b * K + k) packed together; they share their first `shared` tokens."""

    rows: tuple[int, ...]
    shared: int
    length: int  # tokens the unit takes in a packed row


def assign_rows(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """First-fit decreasing: lists of indices whose lengths sum to at most seq_len each."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > seq_len:
            raise ValueError(f"row {i} has {lengths[i]} tokens, more than a packed row's {seq_len}")
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


def units(batch: dict[str, np.ndarray], image_slots: Sequence[int], share_prefix: bool,
          pack_len: int) -> list[Unit]:
    """The batch's rows grouped into units: one row each, or with `share_prefix` the rows of an
    example that read the same image slot and the same prompt (the tokens before the response).
    A unit longer than a packed row (`pack_len`) is split so that each part fits."""
    ids, loss = batch["input_ids"], batch["loss_mask"]
    b, k, _ = ids.shape
    lengths = row_lengths(batch)
    if not share_prefix:
        return [Unit((i,), 0, n) for i, n in enumerate(lengths)]
    out: list[Unit] = []
    for example in range(b):
        groups: dict[tuple, list[int]] = {}
        prompts: dict[tuple, int] = {}
        for kind in range(k):
            i = example * k + kind
            answer = np.flatnonzero(loss[example, kind, :lengths[i]])
            if answer.size and answer[0] > 0:
                key = (image_slots[kind], ids[example, kind, :answer[0]].tobytes())
                prompts[key] = int(answer[0])
            else:  # no prompt or no answer: nothing to share
                key = (i,)
            groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            out.extend(_shared_units(rows, lengths, prompts.get(key, 1), pack_len))
    return out


def _shared_units(rows: list[int], lengths: Sequence[int], prompt: int, pack_len: int) -> list[Unit]:
    """Rows sharing a `prompt`-token prefix, as few units of at most pack_len tokens as a greedy
    split gives (a one-row unit needs no copy of the prompt's last token)."""
    shared = prompt - 1
    parts: list[list[int]] = [[]]
    for i in rows:
        if parts[-1] and shared + sum(lengths[j] - shared for j in parts[-1] + [i]) > pack_len:
            parts.append([])
        parts[-1].append(i)
    return [Unit(tuple(part), shared, shared + sum(lengths[j] - shared for j in part)) if len(part) > 1
            else Unit(tuple(part), 0, lengths[part[0]]) for part in parts]


def pack(batch: dict[str, np.ndarray], bins: Sequence[Sequence[Unit]], num_rows: int, pack_len: int,
         image_slots: Sequence[int], num_image_tokens: int, image_token_id: int,
         row_offset: int = 0) -> dict[str, np.ndarray]:
    """The padded batch ([B, K, L] token arrays) -> packed arrays [num_rows, pack_len], packed row r
    holding the units `bins[r]` (`units`, binned by `assign_rows` of their lengths).

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
    out = {key: np.zeros((num_rows, pack_len), np.int32) for key in ("input_ids", "attention_mask", "loss_mask",
                                                                   *PACKED_KEYS)}
    out["row_index"][:] = row_offset + b * k  # past the last row: dropped when summing per row
    for r, members in enumerate(bins):
        start, images_before = 0, 0
        for segment, unit in enumerate(members, start=1):
            # (row, its first token, branch): the shared prefix once, then each row's own tokens
            pieces = [(unit.rows[0], 0, 0)] if unit.shared else []
            pieces += [(i, unit.shared, branch) for branch, i in enumerate(unit.rows, start=1)]
            for i, first, branch in pieces:
                stop = unit.shared if (branch == 0) else lengths[i]
                end = start + stop - first
                tokens = flat_ids[i, first:stop]
                out["input_ids"][r, start:end] = tokens
                out["attention_mask"][r, start:end] = 1
                out["loss_mask"][r, start:end] = flat_loss[i, first:stop]
                out["segment_ids"][r, start:end] = segment
                out["branch_ids"][r, start:end] = branch
                out["position_ids"][r, start:end] = np.arange(first, stop)
                out["row_index"][r, start:end] = row_offset + i
                # image tokens read their row's image slot, token by token within the image
                in_row = (np.cumsum(flat_ids[i, :stop] == image_token_id) - 1)[first:][tokens == image_token_id]
                example, kind = divmod(i, k)
                image = (row_offset // k + example) * num_images + image_slots[kind]
                out["image_index"][r, images_before:images_before + len(in_row)] = (
                    image * num_image_tokens + in_row % num_image_tokens)
                images_before += len(in_row)
                start = end
    out.update({key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask", "loss_mask")})
    return out
