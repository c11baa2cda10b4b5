"""Random-token preference examples in the trainer's batch layout, through a real Grain pipeline.

A smoke-test source: it needs no files, fits any tiny model, and exercises everything the
trainer relies on (sharded batches, checkpointable iterator state). Each example is
deterministic in (seed, index): [BOS, image tokens, prompt] followed by a response, right
padded. Chosen and rejected responses are different random strings, so a model can learn to
prefer one over the other and the loss must fall.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from realign_jax.data.loader import per_process_batch

BOS = 1
FIRST_TOKEN = 3  # 0 pad, 1 bos, 2 eos


@dataclasses.dataclass(frozen=True)
class RandomPairsRecipe:
    """What the random source makes: row kinds and shapes of each example, how many, from which seed."""

    kinds: tuple[str, ...]  # rows per example, e.g. ("chosen", "rejected", "chosen_alt_image")
    num_images: int
    seq_len: int
    vocab_size: int
    image_token_id: int
    num_image_tokens: int
    image_size: int
    prompt_len: int = 4
    num_examples: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        shortest = 1 + self.num_image_tokens + self.prompt_len + 2
        if self.seq_len < shortest:
            raise ValueError(f"data.seq_len={self.seq_len} is shorter than BOS + {self.num_image_tokens} image "
                             f"tokens + prompt + a 2-token answer ({shortest})")


def _text_tokens(rng: np.random.Generator, n: int, recipe: RandomPairsRecipe) -> np.ndarray:
    tokens = rng.integers(FIRST_TOKEN, recipe.vocab_size - 1, n)
    return np.where(tokens >= recipe.image_token_id, tokens + 1, tokens) % recipe.vocab_size


def make_example(index: int, recipe: RandomPairsRecipe) -> dict[str, np.ndarray]:
    """One example: K rows of ids/masks plus its images; "chosen_alt_image" repeats y_w."""
    rng = np.random.default_rng((recipe.seed, index))
    prompt = np.concatenate([[BOS], np.full(recipe.num_image_tokens, recipe.image_token_id),
                             _text_tokens(rng, recipe.prompt_len, recipe)])
    room = recipe.seq_len - len(prompt)
    responses = {"chosen": _text_tokens(rng, rng.integers(2, room + 1), recipe),
                 "rejected": _text_tokens(rng, rng.integers(2, room + 1), recipe),
                 "rejected_noisy": _text_tokens(rng, rng.integers(2, room + 1), recipe)}
    responses["chosen_alt_image"] = responses["chosen"]
    sampled = np.random.default_rng((recipe.seed, index, 1))  # its own stream: the other rows stay as they were
    responses["rejected_sampled"] = _text_tokens(sampled, sampled.integers(2, room + 1), recipe)
    k = len(recipe.kinds)
    ids = np.zeros((k, recipe.seq_len), np.int32)
    attention = np.zeros((k, recipe.seq_len), np.int32)
    loss = np.zeros((k, recipe.seq_len), np.int32)
    for row, kind in enumerate(recipe.kinds):
        tokens = np.concatenate([prompt, responses[kind]])
        ids[row, : len(tokens)] = tokens
        attention[row, : len(tokens)] = 1
        loss[row, len(prompt) : len(tokens)] = 1
    pixels = rng.normal(size=(recipe.num_images, 3, recipe.image_size, recipe.image_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss, "pixel_values": pixels}


def dataset(recipe: RandomPairsRecipe, batch_size: int, *, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
    """Shuffled, repeating batches of this process's share of the examples."""
    local_batch = per_process_batch(batch_size, shard_count)
    examples = grain.MapDataset.range(recipe.num_examples).shuffle(seed=recipe.seed)
    examples = examples[shard_index::shard_count].repeat()
    return examples.map(lambda i: make_example(int(i), recipe)).batch(local_batch, drop_remainder=True) \
        .to_iter_dataset()
