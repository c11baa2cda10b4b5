"""LoRA surgery: a no-op at init, base parameters untouched, adapters off = the base model,
and the merged export reproduces the adapted model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from realign_jax.models.config import preset
from realign_jax.models.layers import Linear
from realign_jax.models.llava import LlavaModel, abstract_model
from realign_jax.train.lora import (
    LoraConfig,
    LoraDropoutKey,
    LoraLinear,
    LoraParam,
    add_lora,
    merged_base_state,
    set_lora_enabled,
)

CONFIG = preset("tiny")
TEXT = CONFIG.text
HEAD_DIM = TEXT.resolved_head_dim
TARGETS = r"decoder\.layers\.(q_proj|o_proj)$|projector\.linear_1$"
ADAPTED = ["decoder.layers.o_proj", "decoder.layers.q_proj", "projector.linear_1"]


def tiny_model(seed: int = 0) -> LlavaModel:
    """The tiny LlavaModel with numpy-random weights: same structure as LlavaModel(CONFIG, rngs=...),
    without compiling an eager random initialiser for every parameter shape (~10 s on CPU)."""
    graphdef, state = nnx.split(abstract_model(CONFIG))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        mean = 1.0 if "'scale'" in jax.tree_util.keystr(path) else 0.0  # norm scales around 1
        return jnp.asarray(mean + 0.02 * rng.normal(size=x.shape), x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="module")
def base_model():
    return tiny_model()


@pytest.fixture
def model(base_model):
    return nnx.clone(base_model)  # independent variables: tests may mutate it


def _inputs():
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.ones((2, 1), int), np.full((2, CONFIG.num_image_tokens), CONFIG.image_token_id),
                          rng.integers(3, 200, size=(2, 6))], axis=1).astype(np.int32)
    return jnp.asarray(ids), jnp.asarray(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))


@nnx.jit
def _forward(model, ids, pixels):
    return model(ids, pixels)


def _logits(model):
    return np.asarray(_forward(model, *_inputs()))


def _flat(state):
    """{dotted path: numpy copy} of a state's arrays."""
    return {".".join(map(str, path)): np.array(v[...]) for path, v in nnx.to_flat_state(state)}


def _modules(model):
    return {".".join(map(str, path)): m for path, m in nnx.iter_modules(model) if isinstance(m, Linear)}


def _randomise_adapters(model, seed=0, b_scale=0.5):
    rng = np.random.default_rng(seed)
    for module in _modules(model).values():
        if isinstance(module, LoraLinear):
            module.lora_a.set_value(jnp.asarray(0.1 * rng.normal(size=module.lora_a.shape), jnp.float32))
            module.lora_b.set_value(jnp.asarray(b_scale * rng.normal(size=module.lora_b.shape), jnp.float32))


def test_add_lora_is_a_noop_that_keeps_base_parameters_and_adapts_only_matches(model):
    before_state = _flat(nnx.state(model))
    before_out = _logits(model)
    adapted = add_lora(model, LoraConfig(rank=4, targets=TARGETS), nnx.Rngs(1))
    assert sorted(adapted) == ADAPTED

    modules = _modules(model)
    assert sorted(p for p, m in modules.items() if isinstance(m, LoraLinear)) == ADAPTED
    assert all(type(m) is Linear for p, m in modules.items() if p not in ADAPTED)
    assert type(modules["vision_tower.layers.q_proj"]) is Linear  # same leaf name, other tower

    # Base parameters keep their paths and values; the only new variables are the adapters.
    after_base = _flat(nnx.state(model, nnx.Not(LoraParam)))
    assert sorted(after_base) == sorted(before_state)
    for path, value in before_state.items():
        np.testing.assert_array_equal(after_base[path], value, err_msg=path)
    assert sorted(_flat(nnx.state(model, LoraParam))) == sorted(f"{p}.lora_{ab}" for p in ADAPTED for ab in "ab")

    layers, d, h, r = TEXT.num_layers, TEXT.hidden_size, TEXT.num_heads, 4
    q, o, lin = modules["decoder.layers.q_proj"], modules["decoder.layers.o_proj"], modules["projector.linear_1"]
    expected = {  # (A shape, A axes, B shape, B axes)
        "q": (q, (layers, d, r), ("layers", "embed", "lora_rank"),
              (layers, r, h, HEAD_DIM), ("layers", "lora_rank", "heads", "head_dim")),
        "o": (o, (layers, h, HEAD_DIM, r), ("layers", "heads", "head_dim", "lora_rank"),
              (layers, r, d), ("layers", "lora_rank", "embed")),
        "linear_1": (lin, (CONFIG.vision.hidden_size, r), ("embed", "lora_rank"),
                     (r, d), ("lora_rank", "mlp")),
    }
    for name, (m, a_shape, a_axes, b_shape, b_axes) in expected.items():
        assert m.lora_a.shape == a_shape and tuple(m.lora_a.get_metadata()["logical_axes"]) == a_axes, name
        assert m.lora_b.shape == b_shape and tuple(m.lora_b.get_metadata()["logical_axes"]) == b_axes, name
        assert float(jnp.abs(m.lora_a[...]).max()) > 0, name
        assert not np.asarray(m.lora_b[...]).any(), name
        assert m.dropout_key is None, name

    np.testing.assert_allclose(_logits(model), before_out, atol=1e-6, rtol=0)


def test_default_targets_are_the_decoder_attention_projections(model):
    adapted = add_lora(model, LoraConfig(rank=4), nnx.Rngs(1))
    assert sorted(adapted) == [f"decoder.layers.{n}" for n in ("k_proj", "o_proj", "q_proj", "v_proj")]


def test_disabling_adapters_restores_the_base_model_exactly(model):
    base = _logits(model)
    add_lora(model, LoraConfig(rank=4, targets=TARGETS), nnx.Rngs(1))
    _randomise_adapters(model)
    adapted = _logits(model)
    assert np.abs(adapted - base).max() > 1e-3
    set_lora_enabled(model, False)
    np.testing.assert_array_equal(_logits(model), base)
    set_lora_enabled(model, True)
    np.testing.assert_allclose(_logits(model), adapted, atol=1e-6, rtol=0)


def test_merged_base_state_in_the_plain_graph_reproduces_the_adapted_logits(model):
    base = _logits(model)
    add_lora(model, LoraConfig(rank=4, alpha=8.0, targets=TARGETS), nnx.Rngs(1))
    _randomise_adapters(model)
    modules = _modules(model)
    weights = {p: (np.array(m.kernel[...], np.float64), np.array(m.lora_a[...], np.float64),
                   np.array(m.lora_b[...], np.float64)) for p, m in modules.items() if p in ADAPTED}
    adapted = _logits(model)
    assert np.abs(adapted - base).max() > 1e-3

    state = merged_base_state(model)
    flat = _flat(state)
    assert not any("lora" in path for path in flat)
    scale = 8.0 / 4
    q_w, q_a, q_b = weights["decoder.layers.q_proj"]  # [L, embed, r] x [L, r, heads, head_dim]
    np.testing.assert_allclose(flat["decoder.layers.q_proj.kernel"],
                               q_w + scale * np.einsum("ldr,lrhk->ldhk", q_a, q_b), atol=1e-6)
    o_w, o_a, o_b = weights["decoder.layers.o_proj"]  # [L, heads, head_dim, r] x [L, r, embed]
    np.testing.assert_allclose(flat["decoder.layers.o_proj.kernel"],
                               o_w + scale * np.einsum("lhkr,lrd->lhkd", o_a, o_b), atol=1e-6)
    p_w, p_a, p_b = weights["projector.linear_1"]
    np.testing.assert_allclose(flat["projector.linear_1.kernel"], p_w + scale * p_a @ p_b, atol=1e-6)

    plain = nnx.merge(nnx.graphdef(abstract_model(CONFIG)), state)
    assert not any(isinstance(m, LoraLinear) for _, m in nnx.iter_modules(plain))
    np.testing.assert_allclose(_logits(plain), adapted, atol=1e-5, rtol=1e-5)


def test_merged_base_state_leaves_the_adapted_model_unchanged(model):
    add_lora(model, LoraConfig(rank=4, targets=TARGETS), nnx.Rngs(1))
    _randomise_adapters(model)
    kernel = np.array(model.decoder.layers.q_proj.kernel[...])
    first = merged_base_state(model)
    np.testing.assert_array_equal(np.asarray(model.decoder.layers.q_proj.kernel[...]), kernel)
    second = merged_base_state(model)  # a second export merges the adapters once, not twice
    np.testing.assert_array_equal(np.asarray(second["decoder"]["layers"]["q_proj"]["kernel"][...]),
                                  np.asarray(first["decoder"]["layers"]["q_proj"]["kernel"][...]))


def _linear(in_features, out_features, axes, use_bias, seed=0):
    """A Linear with numpy-random kernel (and bias)."""
    layer = nnx.eval_shape(lambda: Linear(in_features, out_features, axes=axes, use_bias=use_bias,
                                          dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    layer.kernel.set_value(jnp.asarray(rng.normal(size=layer.kernel.shape), jnp.float32))
    if use_bias:
        layer.bias.set_value(jnp.asarray(rng.normal(size=layer.bias.shape), jnp.float32))
    return layer


@pytest.mark.parametrize("in_features,out_features,axes", [
    (32, (2, 3), ("embed", "heads", "head_dim")),
    ((2, 3), 4, ("heads", "head_dim", "embed")),
])
def test_lora_linear_is_base_plus_scaled_low_rank_update(in_features, out_features, axes):
    base = _linear(in_features, out_features, axes, use_bias=True)
    layer = LoraLinear(base, LoraConfig(rank=4, alpha=7.0), None, nnx.Rngs(1))
    assert layer.kernel is base.kernel and layer.bias is base.bias
    rng = np.random.default_rng(1)
    layer.lora_b.set_value(jnp.asarray(rng.normal(size=layer.lora_b.shape), jnp.float32))
    x = rng.normal(size=(4, 2) + base.in_features).astype(np.float32)

    n_in, n_out = int(np.prod(base.in_features)), int(np.prod(base.out_features))
    w = np.asarray(base.kernel[...], np.float64).reshape(n_in, n_out)
    a = np.asarray(layer.lora_a[...], np.float64).reshape(n_in, 4)
    b = np.asarray(layer.lora_b[...], np.float64).reshape(4, n_out)
    x2 = x.reshape(8, n_in).astype(np.float64)
    plain = x2 @ w + np.asarray(base.bias[...], np.float64).reshape(n_out)
    want = plain + (7.0 / 4) * x2 @ a @ b
    got = np.asarray(layer(jnp.asarray(x))).reshape(8, n_out)
    assert np.abs(want - plain).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.merged_kernel()).reshape(n_in, n_out),
                               w + (7.0 / 4) * a @ b, atol=1e-6)
    layer.enabled = False
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))).reshape(8, n_out), plain, atol=1e-5, rtol=1e-5)


def test_targets_matching_nothing_are_rejected(model):
    with pytest.raises(ValueError, match="matches no Linear"):
        add_lora(model, LoraConfig(rank=4, targets=r"decoder\.layers\.no_such_proj$"), nnx.Rngs(1))


def test_targets_matching_the_lm_head_are_rejected(model):
    if CONFIG.text.tie_word_embeddings:
        pytest.skip("the tiny preset ties embeddings: there is no lm_head Linear to match")
    assert isinstance(model.decoder.lm_head, Linear)
    with pytest.raises(ValueError, match="LM head"):
        add_lora(model, LoraConfig(rank=4, targets=r"(q_proj|lm_head)$"), nnx.Rngs(1))
    assert not any(isinstance(m, LoraLinear) for _, m in nnx.iter_modules(model))  # nothing half-done


def test_dropout_masks_the_adapter_input_with_the_key():
    n = 8
    base = _linear(n, n, ("embed", "mlp"), use_bias=False)
    base.kernel.set_value(jnp.zeros((n, n)))
    layer = LoraLinear(base, LoraConfig(rank=n, alpha=float(n), dropout=0.5), None, nnx.Rngs(1))
    assert isinstance(layer.dropout_key, LoraDropoutKey) and not isinstance(layer.dropout_key, nnx.Param)
    assert layer.dropout_key.shape == (2,) and layer.dropout_key.dtype == jnp.uint32
    # Identity adapters with scale 1: the output is exactly dropout(x).
    layer.lora_a.set_value(jnp.eye(n))
    layer.lora_b.set_value(jnp.eye(n))
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, size=(64, n)).astype(np.float32))

    def run(key):
        layer.dropout_key.set_value(jnp.asarray(key, jnp.uint32))
        return np.asarray(layer(x))

    y1, y1_again, y2 = run([0, 1]), run([0, 1]), run([0, 7])
    np.testing.assert_array_equal(y1, y1_again)
    assert (y1 != y2).any()
    for y in (y1, y2):
        kept = y != 0
        np.testing.assert_allclose(y[kept], 2 * np.asarray(x)[kept], rtol=1e-6)  # inverted dropout
        assert 0.35 < 1 - kept.mean() < 0.65
    layer.enabled = False  # the reference (adapters off) is the base layer, whatever the key
    np.testing.assert_array_equal(np.asarray(layer(x)), 0)
    assert LoraLinear(base, LoraConfig(rank=n), None, nnx.Rngs(1)).dropout_key is None


def test_dropout_keys_of_stacked_layers_drive_the_model(model):
    add_lora(model, LoraConfig(rank=4, dropout=0.5, targets=r"decoder\.layers\.q_proj$"), nnx.Rngs(1))
    _randomise_adapters(model)
    q = model.decoder.layers.q_proj
    assert q.dropout_key.shape == (TEXT.num_layers, 2)
    keys = nnx.state(model, LoraDropoutKey)
    assert list(_flat(keys)) == ["decoder.layers.q_proj.dropout_key"]

    def run(seed):
        bits = np.random.default_rng(seed).integers(0, 2**32, size=(TEXT.num_layers, 2), dtype=np.uint32)
        q.dropout_key.set_value(jnp.asarray(bits))
        return _logits(model)

    out1, out1_again, out2 = run(0), run(0), run(1)
    np.testing.assert_array_equal(out1, out1_again)
    assert np.abs(out1 - out2).max() > 1e-4
