"""Log-probs of the stacked rows of a batch: the one forward per model per step.

A batch holds B examples with K rows each (the kinds a loss reads, its `LossSpec.rows`):

    input_ids, attention_mask, loss_mask   int  [B, K, T]  (loss_mask marks response tokens)
    pixel_values                           f32  [B, M, C, H, W]  (M distinct images per example)
    ref_logps                              f32  [B, K]  (only when the reference was precomputed)

Images: slot 0 is the example's image, slot 1 the alternative one (rDPO's retrieved image,
mDPO's corruption, or POVID's noised image for the argmax scoring: that forward gives the
argmax tokens, which y_w's clean row then scores); under `loss.crop_per_forward` slot 2 is a
second mDPO crop, which the reference's chosen_alt_image row reads (`RowLayout.for_reference`).
Each distinct image is encoded once; with a frozen tower its features are shared by policy and
reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from realign_jax.models.llava import LlavaModel
from realign_jax.settings.runs import RowLayout
from realign_jax.train.logprobs import TokenScores, shifted, token_scores

def flat_rows(x: jax.Array) -> jax.Array:
    """[B, K, ...] -> [B*K, ...], example-major so a data-sharded batch stays local."""
    return x.reshape((-1,) + x.shape[2:])


def image_states(model: LlavaModel, pixel_values: jax.Array) -> jax.Array:
    """Tower features of every distinct image: [B, M, C, H, W] -> [B, M, N, F]."""
    b, m = pixel_values.shape[:2]
    states = model.vision_features(pixel_values.reshape((b * m,) + pixel_values.shape[2:]))
    return states.reshape((b, m) + states.shape[1:])


def row_features(model: LlavaModel, states: jax.Array, slots: tuple[int, ...]) -> jax.Array:
    """Projected features for each row: [B, M, N, F] -> [B*K, N, D]."""
    projected = model.projector(states)
    return flat_rows(jnp.stack([projected[:, s] for s in slots], axis=1))


def noised_argmax(model: LlavaModel, states: jax.Array, batch: dict[str, jax.Array], layout: RowLayout) -> jax.Array:
    """POVID's noisy answer: at each position t of y_w's row, the teacher-forced argmax
    `yhat_t = argmax pi(. | x, v_noisy, y_w,<t)` under image slot 1 (the noised image), in the
    labels' frame (position t predicts token t+1). No gradient flows through the indices."""
    chosen = layout.stacked_kinds.index("chosen")
    ids, mask = batch["input_ids"][:, chosen], batch["loss_mask"][:, chosen]
    hidden = model.hidden_states(ids, attention_mask=batch["attention_mask"][:, chosen],
                                 image_features=model.projector(states[:, 1]))
    labels, _ = shifted(ids, mask)
    return jax.lax.stop_gradient(token_scores(hidden, model.decoder.output_kernel(), labels, layout.vocab_chunk).argmax)


def row_logps(model: LlavaModel, states: jax.Array, batch: dict[str, jax.Array],
              layout: RowLayout) -> dict[str, jax.Array]:
    """Summed response log-probs per kind ([B] each), response lengths and the chosen NLL;
    under `layout.wpo` also `wpo_<kind>`, the mean over the response of log p(y_t) - log sum_v
    p(v)^2 (WPO's log weight, no gradient).

    Under POVID's argmax scoring, `rejected_noisy` is `sum_t log pi(yhat_t | x, v, y_w,<t)`:
    the noised image's argmax tokens gathered from y_w's own clean forward, so the noisy term
    costs one extra forward (the noised one), not two."""
    kinds = layout.stacked_kinds
    chosen = kinds.index("chosen")
    if "segment_ids" in batch:
        sums, lengths, aligned = _packed_sums(model, states, batch, layout)
        noisy = None
    else:
        also = noised_argmax(model, states, batch, layout) if layout.noisy_scoring == "argmax" else None
        sums, lengths, noisy, aligned = _padded_sums(model, states, batch, layout, chosen_also=also)
    out = {kind: sums[:, i] for i, kind in enumerate(kinds)}
    out.update({f"length_{kind}": lengths[:, i] for i, kind in enumerate(kinds)})
    if aligned is not None:
        out.update({f"wpo_{kind}": aligned[:, i] / jnp.maximum(lengths[:, i], 1) for i, kind in enumerate(kinds)})
    if noisy is not None:
        out["rejected_noisy"], out["length_rejected_noisy"] = noisy, lengths[:, chosen]
    out["nll_chosen"] = -sums[:, chosen] / jnp.maximum(lengths[:, chosen], 1)
    return out


def _padded_sums(model: LlavaModel, states: jax.Array, batch: dict[str, jax.Array], layout: RowLayout,
                 chosen_also: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None,
                                                                jax.Array | None]:
    """Summed response log-probs and response lengths [B, K] of rows padded to one length, with
    `chosen_also` ([B, T] labels) the chosen row's summed log-probs of those labels [B], and under
    `layout.wpo` the summed log p(y_t) - log sum_v p(v)^2 [B, K]."""
    input_ids = batch["input_ids"]
    b, k = input_ids.shape[:2]
    ids = flat_rows(input_ids)
    features = row_features(model, states, layout.image_slots)
    hidden = model.hidden_states(ids, attention_mask=flat_rows(batch["attention_mask"]), image_features=features)
    labels, mask = shifted(ids, flat_rows(batch["loss_mask"]))
    chosen = layout.stacked_kinds.index("chosen")
    also = None
    if chosen_also is not None:  # the other rows score their own labels twice: cheaper than a second pass
        also = labels.reshape(b, k, -1).at[:, chosen].set(chosen_also).reshape(labels.shape)
    scores = token_scores(hidden, model.decoder.output_kernel(), labels, layout.vocab_chunk, also_labels=also,
                          sum_sq=layout.wpo)
    per_token = jnp.where(_best_other_kinds(layout)[None, :, None],
                          scores.best_other.reshape(b, k, -1), scores.label.reshape(b, k, -1))
    mask = mask.reshape(b, k, -1)
    noisy = None
    if scores.also is not None:
        noisy = jnp.sum(scores.also.reshape(b, k, -1)[:, chosen] * mask[:, chosen], axis=-1)
    aligned = None
    if scores.log_sum_sq is not None:
        aligned = jnp.sum(_wpo_per_token(scores).reshape(b, k, -1) * mask, axis=-1)
    return jnp.sum(per_token * mask, axis=-1), jnp.sum(mask, axis=-1), noisy, aligned


def _packed_sums(model: LlavaModel, states: jax.Array, batch: dict[str, jax.Array],
                 layout: RowLayout) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The same [B, K] sums from packed rows (data/packing.py): one forward over the packed
    rows, then per-token scores summed into the unpacked row each token came from (a shared
    prefix's tokens predict only prompt tokens, which carry no loss)."""
    b, k = states.shape[0], len(layout.stacked_kinds)
    projected = model.projector(states)
    features = projected.reshape(-1, projected.shape[-1])[batch["image_index"]]  # [R, L, D], in token order
    ids = batch["input_ids"]
    hidden = model.hidden_states(ids, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                                 image_features=features, segment_ids=batch["segment_ids"],
                                 branch_ids=batch["branch_ids"])
    labels, mask = shifted(ids, batch["loss_mask"])  # a segment's last token predicts a BOS: masked
    scores = token_scores(hidden, model.decoder.output_kernel(), labels, layout.vocab_chunk, sum_sq=layout.wpo)
    row = batch["row_index"]
    per_token = jnp.where(_best_other_kinds(layout)[row % k], scores.best_other, scores.label)

    def per_row(x: jax.Array) -> jax.Array:
        return jax.ops.segment_sum((x * mask).ravel(), row.ravel(), num_segments=b * k).reshape(b, k)

    aligned = per_row(_wpo_per_token(scores)) if scores.log_sum_sq is not None else None
    return per_row(per_token), per_row(jnp.ones_like(mask)), aligned


def _wpo_per_token(scores: TokenScores) -> jax.Array:
    """WPO's per-token log weight log p(y_t) - log sum_v p(v)^2 (TRL's aligned log-probs), no gradient."""
    return jax.lax.stop_gradient(scores.label) - scores.log_sum_sq


def _best_other_kinds(layout: RowLayout) -> jax.Array:
    return jnp.array([layout.scored_by_best_other(kind) for kind in layout.stacked_kinds])
