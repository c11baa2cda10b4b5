"""Vocabulary-chunked log-probs agree with a plain full log-softmax, in value, gradient and
argmax, and never hold the full [rows, length, vocab] logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel, abstract_model
from realign_jax.train.logprobs import shifted, token_scores
from realign_jax.train.rows import RowLayout, image_states, noised_argmax, row_logps

ROWS, LENGTH, EMBED = 2, 7, 12


def _problem(vocab: int, seed: int = 0):
    """Random hidden/kernel/labels; some labels are the argmax, the first and the last token."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(ROWS, LENGTH, EMBED)).astype(np.float32)
    kernel = (0.7 * rng.normal(size=(EMBED, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, size=(ROWS, LENGTH)).astype(np.int32)
    top = np.argmax(hidden.astype(np.float64) @ kernel.astype(np.float64), axis=-1)
    labels[0, :3] = top[0, :3]  # label == argmax: best_other must be the runner-up
    labels[1, 0], labels[1, 1] = 0, vocab - 1
    return hidden, kernel, labels


def _reference(hidden, kernel, labels):
    """float64 numpy: label log-prob, best non-label log-prob, argmax."""
    logits = hidden.astype(np.float64) @ kernel.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))
    label = np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    others = logp.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, -1)
    return label, others.max(-1), logp.argmax(-1)


@pytest.mark.parametrize("vocab,chunk", [(48, 16), (50, 16), (50, 7), (50, 50), (50, 64), (37, 1)])
def test_token_scores_match_full_log_softmax(vocab, chunk):
    hidden, kernel, labels = _problem(vocab)
    scores = token_scores(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(labels), chunk)
    label, best_other, argmax = _reference(hidden, kernel, labels)
    assert scores.label.shape == scores.best_other.shape == scores.argmax.shape == labels.shape
    assert scores.argmax.dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(scores.label), label, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.best_other), best_other, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(scores.argmax), argmax)
    # The test data covers both cases of best_other (label is / is not the argmax).
    assert (argmax == labels).any() and (argmax != labels).any()


def test_argmax_ties_across_chunks_pick_the_first_token_like_numpy():
    hidden, kernel, labels = _problem(50, seed=1)
    kernel[:, 5] = 3.0 * np.sign(hidden[0, 0]) / np.sqrt(EMBED)  # column 5 wins position (0, 0)...
    kernel[:, 45] = kernel[:, 5]  # ...tied with column 45 in the last chunk
    labels[0, 0] = 5
    scores = token_scores(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(labels), 16)
    label, best_other, argmax = _reference(hidden, kernel, labels)
    assert argmax[0, 0] == 5
    np.testing.assert_array_equal(np.asarray(scores.argmax), argmax)
    # label 5 is excluded from best_other, its twin 45 is not.
    np.testing.assert_allclose(np.asarray(scores.best_other)[0, 0], label[0, 0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.best_other), best_other, atol=1e-5, rtol=1e-5)


def _full_scores(hidden, kernel, labels):
    logp = jax.nn.log_softmax(jnp.einsum("rle,ev->rlv", hidden, kernel), axis=-1)
    label = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    is_label = jnp.arange(kernel.shape[1]) == labels[..., None]
    return label, jnp.max(jnp.where(is_label, -jnp.inf, logp), axis=-1)


@pytest.mark.parametrize("chunk", [16, 64])
def test_gradients_match_full_log_softmax(chunk):
    hidden, kernel, labels = (jnp.asarray(a) for a in _problem(50))
    rng = np.random.default_rng(1)
    w_label = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)
    w_other = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)

    def chunked(h, k):
        s = token_scores(h, k, labels, chunk)
        return jnp.sum(w_label * s.label), jnp.sum(w_other * s.best_other)

    def full(h, k):
        label, best_other = _full_scores(h, k, labels)
        return jnp.sum(w_label * label), jnp.sum(w_other * best_other)

    def grads(f, which):
        return jax.jit(jax.grad(lambda h, k: f(h, k)[which], argnums=(0, 1)))(hidden, kernel)

    for which in (0, 1):  # label scores, then best_other scores
        got, want = grads(chunked, which), grads(full, which)
        for g, w in zip(got, want):
            assert bool(jnp.isfinite(g).all())
            assert float(jnp.abs(w).max()) > 1e-2  # a real gradient, not zeros on both sides
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-4)


def test_chunked_backward_never_holds_the_full_logits():
    rows, length, embed, vocab, chunk = 4, 256, 32, 32768, 1024
    args = (jax.ShapeDtypeStruct((rows, length, embed), jnp.float32),
            jax.ShapeDtypeStruct((embed, vocab), jnp.float32),
            jax.ShapeDtypeStruct((rows, length), jnp.int32),
            jax.ShapeDtypeStruct((rows, length), jnp.float32))

    def chunked(h, k, labels, w):
        return jnp.sum(w * token_scores(h, k, labels, chunk).label)

    def full(h, k, labels, w):
        return jnp.sum(w * _full_scores(h, k, labels)[0])

    def temp_bytes(f):
        compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = rows * length * vocab * 4
    assert temp_bytes(full) > logits_bytes  # the measure sees the full logits when they exist
    assert temp_bytes(chunked) < logits_bytes / 2


def test_shifted_moves_labels_and_mask_left_with_zero_padding():
    ids = jnp.array([[11, 12, 13, 14], [21, 22, 23, 24]], jnp.int32)
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1]], jnp.int32)
    labels, shifted_mask = shifted(ids, mask)
    np.testing.assert_array_equal(np.asarray(labels), [[12, 13, 14, 0], [22, 23, 24, 0]])
    assert labels.dtype == ids.dtype
    assert shifted_mask.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(shifted_mask), [[1, 1, 0, 0], [1, 1, 1, 0]])


def _tiny_model(config, seed: int = 0, std: float = 0.02) -> LlavaModel:
    """A LlavaModel of `config` with numpy-random weights: the structure of LlavaModel(config, rngs=...)
    without compiling an eager random initialiser for every parameter shape (~10 s on CPU)."""
    graphdef, state = nnx.split(abstract_model(config))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        mean = 1.0 if "'scale'" in jax.tree_util.keystr(path) else 0.0  # norm scales around 1
        return jnp.asarray(mean + std * rng.normal(size=x.shape), x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


def _povid_batch(config, k: int = 2):
    """B=2 examples x K rows (chosen, rejected[, rejected_noisy]), 2 images each; row 1 left-padded."""
    rng = np.random.default_rng(0)
    b, pad, prompt, response = 2, 2, 3, 6
    n_img = config.num_image_tokens
    length = pad + 1 + n_img + prompt + response
    ids = np.zeros((b, k, length), np.int32)
    attention = np.ones((b, k, length), np.int32)
    loss = np.zeros((b, k, length), np.int32)
    for i in range(b):
        start = pad if i == 1 else 0
        attention[i, :, :start] = 0
        ids[i, :, start] = 1
        ids[i, :, start + 1:start + 1 + n_img] = config.image_token_id
        tail = length - (start + 1 + n_img)
        ids[i, :, start + 1 + n_img:] = rng.integers(3, 200, size=(k, tail))
        loss[i, :, length - response - (pad if i == 0 else 0):length - (pad if i == 0 else 0)] = 1
    pixels = rng.normal(size=(b, 2, 3, config.vision.image_size, config.vision.image_size)).astype(np.float32)
    pixels[:, 1] *= 3.0
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss, "pixel_values": pixels}
    return {key: jnp.asarray(v) for key, v in batch.items()}


@nnx.jit
def _full_logits(model, ids, pixel_values, attention_mask):
    return model(ids, pixel_values=pixel_values, attention_mask=attention_mask)


def _chosen_logits(model, batch, slot, ids=None):
    """float64 full logits of the chosen row (row 0) under image `slot`, optionally with other ids."""
    ids = batch["input_ids"][:, 0] if ids is None else jnp.asarray(ids)
    return np.asarray(_full_logits(model, ids, batch["pixel_values"][:, slot], batch["attention_mask"][:, 0]),
                      np.float64)


def _log_softmax(logits):
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)


def test_noised_argmax_is_the_teacher_forced_argmax_under_the_alt_image():
    config = preset("tiny")
    model = _tiny_model(config, std=0.1)  # weights large enough for image and context to sway the argmax
    batch = _povid_batch(config)
    layout = RowLayout.for_objective("povid", noisy_scoring="argmax", vocab_chunk=96)  # 256 = 96+96+64
    assert layout.stacked_kinds == ("chosen", "rejected") and layout.num_images == 2

    noisy = np.asarray(nnx.jit(lambda m, b: noised_argmax(m, image_states(m, b["pixel_values"]), b, layout))(
        model, batch))
    ids = np.asarray(batch["input_ids"][:, 0])
    response = np.asarray(batch["loss_mask"][:, 0]).astype(bool)
    assert noisy.shape == ids.shape and response.any()

    rows, cols = np.nonzero(response)
    previous = _chosen_logits(model, batch, 1)[rows, cols - 1]  # [n, vocab]: token t is predicted at t-1
    picked = noisy[rows, cols - 1]  # the labels' frame: position t-1 holds the argmax for token t
    best = previous.max(-1)
    # The picked token is a maximiser of the full logits (up to float noise between the two paths)...
    np.testing.assert_allclose(previous[np.arange(len(picked)), picked], best, atol=1e-5)
    # ...and exactly the argmax wherever the runner-up is not within that noise.
    runner_up = np.sort(previous, -1)[:, -2]
    clear = best - runner_up > 1e-4
    assert clear.sum() >= len(picked) - 1
    np.testing.assert_array_equal(picked[clear], previous.argmax(-1)[clear])
    # Non-vacuous: the argmax differs from y_w's tokens, and it is the noised image's argmax.
    assert (picked != ids[rows, cols]).mean() > 0.5
    assert (_chosen_logits(model, batch, 0)[rows, cols - 1].argmax(-1) != picked).any()


def test_povid_noisy_term_scores_the_noised_argmax_inside_the_chosen_clean_forward():
    """lp_n = sum_t log pi(yhat_t | x, v, y_w,<t) with yhat_t = argmax pi(. | x, v_noisy, y_w,<t)
    (POVID's code and paper), from plain numpy over the two forwards' logits; the context this
    replaced (yhat written into the row and re-run, log pi(yhat_t | x, v, yhat_<t)) gives
    another value, so the test tells them apart."""
    config = preset("tiny")
    model = _tiny_model(config, std=0.1)
    batch = _povid_batch(config)  # two stacked rows: the noisy term has no row of its own
    layout = RowLayout.for_objective("povid", noisy_scoring="argmax", vocab_chunk=96)
    run = nnx.jit(lambda m, b: row_logps(m, image_states(m, b["pixel_values"]), b, layout))
    scores = {k: np.asarray(v) for k, v in run(model, batch).items()}

    response = np.asarray(batch["loss_mask"][:, 0]).astype(bool)
    ids = np.asarray(batch["input_ids"][:, 0])
    noised, clean = _chosen_logits(model, batch, 1), _chosen_logits(model, batch, 0)
    yhat = np.zeros_like(ids)
    expected, chosen = np.zeros(len(ids)), np.zeros(len(ids))
    for i, t in zip(*np.nonzero(response)):
        yhat[i, t] = noised[i, t - 1].argmax()
        expected[i] += _log_softmax(clean[i, t - 1])[yhat[i, t]]
        chosen[i] += _log_softmax(clean[i, t - 1])[ids[i, t]]
    np.testing.assert_allclose(scores["rejected_noisy"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores["chosen"], chosen, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(scores["length_rejected_noisy"], response.sum(-1))

    rewritten = np.where(response, yhat, ids)  # the old context: yhat's own prefix
    old = _chosen_logits(model, batch, 0, ids=rewritten)
    old_value = np.array([sum(_log_softmax(old[i, t - 1])[yhat[i, t]] for t in np.nonzero(response[i])[0])
                          for i in range(len(ids))])
    assert np.abs(old_value - expected).max() > 1e-2, (old_value, expected)


@pytest.mark.parametrize("vocab,chunk", [(50, 16), (50, 50), (37, 1)])
def test_log_sum_sq_is_wpos_log_sum_of_squared_probabilities(vocab, chunk):
    hidden, kernel, labels = _problem(vocab, seed=2)
    scores = token_scores(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(labels), chunk, sum_sq=True)
    logits = hidden.astype(np.float64) @ kernel.astype(np.float64)
    probs = np.exp(_log_softmax(logits))
    np.testing.assert_allclose(np.asarray(scores.log_sum_sq), np.log((probs ** 2).sum(-1)), atol=1e-5, rtol=1e-5)
    assert token_scores(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(labels), chunk).log_sum_sq is None


def test_wpo_rows_are_the_mean_aligned_log_prob_of_each_response():
    """row_logps' wpo_<kind> = mean over the response of log p(y_t) - log sum_v p(v)^2 (TRL's
    aligned log-probs), from the full logits in numpy; the reference's layout computes none."""
    config = preset("tiny")
    model = _tiny_model(config, std=0.1)
    batch = _povid_batch(config)
    layout = RowLayout.for_objective("dpo", vocab_chunk=96, wpo=True)
    assert not layout.for_reference().wpo
    scores = nnx.jit(lambda m, b: row_logps(m, image_states(m, b["pixel_values"]), b, layout))(model, batch)
    response = np.asarray(batch["loss_mask"]).astype(bool)
    for row, kind in enumerate(layout.kinds):
        ids = np.asarray(batch["input_ids"][:, row])
        logits = np.asarray(_full_logits(model, ids, batch["pixel_values"][:, 0], batch["attention_mask"][:, row]),
                            np.float64)
        expected = np.zeros(len(ids))
        for i, t in zip(*np.nonzero(response[:, row])):
            logp = _log_softmax(logits[i, t - 1])
            expected[i] += logp[ids[i, t]] - np.log(np.exp(2 * logp).sum())
        expected /= response[:, row].sum(-1)
        np.testing.assert_allclose(np.asarray(scores[f"wpo_{kind}"]), expected, rtol=1e-5, atol=1e-5)
