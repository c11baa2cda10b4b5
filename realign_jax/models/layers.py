"""Building blocks shared by the vision tower and the decoder.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata; `partitioning` turns
those names into shardings. Parameters are stored in `param_dtype` and cast to the
compute `dtype` at use, so bf16 compute can run over fp32 master weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models.partitioning import LogicalAxes

INIT_STD = 0.02


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def make_param(
    rngs: nnx.Rngs | None, shape: Sequence[int], axes: LogicalAxes, dtype: Any, init: str = "normal"
) -> nnx.Param:
    """A parameter with logical axis names; `init` is 'normal' (std 0.02), 'zeros' or 'ones'."""
    shape = tuple(shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, logical_axes=tuple(axes))


class Linear(nnx.Module):
    """y = x . W (+ b), contracting the trailing `in_features` dims of x.

    Multi-dimensional in/out shapes let attention keep `heads` and `head_dim` as separate
    named axes, so tensor parallelism can split heads without reshaping weights.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axes: LogicalAxes,
        use_bias: bool,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.dtype = dtype
        self.kernel = make_param(rngs, self.in_features + self.out_features, axes, param_dtype)
        out_axes = axes[len(self.in_features) :]
        self.bias = make_param(None, self.out_features, out_axes, param_dtype, "zeros") if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_features)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; also serves as a tied output projection."""

    def __init__(self, num_embeddings: int, features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = make_param(rngs, (num_embeddings, features), ("vocab", "embed"), param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then scale (HF's exact order)."""

    def __init__(self, features: int, *, eps: float, dtype: Any, param_dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(None, (features,), ("embed",), param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


class LayerNorm(nnx.Module):
    """Standard LayerNorm with bias, computed in float32 (CLIP)."""

    def __init__(self, features: int, *, eps: float, dtype: Any, param_dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(None, (features,), ("embed",), param_dtype, "ones")
        self.bias = make_param(None, (features,), ("embed",), param_dtype, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in HF's rotate-half layout. x: [batch, length, heads, head_dim]."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: str = "xla"
) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    mask: boolean [batch, 1, q_len, kv_len] (True = may attend) or None.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None if impl == "xla" else impl)


def remat_policy(name: str) -> Callable[..., Any] | None:
    """jax.checkpoint policy for a config name ('full' saves nothing, 'dots' saves matmuls)."""
    return {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def create_stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """Create `num_layers` copies of a layer with parameters stacked on a leading `layers` axis.

    One layout serves both scanned and unrolled execution (`run_stacked`), so checkpoints
    do not depend on the `scan_layers` switch.
    """
    keys = jax.random.split(rngs.params(), num_layers)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key: jax.Array) -> nnx.Module:
        return make_layer(nnx.Rngs(params=key))

    layers = make(keys)
    for _, variable in nnx.iter_graph(layers):
        if isinstance(variable, nnx.Param):
            variable.set_metadata("logical_axes", ("layers",) + tuple(variable.get_metadata()["logical_axes"]))
    return layers


def run_stacked(
    layers: nnx.Module,
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    per_layer: Any = None,
    *,
    start: int = 0,
    stop: int | None = None,
    scan: bool = True,
    remat: str = "none",
) -> tuple[Any, Any]:
    """Apply layers[start:stop] in order: `carry, out = body(layer, carry, per_layer_slice)`.

    `per_layer` is a pytree with a leading layer axis (e.g. the KV cache) sliced alongside the
    parameters; the stacked per-layer outputs are returned with the final carry.
    """
    graphdef, state = nnx.split(layers)
    stop = _num_layers(state) if stop is None else stop
    state = jax.tree.map(lambda a: a[start:stop], state)

    def step(carry: Any, xs: Any) -> tuple[Any, Any]:
        layer_state, extra = xs
        return body(nnx.merge(graphdef, layer_state), carry, extra)

    if remat != "none":
        step = jax.checkpoint(step, policy=remat_policy(remat), prevent_cse=not scan)
    if scan:
        return jax.lax.scan(step, carry, (state, per_layer))
    outputs = []
    for i in range(stop - start):
        carry, out = step(carry, jax.tree.map(lambda a: a[i], (state, per_layer)))
        outputs.append(out)
    return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outputs) if outputs and outputs[0] is not None else None


def _num_layers(state: nnx.State) -> int:
    return jax.tree.leaves(state)[0].shape[0]
