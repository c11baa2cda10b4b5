"""LoRA adapters put into a built model by module surgery, and merged back out for export.

`LoraLinear` subclasses the model's `Linear` and keeps its `kernel`/`bias` under the same
names, so the base parameters keep their paths (and their checkpoint keys); the adapters
are a distinct variable type (`LoraParam`) that filters can split out. The reference model
of a LoRA run is the same parameters with `enabled = False`: no second copy of the base.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models.layers import INIT_STD, Linear
from realign_jax.settings.sections import LoraConfig


class LoraParam(nnx.Param):
    """A trainable adapter matrix (A or B)."""


class LoraDropoutKey(nnx.Variable):
    """Per-module PRNG key for LoRA dropout, refreshed by the step; never trained or saved."""


class LoraLinear(Linear):
    """y = x W + b + (alpha / r) * dropout(x) A B, with B initialised to zero."""

    def __init__(self, base: Linear, config: LoraConfig, layers: int | None, rngs: nnx.Rngs):
        self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
        self.kernel, self.bias = base.kernel, base.bias
        axes = tuple(base.kernel.get_metadata()["logical_axes"])
        lead = (layers,) if layers is not None else ()
        lead_axes = axes[:1] if layers is not None else ()
        n_in = len(self.in_features)
        in_axes, out_axes = axes[len(lead):len(lead) + n_in], axes[len(lead) + n_in:]
        param_dtype = base.kernel.dtype
        a_shape = lead + self.in_features + (config.rank,)
        self.lora_a = LoraParam(INIT_STD * jax.random.normal(rngs.params(), a_shape, param_dtype),
                                logical_axes=lead_axes + in_axes + ("lora_rank",))
        self.lora_b = LoraParam(jnp.zeros(lead + (config.rank,) + self.out_features, param_dtype),
                                logical_axes=lead_axes + ("lora_rank",) + out_axes)
        self.scale = config.alpha / config.rank
        self.dropout = config.dropout
        self.dropout_key = LoraDropoutKey(jnp.zeros(lead + (2,), jnp.uint32), logical_axes=lead_axes + (None,)) \
            if config.dropout else None
        self.enabled = True

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if not self.enabled:
            return y
        if self.dropout_key is not None:
            keep = jax.random.bernoulli(self.dropout_key[...], 1 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1 - self.dropout), 0).astype(x.dtype)
        n_in = len(self.in_features)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        h = jax.lax.dot_general(x.astype(self.dtype), self.lora_a[...].astype(self.dtype), (contract, ((), ())))
        delta = jnp.tensordot(h, self.lora_b[...].astype(self.dtype), axes=1)
        return y + (self.scale * delta).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """W + (alpha / r) A B in the kernel's layout (with the leading `layers` axis if stacked)."""
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        stacked = a.ndim == len(self.in_features) + 2
        if stacked:
            delta = jax.vmap(lambda a_, b_: jnp.tensordot(a_, b_, axes=1))(a, b)
        else:
            delta = jnp.tensordot(a, b, axes=1)
        return (self.kernel[...].astype(jnp.float32) + self.scale * delta).astype(self.kernel.dtype)


def _linear_modules(model: nnx.Module, pattern: str) -> Iterator[tuple[nnx.Module, str, Linear, str]]:
    """(parent, attribute, module, dotted path) for each plain Linear whose path matches."""
    regex = re.compile(pattern)
    for path, module in list(nnx.iter_modules(model)):
        dotted = ".".join(str(p) for p in path)
        if type(module) is Linear and regex.search(dotted):
            parent = model
            for part in path[:-1]:
                parent = getattr(parent, part)
            yield parent, path[-1], module, dotted


def add_lora(model: nnx.Module, config: LoraConfig, rngs: nnx.Rngs) -> list[str]:
    """Replace every matching Linear by a LoraLinear in place; returns the adapted paths."""
    if config.rank < 1:
        raise ValueError(f"lora.rank={config.rank}: add_lora needs a positive rank")
    matches = list(_linear_modules(model, config.targets))
    if any(dotted.endswith("lm_head") for *_, dotted in matches):
        raise ValueError("lora.targets must not match the LM head (log-probs read its kernel directly)")
    adapted = []
    for parent, name, module, dotted in matches:
        axes = module.kernel.get_metadata()["logical_axes"]
        layers = module.kernel.shape[0] if axes[0] == "layers" else None
        setattr(parent, name, LoraLinear(module, config, layers, rngs))
        adapted.append(dotted)
    if not adapted:
        raise ValueError(f"lora.targets={config.targets!r} matches no Linear module of the model")
    return adapted


def lora_modules(model: nnx.Module) -> Iterator[LoraLinear]:
    for _, module in nnx.iter_modules(model):
        if isinstance(module, LoraLinear):
            yield module


def set_lora_enabled(model: nnx.Module, enabled: bool) -> None:
    for module in lora_modules(model):
        module.enabled = enabled


def merged_base_state(model: nnx.Module) -> nnx.State:
    """The base parameters with every adapter folded into its kernel.

    Merged into the graph of the model *without* adapters (`nnx.merge(plain_graphdef, ...)`),
    it is a plain LlavaModel that `save_pretrained` exports.
    """
    # Fresh Variable objects (same arrays): setting merged kernels must not touch `model`.
    state = jax.tree.map(lambda x: x, nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoraParam))))
    for path, module in nnx.iter_modules(model):
        if isinstance(module, LoraLinear):
            node = state
            for part in path:
                node = node[part]
            node["kernel"].set_value(module.merged_kernel())
    return state
