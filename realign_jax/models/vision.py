"""CLIP ViT vision tower, computing only as many layers as the selected features need.

LLaVA reads hidden state -2 (the input of the last layer), so the last layer never runs
here, unlike Hugging Face, which runs all layers and discards the last output.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models.config import VisionConfig
from realign_jax.models.layers import LayerNorm, Linear, activation, attention, create_stacked, make_param, run_stacked
from realign_jax.models.partitioning import constrain

ACT_AXES = ("batch", "length", "act_embed")


class VisionLayer(nnx.Module):
    """Pre-norm transformer encoder layer (bidirectional attention, biased projections)."""

    def __init__(self, config: VisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        d, h, hd, f = config.hidden_size, config.num_heads, config.head_dim, config.intermediate_size
        common = dict(dtype=dtype, param_dtype=param_dtype)
        self.layer_norm1 = LayerNorm(d, eps=config.layer_norm_eps, **common)
        self.q_proj = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, rngs=rngs, **common)
        self.k_proj = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, rngs=rngs, **common)
        self.v_proj = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, rngs=rngs, **common)
        self.out_proj = Linear((h, hd), d, axes=("heads", "head_dim", "embed"), use_bias=True, rngs=rngs, **common)
        self.layer_norm2 = LayerNorm(d, eps=config.layer_norm_eps, **common)
        self.fc1 = Linear(d, f, axes=("embed", "mlp"), use_bias=True, rngs=rngs, **common)
        self.fc2 = Linear(f, d, axes=("mlp", "embed"), use_bias=True, rngs=rngs, **common)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.layer_norm1(x)
        x = x + self.out_proj(attention(self.q_proj(h), self.k_proj(h), self.v_proj(h), mask=None))
        x = constrain(x, ACT_AXES)
        x = x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))
        return constrain(x, ACT_AXES)


class VisionTower(nnx.Module):
    """CLIP vision transformer: patch + class + position embeddings, pre-norm, encoder."""

    def __init__(self, config: VisionConfig, *, dtype: Any, param_dtype: Any, scan_layers: bool, remat: str,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.remat = remat
        d, p, c = config.hidden_size, config.patch_size, config.num_channels
        # Patch embedding as a matmul over flattened (channel, row, col) patches: identical to
        # CLIP's stride-p convolution without bias.
        self.patch_embedding = make_param(rngs, (c * p * p, d), ("patch", "embed"), param_dtype)
        self.class_embedding = make_param(rngs, (d,), ("embed",), param_dtype)
        self.position_embedding = make_param(rngs, (config.num_patches + 1, d), ("length", "embed"), param_dtype)
        self.pre_layernorm = LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.layers = create_stacked(
            lambda r: VisionLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=r), config.num_layers, rngs
        )
        # Kept only so exported checkpoints carry every CLIP weight; LLaVA never applies it.
        self.post_layernorm = LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, channels, H, W] (HF layout) -> [batch, 1 + patches, embed] after pre-norm."""
        b, c, height, width = pixel_values.shape
        p = self.config.patch_size
        patches = pixel_values.reshape(b, c, height // p, p, width // p, p)
        patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(b, (height // p) * (width // p), c * p * p)
        x = jnp.einsum("bnk,kd->bnd", patches.astype(self.dtype), self.patch_embedding[...].astype(self.dtype))
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(self.dtype)
        return constrain(self.pre_layernorm(x), ACT_AXES)

    def hidden_states(self, pixel_values: jax.Array, indices: tuple[int, ...]) -> list[jax.Array]:
        """HF's `hidden_states[i]` for each i (0 = embeddings, negative from the end), in order."""
        total = self.config.num_layers + 1
        resolved = [i % total for i in indices]
        x = self.embed(pixel_values)
        done = 0
        by_index: dict[int, jax.Array] = {0: x}
        for target in sorted(set(resolved)):
            if target > done:
                x, _ = run_stacked(
                    self.layers, lambda layer, h, _: (layer(h), None), x,
                    start=done, stop=target, scan=self.scan_layers, remat=self.remat,
                )
                done = target
            by_index[target] = x
        return [by_index[i] for i in resolved]
