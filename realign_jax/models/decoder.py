"""Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention) with a KV cache.

Mistral and Qwen2 text towers share this layout; Qwen2's biased q/k/v projections are
the `qkv_bias` switch. The attention mask is always explicit (`[batch, kv_len]` key
visibility plus causality), so callers can hide any key, image tokens included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models.config import TextConfig
from realign_jax.models.layers import Embed, Linear, RMSNorm, apply_rope, attention, create_stacked, run_stacked
from realign_jax.models.partitioning import constrain

ACT_AXES = ("batch", "length", "act_embed")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys/values of every layer: [layers, batch, max_len, kv_heads, head_dim].

    `visible[b, s]` says whether cached position s may be attended to: False for padding,
    for positions not yet written, and for tokens a caller hides (BDHS image masking).
    """

    keys: jax.Array
    values: jax.Array
    visible: jax.Array

    @classmethod
    def empty(cls, config: TextConfig, batch: int, max_len: int, dtype: Any) -> KVCache:
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.resolved_head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), bool))


class DecoderLayer(nnx.Module):
    def __init__(self, config: TextConfig, *, dtype: Any, param_dtype: Any, attention_impl: str, rngs: nnx.Rngs):
        d, h, kv, hd, f = (config.hidden_size, config.num_heads, config.num_kv_heads, config.resolved_head_dim,
                           config.intermediate_size)
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rope_theta = config.rope_theta
        self.attention_impl = attention_impl
        self.input_layernorm = RMSNorm(d, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=config.qkv_bias, **common)
        self.k_proj = Linear(d, (kv, hd), axes=("embed", "kv_heads", "head_dim"), use_bias=config.qkv_bias, **common)
        self.v_proj = Linear(d, (kv, hd), axes=("embed", "kv_heads", "head_dim"), use_bias=config.qkv_bias, **common)
        self.o_proj = Linear((h, hd), d, axes=("heads", "head_dim", "embed"), use_bias=config.o_bias, **common)
        self.post_attention_layernorm = RMSNorm(d, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=config.mlp_bias, **common)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=config.mlp_bias, **common)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), use_bias=config.mlp_bias, **common)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h), positions, self.rope_theta)
        k = apply_rope(self.k_proj(h), positions, self.rope_theta)
        v = self.v_proj(h)
        if cache is not None:
            k_cache, v_cache = cache
            k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), cache_index, axis=1)
            cache = (k, v)
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.attention_impl)
        x = constrain(x + self.o_proj(out), ACT_AXES)
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(jax.nn.silu(self.gate_proj(h)) * self.up_proj(h))
        return constrain(x, ACT_AXES), cache


class Decoder(nnx.Module):
    """Embeddings, stacked decoder layers, final norm and LM head."""

    def __init__(self, config: TextConfig, *, dtype: Any, param_dtype: Any, scan_layers: bool, remat: str,
                 attention_impl: str, rngs: nnx.Rngs):
        self.config = config
        self.scan_layers = scan_layers
        self.remat = remat
        self.embed_tokens = Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                  rngs=rngs)
        self.layers = create_stacked(
            lambda r: DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                                   rngs=r),
            config.num_layers, rngs,
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.hidden_size, config.vocab_size, axes=("embed", "vocab"), use_bias=False, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )

    def hidden(
        self,
        inputs_embeds: jax.Array,
        positions: jax.Array,
        key_visible: jax.Array,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final normed hidden states [batch, length, embed] (and the updated cache).

        Without a cache, `key_visible` is [batch, length] over the inputs themselves; with a
        cache, the inputs are written at `cache_index` and `cache.visible` decides.
        `segment_ids` [batch, length] (packed rows, data/packing.py) keep attention inside
        each segment; `branch_ids` (shared prefixes) let a token see branch 0, the shared
        prefix, and its own branch only.
        """
        length = inputs_embeds.shape[1]
        if cache is None:
            query_pos = jnp.arange(length)
            key_pos = query_pos
        else:
            key_visible = cache.visible
            query_pos = cache_index + jnp.arange(length)
            key_pos = jnp.arange(key_visible.shape[1])
        causal = key_pos[None, :] <= query_pos[:, None]
        mask = causal[None, :, :] & key_visible[:, None, :]  # [batch, q, kv]
        if segment_ids is not None:
            mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
        if branch_ids is not None:
            mask &= (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
        mask = mask[:, None]  # [batch, 1, q, kv]

        x = constrain(inputs_embeds, ACT_AXES)
        if cache is None:
            def body(layer, h, _):
                return layer(h, positions, mask)[0], None
            x, _ = run_stacked(self.layers, body, x, scan=self.scan_layers, remat=self.remat)
            return self.norm(x), None

        def cached_body(layer, h, kv):
            h, kv = layer(h, positions, mask, kv, cache_index)
            return h, kv
        x, (keys, values) = run_stacked(self.layers, cached_body, x, (cache.keys, cache.values),
                                        scan=self.scan_layers, remat="none")
        return self.norm(x), KVCache(keys, values, cache.visible)

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def output_kernel(self) -> jax.Array:
        """The LM head as an [embed, vocab] matrix in compute dtype, for vocabulary-chunked
        log-probs that never build the full logits."""
        kernel = self.embed_tokens.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]
        return kernel.astype(self.embed_tokens.dtype)
