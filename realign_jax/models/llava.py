"""LLaVA: CLIP vision tower -> 2-layer GELU projector -> Llama-style decoder.

Image features replace the image placeholder tokens of `input_ids` in order, as
Hugging Face's `LlavaForConditionalGeneration` does; here row b of the batch takes the
features of image b, which keeps the scatter local to a row (and so to its data shard).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models.config import LlavaConfig
from realign_jax.models.decoder import Decoder, KVCache
from realign_jax.models.layers import Linear, activation
from realign_jax.models.vision import VisionTower


class Projector(nnx.Module):
    """linear_1 -> GELU -> linear_2, mapping (concatenated) vision features to text width."""

    def __init__(self, config: LlavaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        in_dim = config.vision.hidden_size * len(config.feature_layers)
        out_dim = config.text.hidden_size
        common = dict(use_bias=config.projector_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = Linear(in_dim, out_dim, axes=("embed", "mlp"), **common)
        self.linear_2 = Linear(out_dim, out_dim, axes=("mlp", "embed"), **common)
        self.act = activation(config.projector_hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(x)))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids that skip padding (left padding starts each row at 0 on its first token)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class LlavaModel(nnx.Module):
    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        runtime = dict(dtype=dtype, param_dtype=param_dtype, scan_layers=config.scan_layers, remat=config.remat)
        self.vision_tower = VisionTower(config.vision, rngs=rngs, **runtime)
        self.projector = Projector(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.decoder = Decoder(config.text, attention_impl=config.attention_impl, rngs=rngs, **runtime)

    def vision_features(self, pixel_values: jax.Array) -> jax.Array:
        """[images, channels, H, W] -> selected tower states [images, num_image_tokens, vision_embed * n].

        Split from `encode_images` so a trainer with a frozen tower can run it once per step
        and share it between the policy's and the reference's projectors.
        """
        states = self.vision_tower.hidden_states(pixel_values, self.config.feature_layers)
        if self.config.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]
        return jnp.concatenate(states, axis=-1)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """[images, channels, H, W] -> projected features [images, num_image_tokens, text_embed]."""
        return self.projector(self.vision_features(pixel_values))

    def embed(self, input_ids: jax.Array, image_features: jax.Array | None = None) -> jax.Array:
        """Token embeddings with row b's image placeholders replaced by image_features[b], in order."""
        x = self.decoder.embed_tokens(input_ids)
        if image_features is None:
            return x
        is_image = input_ids == self.config.image_token_id
        slot = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_features.shape[1] - 1)
        gathered = jnp.take_along_axis(image_features, slot[..., None], axis=1).astype(x.dtype)
        return jnp.where(is_image[..., None], gathered, x)

    def hidden_states(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        image_features: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Final normed decoder states [batch, length, embed]; losses take log-probs from these
        chunk by chunk instead of materialising full logits. `segment_ids`, `branch_ids`:
        packed rows and shared prefixes (data/packing.py)."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        embeds = self.embed(input_ids, image_features)
        hidden, _ = self.decoder.hidden(embeds, position_ids, attention_mask.astype(bool),
                                        segment_ids=segment_ids, branch_ids=branch_ids)
        return hidden

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        image_features: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, length, vocab], as `LlavaForConditionalGeneration(...).logits`."""
        hidden = self.hidden_states(input_ids, pixel_values, attention_mask, position_ids, image_features)
        return self.decoder.logits(hidden)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache.empty(self.config.text, batch, max_len, jnp.dtype(self.config.dtype))


def abstract_model(config: LlavaConfig) -> LlavaModel:
    """The model's structure with ShapeDtypeStructs instead of arrays: nothing is allocated."""
    return nnx.eval_shape(lambda: LlavaModel(config, rngs=nnx.Rngs(0)))
