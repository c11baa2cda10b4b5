"""Batched, jitted generation with a KV cache: greedy or temperature / top-p sampling.

Prompts are left-padded so every row's next token is written at the same cache slot.
`hidden` marks prompt tokens no position may attend to; BDHS hides image tokens with it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from realign_jax.models.llava import LlavaModel, positions_from_mask


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """`temperature == 0` is greedy decoding; otherwise sample from the top-p nucleus."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerationOutput:
    """tokens: [batch, max_new_tokens], `pad_token_id` after EOS; lengths count tokens up to and
    including EOS."""

    tokens: jax.Array
    lengths: jax.Array


def generate(
    model: LlavaModel,
    input_ids: jax.Array | np.ndarray,
    sampling: SamplingConfig,
    *,
    attention_mask: jax.Array | np.ndarray | None = None,
    pixel_values: jax.Array | np.ndarray | None = None,
    hidden: jax.Array | np.ndarray | None = None,
    rng: jax.Array | None = None,
) -> GenerationOutput:
    """Continue each left-padded prompt row of `input_ids` until EOS or `max_new_tokens`."""
    input_ids = jnp.asarray(input_ids)
    attention_mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    if not bool(jnp.all(attention_mask[:, -1])):
        raise ValueError("generate: prompts must be left-padded (every row's last position must be a real token)")
    hidden = jnp.zeros(input_ids.shape, bool) if hidden is None else jnp.asarray(hidden, bool)
    if sampling.temperature > 0 and rng is None:
        raise ValueError("generate: sampling with temperature > 0 needs an rng key")
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef, state, input_ids, attention_mask, None if pixel_values is None else jnp.asarray(pixel_values),
        hidden, rng, sampling,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def _generate(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array,
    pixel_values: jax.Array | None, hidden: jax.Array, rng: jax.Array, sampling: SamplingConfig,
) -> GenerationOutput:
    model = nnx.merge(graphdef, state)
    batch, prompt_len = input_ids.shape
    steps = sampling.max_new_tokens
    features = model.encode_images(pixel_values) if pixel_values is not None else None
    positions = positions_from_mask(attention_mask)
    cache = model.new_cache(batch, prompt_len + steps)
    cache.visible = cache.visible.at[:, :prompt_len].set(attention_mask & ~hidden)
    states, cache = model.decoder.hidden(model.embed(input_ids, features), positions, None, cache, 0)
    logits = model.decoder.logits(states[:, -1])
    eos = jnp.asarray(sampling.eos_token_ids)

    def cond(carry: tuple) -> jax.Array:
        step, _, done, *_ = carry
        return (step < steps) & ~jnp.all(done)

    def body(carry: tuple) -> tuple:
        step, tokens, done, logits, cache, position, rng = carry
        rng, key = jax.random.split(rng)
        token = _choose(logits, key, sampling)
        token = jnp.where(done, sampling.pad_token_id, token)
        tokens = tokens.at[:, step].set(token)
        done = done | jnp.isin(token, eos)
        slot = prompt_len + step
        cache.visible = cache.visible.at[:, slot].set(True)
        states, cache = model.decoder.hidden(
            model.decoder.embed_tokens(token[:, None]), position[:, None], None, cache, slot
        )
        return step + 1, tokens, done, model.decoder.logits(states[:, 0]), cache, position + 1, rng

    tokens = jnp.full((batch, steps), sampling.pad_token_id, input_ids.dtype)
    carry = (jnp.int32(0), tokens, jnp.zeros(batch, bool), logits, cache, positions[:, -1] + 1, rng)
    _, tokens, *_ = jax.lax.while_loop(cond, body, carry)
    is_eos = jnp.isin(tokens, eos)
    first_eos = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, steps)
    return GenerationOutput(tokens, first_eos)


def _choose(logits: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Greedy argmax, or a sample from the smallest set of tokens whose mass reaches top_p."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / sampling.temperature
    if sampling.top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p  # always keeps the top token
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def decode(tokens: jax.Array | np.ndarray, lengths: jax.Array | np.ndarray, tokenizer: object,
           skip_special_tokens: bool = True) -> list[str]:
    """Text of each generated row, cut at its length (EOS included then skipped as special)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    rows: Sequence[list[int]] = [list(map(int, row[:n])) for row, n in zip(tokens, lengths)]
    return [tokenizer.decode(row, skip_special_tokens=skip_special_tokens) for row in rows]
