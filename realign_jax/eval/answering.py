"""Answer (image, question) pairs with a Hugging Face LLaVA checkpoint: the generation runner
every benchmark uses.

Prompts go through the checkpoint's chat template with the image placeholder expanded, are
left-padded to a multiple of `PAD_MULTIPLE` and batches are filled up to `batch_size`, so a
whole benchmark compiles a handful of generation programs instead of one per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from realign_jax.data import images as image_ops
from realign_jax.data import prompting
from realign_jax.models import hf
from realign_jax.models.generation import SamplingConfig, decode, generate

PAD_MULTIPLE = 16


def image_prompt_ids(tokenizer: object, question: str, num_image_tokens: int) -> list[int]:
    """One user turn (image, then the question) with the assistant's turn opened."""
    text = prompting.render_conversation(
        tokenizer, [{"role": "user", "content": f"{prompting.IMAGE_PLACEHOLDER}\n{question}"}],
        add_generation_prompt=True)
    return prompting.encode_with_image_tokens(tokenizer, text, prompting.IMAGE_PLACEHOLDER, num_image_tokens)


class Answerer:
    """A checkpoint, its tokenizer and image preprocessing, ready to answer in batches."""

    def __init__(self, path: str, *, dtype: str = "float32", param_dtype: str = "float32", batch_size: int = 16):
        self.path, self.batch_size = path, batch_size
        self.model = hf.load_pretrained(path, dtype=dtype, param_dtype=param_dtype)
        try:
            self.tokenizer = prompting.load_tokenizer(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"model.path={path!r}: evaluation needs the checkpoint's tokenizer there ({error})") \
                from None
        self.spec = image_ops.ImageSpec.for_checkpoint(path, self.model.config.vision.image_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # POPE asks several questions per image: preprocess each image once (per Answerer, so
        # the cache goes away with it).
        self._pixels = functools.lru_cache(maxsize=4096)(self._preprocess)

    def _preprocess(self, image: str) -> np.ndarray:
        return image_ops.preprocess(image_ops.load_image(image), self.spec)

    def answer(self, items: Sequence[tuple[str, str]], *, max_new_tokens: int, desc: str = "answering") -> list[str]:
        """Greedy answers to (image path, question) pairs, in order."""
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, eos_token_ids=(self.tokenizer.eos_token_id,),
                                  pad_token_id=self.pad_id)
        num_image_tokens = self.model.config.num_image_tokens
        answers: list[str] = []
        with tqdm(total=len(items), desc=desc, unit="q") as bar:
            for start in range(0, len(items), self.batch_size):
                chunk = list(items[start : start + self.batch_size])
                filled = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one batch shape throughout
                prompts = [image_prompt_ids(self.tokenizer, question, num_image_tokens) for _, question in filled]
                width = -(-max(len(p) for p in prompts) // PAD_MULTIPLE) * PAD_MULTIPLE
                ids = np.full((len(filled), width), self.pad_id, np.int32)
                mask = np.zeros((len(filled), width), bool)
                for row, prompt in enumerate(prompts):
                    ids[row, width - len(prompt):] = prompt
                    mask[row, width - len(prompt):] = True
                pixels = np.stack([self._pixels(image) for image, _ in filled])
                output = generate(self.model, ids, sampling, attention_mask=mask, pixel_values=pixels)
                texts = decode(output.tokens, output.lengths, self.tokenizer)
                answers.extend(text.strip() for text in texts[: len(chunk)])
                bar.update(len(chunk))
        return answers
