"""Run-time switches change how the model computes, never what: scan, remat, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel

CONFIG = preset("tiny")


def _inputs():
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.ones((2, 1), int), np.full((2, CONFIG.num_image_tokens), CONFIG.image_token_id),
                          rng.integers(3, 200, size=(2, 6))], axis=1).astype(np.int32)
    return ids, rng.normal(size=(2, 3, 32, 32)).astype(np.float32)


def _grads(config):
    ids, pixels = _inputs()
    model = LlavaModel(config, rngs=nnx.Rngs(0))

    def loss(m):
        return jnp.mean(jnp.square(m(ids, pixels)))

    return nnx.grad(loss)(model)


def test_scan_and_unrolled_layers_agree():
    ids, pixels = _inputs()
    scanned = LlavaModel(CONFIG, rngs=nnx.Rngs(0))
    unrolled = LlavaModel(CONFIG.replace(scan_layers=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(scanned(ids, pixels)), np.asarray(unrolled(ids, pixels)), atol=1e-5)


@pytest.mark.parametrize("remat,scan", [("full", True), ("dots", True), ("full", False)])
def test_remat_gives_the_same_gradients(remat, scan):
    reference = jax.tree.leaves(_grads(CONFIG))
    other = jax.tree.leaves(_grads(CONFIG.replace(remat=remat, scan_layers=scan)))
    assert len(reference) == len(other)
    for a, b in zip(reference, other):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_stays_finite_and_close():
    ids, pixels = _inputs()
    full = LlavaModel(CONFIG, rngs=nnx.Rngs(0))(ids, pixels)
    half = LlavaModel(CONFIG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))(ids, pixels)
    assert half.dtype == jnp.bfloat16 and bool(jnp.isfinite(half).all())
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.05)


@pytest.mark.parametrize("change,key", [
    (dict(remat="some"), "remat"), (dict(dtype="float8"), "dtype"),
    (dict(vision_feature_layer=7), "vision_feature_layer"), (dict(attention_impl="flash"), "attention_impl"),
])
def test_bad_model_config_names_the_field(change, key):
    with pytest.raises(ValueError, match=key):
        CONFIG.replace(**change)
