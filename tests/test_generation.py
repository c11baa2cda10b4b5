"""Generation behaviour beyond parity: padding, hidden image tokens (BDHS), sampling."""

import jax
import numpy as np
import pytest
from flax import nnx

from realign_jax.models.config import preset
from realign_jax.models.generation import SamplingConfig, generate
from realign_jax.models.llava import LlavaModel

CONFIG = preset("tiny")
N_IMG = CONFIG.num_image_tokens


@pytest.fixture(scope="module")
def model():
    m = LlavaModel(CONFIG, rngs=nnx.Rngs(3))
    # Larger weights than the 0.02 init so outputs depend visibly on every input.
    graphdef, state = nnx.split(m)
    state = jax.tree.map(lambda x: x * 6.0, state)
    return nnx.merge(graphdef, state)


def _prompt(batch, seed, text_len=6):
    rng = np.random.default_rng(seed)
    text = rng.integers(3, 200, size=(batch, text_len))
    ids = np.concatenate([np.ones((batch, 1), int), np.full((batch, N_IMG), CONFIG.image_token_id), text], 1)
    pixels = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return ids.astype(np.int32), pixels


GREEDY = SamplingConfig(max_new_tokens=10, eos_token_ids=(2,), pad_token_id=0)


def test_left_padded_row_generates_as_alone(model):
    """A short prompt left-padded beside a longer one yields the tokens it yields alone."""
    short_ids, pixels = _prompt(2, seed=0, text_len=4)
    long_ids, _ = _prompt(2, seed=10, text_len=7)
    pad = long_ids.shape[1] - short_ids.shape[1]
    ids = np.stack([np.concatenate([np.zeros(pad, np.int32), short_ids[0]]), long_ids[1]])
    mask = np.stack([np.arange(ids.shape[1]) >= pad, np.ones(ids.shape[1], bool)])
    batch = generate(model, ids, GREEDY, attention_mask=mask, pixel_values=pixels)
    alone_short = generate(model, short_ids[:1], GREEDY, pixel_values=pixels[:1])
    alone_long = generate(model, long_ids[1:], GREEDY, pixel_values=pixels[1:])
    np.testing.assert_array_equal(np.asarray(batch.tokens[0]), np.asarray(alone_short.tokens[0]))
    np.testing.assert_array_equal(np.asarray(batch.tokens[1]), np.asarray(alone_long.tokens[0]))


def test_hiding_every_image_token_makes_output_image_independent(model):
    ids, pixels = _prompt(1, seed=1)
    other = np.random.default_rng(9).normal(size=pixels.shape).astype(np.float32)
    hidden = ids == CONFIG.image_token_id
    seen = [np.asarray(generate(model, ids, GREEDY, pixel_values=p).tokens) for p in (pixels, other)]
    blind = [np.asarray(generate(model, ids, GREEDY, pixel_values=p, hidden=hidden).tokens) for p in (pixels, other)]
    assert not np.array_equal(seen[0], seen[1])  # the image matters when visible...
    np.testing.assert_array_equal(blind[0], blind[1])  # ...and not at all when hidden


def test_hiding_nothing_is_ordinary_generation(model):
    ids, pixels = _prompt(2, seed=2)
    plain = generate(model, ids, GREEDY, pixel_values=pixels)
    masked = generate(model, ids, GREEDY, pixel_values=pixels, hidden=np.zeros(ids.shape, bool))
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(masked.tokens))


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(model):
    ids, pixels = _prompt(2, seed=3)
    hot = SamplingConfig(max_new_tokens=10, temperature=1.5, top_p=0.95, eos_token_ids=(2,))
    a = generate(model, ids, hot, pixel_values=pixels, rng=jax.random.key(1))
    b = generate(model, ids, hot, pixel_values=pixels, rng=jax.random.key(1))
    c = generate(model, ids, hot, pixel_values=pixels, rng=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    nucleus_of_one = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=1e-6, eos_token_ids=(2,))
    sampled = generate(model, ids, nucleus_of_one, pixel_values=pixels, rng=jax.random.key(4))
    greedy = generate(model, ids, GREEDY, pixel_values=pixels)
    np.testing.assert_array_equal(np.asarray(sampled.tokens), np.asarray(greedy.tokens))


def test_stops_at_eos_and_pads_after(model):
    ids, pixels = _prompt(2, seed=4)
    first = np.asarray(generate(model, ids, GREEDY, pixel_values=pixels).tokens)
    eos = int(first[0, 2])  # make the third greedy token of row 0 the end of sequence
    out = generate(model, ids, SamplingConfig(max_new_tokens=10, eos_token_ids=(eos,), pad_token_id=0),
                   pixel_values=pixels)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    stop = int(np.argmax(first[0] == eos)) + 1
    assert lengths[0] == stop
    assert np.all(tokens[0, stop:] == 0)


def test_right_padding_is_refused(model):
    ids, pixels = _prompt(1, seed=5)
    mask = np.ones(ids.shape, bool)
    mask[0, -1] = False
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, GREEDY, attention_mask=mask, pixel_values=pixels)


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0)])
def test_bad_sampling_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})
