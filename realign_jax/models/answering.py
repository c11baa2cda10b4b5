"""Answer (image, question) pairs with a LLaVA model: the generation runner every benchmark,
every pair builder and online BDHS use.

Prompts are left-padded to a multiple of `PAD_MULTIPLE` and batches are filled up to
`batch_size`, so a whole benchmark compiles a handful of generation programs instead of one
per batch.

The pair builders also continue an answer the assistant has begun (`Prompt.prefix`: Re-Align
fills a masked answer left to right, BDHS completes cut sentences), sample instead of decoding
greedily, and hide a random share of the image tokens from the language model (BDHS's rho_th).

Text goes in and out through a `PromptCodec` (data/chat.py's `ChatCodec`: the checkpoint's
tokenizer, chat template and image preprocessing), so this module sees token ids and pixels
only (docs/design.md, "Rooms and who may import whom").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import numpy as np
from tqdm import tqdm

from realign_jax.models import hf
from realign_jax.models.generation import SamplingConfig, generate
from realign_jax.models.llava import LlavaModel

PAD_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Prompt:
    """An image, a question and the assistant's answer so far (empty: answer from the start)."""

    image: str
    question: str
    prefix: str = ""


class PromptCodec(Protocol):
    """Prompts to token ids and pixels, generated ids to text (data/chat.py's `ChatCodec`)."""

    pad_id: int
    eos_id: int

    def prompt_ids(self, question: str, num_image_tokens: int, prefix: str = "") -> list[int]: ...

    def pixels(self, image: str) -> np.ndarray: ...

    def answer_text(self, generated: Sequence[int]) -> str: ...

    def continuation(self, prompt: Sequence[int], generated: Sequence[int]) -> str: ...


class Answerer:
    """A model and its checkpoint's `PromptCodec`, ready to answer in batches."""

    def __init__(self, model: LlavaModel, codec: PromptCodec, *, batch_size: int = 16, path: str = ""):
        self.model, self.codec = model, codec
        self.path, self.batch_size = path, batch_size
        self.pad_id = codec.pad_id
        # POPE asks several questions per image and Re-Align tries the same neighbours for many
        # records: preprocess each image once (per Answerer, so the cache goes away with it).
        self._pixels = functools.lru_cache(maxsize=4096)(codec.pixels)

    @classmethod
    def load(cls, path: str, codec: Callable[[str, int], PromptCodec], *, dtype: str = "float32",
             param_dtype: str = "float32", batch_size: int = 16) -> Answerer:
        """A Hugging Face LLaVA folder; `codec(path, image_size)` reads its tokenizer and image
        preprocessing (pass `data.chat.ChatCodec.load`)."""
        model = hf.load_pretrained(path, dtype=dtype, param_dtype=param_dtype)
        return cls(model, codec(path, model.config.vision.image_size), batch_size=batch_size, path=path)

    def answer(self, items: Sequence[tuple[str, str]], *, max_new_tokens: int, desc: str = "answering") -> list[str]:
        """Greedy answers to (image path, question) pairs, in order."""
        return self.complete([Prompt(image, question) for image, question in items],
                             max_new_tokens=max_new_tokens, desc=desc)

    def complete(self, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, hide_image_fraction: float = 0.0, seed: int = 0,
                 desc: str = "answering", progress: bool = True) -> list[str]:
        """What the model writes after each prompt, in order: stripped for a prompt without a
        prefix; for one with a prefix, the text that follows it exactly (`prefix + text` is the
        answer, spacing included).

        `hide_image_fraction` (BDHS's rho_th): each image token is hidden from the language
        model's attention when a uniform draw falls below it, so 1.0 hides the image entirely and
        0.0 is ordinary generation. Draws and samples are seeded by (seed, batch index).
        """
        if not 0.0 <= hide_image_fraction <= 1.0:
            raise ValueError(f"hide_image_fraction={hide_image_fraction} must be in [0, 1]")
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  eos_token_ids=(self.codec.eos_id,), pad_token_id=self.pad_id)
        num_image_tokens = self.model.config.num_image_tokens
        image_token_id = self.model.config.image_token_id
        texts: list[str] = []
        with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
            for batch_index, start in enumerate(range(0, len(prompts), self.batch_size)):
                chunk = list(prompts[start : start + self.batch_size])
                filled = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one batch shape throughout
                rows = [self.codec.prompt_ids(p.question, num_image_tokens, p.prefix) for p in filled]
                width = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
                ids = np.full((len(filled), width), self.pad_id, np.int32)
                mask = np.zeros((len(filled), width), bool)
                for row, tokens in enumerate(rows):
                    ids[row, width - len(tokens):] = tokens
                    mask[row, width - len(tokens):] = True
                draws = np.random.default_rng([seed, batch_index])
                hidden = (ids == image_token_id) & mask & (draws.random(ids.shape) < hide_image_fraction)
                pixels = np.stack([self._pixels(p.image) for p in filled])
                output = generate(self.model, ids, sampling, attention_mask=mask, pixel_values=pixels, hidden=hidden,
                                  rng=jax.random.fold_in(jax.random.key(seed), batch_index))
                tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
                for row, prompt in enumerate(chunk):
                    generated = tokens[row, :lengths[row]]
                    texts.append(self.codec.continuation(rows[row], generated) if prompt.prefix
                                 else self.codec.answer_text(generated))
                bar.update(len(chunk))
        return texts
