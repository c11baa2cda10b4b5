"""Per-token log-probs of given labels from final hidden states, one vocabulary chunk at a time.

The full [rows, length, vocab] float32 logits of a 32k-vocabulary model are the largest
tensor of a preference step. Here the vocabulary is walked in chunks with a running
logsumexp (the chunk body is rematerialised, so the backward pass holds a few chunk-sized
buffers rather than the whole logits; measured in tests/test_logprobs.py),
and only per-position scalars leave the loop: the label's logit, the best logit that is
not the label (Re-Align's public-code scoring), the argmax token (POVID's, under the noised
image), optionally a second label's logit (POVID's argmax tokens, in y_w's clean forward) and
optionally log sum_v p(v)^2 (WPO's weights).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TokenScores:
    """Per position of `labels` ([rows, length] each)."""

    label: jax.Array  # log p(label)
    best_other: jax.Array  # log p of the most likely token that is not the label
    argmax: jax.Array  # index of the most likely token (int32, no gradient)
    also: jax.Array | None = None  # log p(also_labels), when given
    log_sum_sq: jax.Array | None = None  # log sum_v p(v)^2 (no gradient), when asked for


def token_scores(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, chunk_size: int = 8192,
                 also_labels: jax.Array | None = None, sum_sq: bool = False) -> TokenScores:
    """Log-softmax scores of `labels` under logits = hidden @ kernel, never materialising them.

    hidden: [rows, length, embed]; kernel: [embed, vocab]; labels: int [rows, length].
    `also_labels` (same shape) are scored in the same pass: POVID's argmax tokens under the
    noised image, read from y_w's clean forward. `sum_sq` also keeps a running
    sum_v exp(2 (logit_v - max)) for WPO's log sum_v p(v)^2.
    """
    vocab = kernel.shape[1]
    chunk_size = min(chunk_size, vocab)
    num_chunks = -(-vocab // chunk_size)
    pad = num_chunks * chunk_size - vocab
    if pad:
        kernel = jnp.pad(kernel, ((0, 0), (0, pad)))
    chunks = kernel.reshape(kernel.shape[0], num_chunks, chunk_size).transpose(1, 0, 2)
    neg_inf = jnp.full(labels.shape, -jnp.inf, jnp.float32)
    also = labels if also_labels is None else also_labels
    zeros = jnp.zeros(labels.shape, jnp.float32)
    init = (neg_inf, zeros, neg_inf, neg_inf, jnp.zeros(labels.shape, jnp.int32), neg_inf, zeros)

    @jax.checkpoint
    def body(carry, inputs):
        running_max, running_sum, label_logit, best_other, argmax, also_logit, running_sq = carry
        index, chunk = inputs
        logits = jnp.einsum("rle,ev->rlv", hidden, chunk, preferred_element_type=jnp.float32)
        token = index * chunk_size + jnp.arange(chunk_size)
        logits = jnp.where(token < vocab, logits, -jnp.inf)
        chunk_max = jnp.max(logits, axis=-1)
        new_max = jnp.maximum(running_max, chunk_max)
        shifted_logits = logits - new_max[..., None]
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(shifted_logits), -1)
        if sum_sq:
            running_sq = running_sq * jnp.exp(2 * (running_max - new_max)) + jnp.sum(jnp.exp(2 * shifted_logits), -1)
        is_label = token == labels[..., None]
        label_logit = jnp.maximum(label_logit, jnp.max(jnp.where(is_label, logits, -jnp.inf), axis=-1))
        best_other = jnp.maximum(best_other, jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1))
        chunk_arg = index * chunk_size + jnp.argmax(logits, axis=-1).astype(jnp.int32)
        argmax = jnp.where(chunk_max > running_max, chunk_arg, argmax)
        if also_labels is not None:
            also_logit = jnp.maximum(also_logit, jnp.max(jnp.where(token == also[..., None], logits, -jnp.inf), -1))
        return (new_max, running_sum, label_logit, best_other, argmax, also_logit, running_sq), None

    (max_logit, total, label_logit, best_other, argmax, also_logit, total_sq), _ = jax.lax.scan(
        body, init, (jnp.arange(num_chunks), chunks))
    log_z = max_logit + jnp.log(total)
    # log sum p^2 = log sum exp(2 (l - max)) - 2 log sum exp(l - max), as TRL's chunked kernel has it
    log_sum_sq = jax.lax.stop_gradient(jnp.log(total_sq) - 2 * jnp.log(total)) if sum_sq else None
    return TokenScores(label_logit - log_z, best_other - log_z, jax.lax.stop_gradient(argmax),
                       None if also_labels is None else also_logit - log_z, log_sum_sq)


def shifted(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Labels and mask aligned with hidden states: position t predicts token t+1."""
    labels = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    return labels, mask.astype(jnp.float32)
