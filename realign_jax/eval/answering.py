"""Answer (image, question) pairs with a LLaVA model: the generation runner every benchmark and
every pair builder uses.

Prompts go through the checkpoint's chat template with the image placeholder expanded, are
left-padded to a multiple of `PAD_MULTIPLE` and batches are filled up to `batch_size`, so a
whole benchmark compiles a handful of generation programs instead of one per batch.

The pair builders also continue an answer the assistant has begun (`Prompt.prefix`: Re-Align
fills a masked answer left to right, BDHS completes cut sentences), sample instead of decoding
greedily, and hide a random share of the image tokens from the language model (BDHS's rho_th).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from realign_jax.data import images as image_ops
from realign_jax.data import prompting
from realign_jax.models import hf
from realign_jax.models.generation import SamplingConfig, decode, generate
from realign_jax.models.llava import LlavaModel

PAD_MULTIPLE = 16
_ANCHOR_TOKENS = 8  # prompt tokens decoded with a continuation to recover its leading space


def image_prompt_ids(tokenizer: object, question: str, num_image_tokens: int, prefix: str = "") -> list[int]:
    """One user turn (image, then the question) with the assistant's turn opened and, if given,
    begun with `prefix` (rendered as the template renders an answer, cut after the prefix)."""
    user = {"role": "user", "content": f"{prompting.IMAGE_PLACEHOLDER}\n{question}"}
    if prefix:
        text = prompting.render_conversation(
            tokenizer, [user, {"role": "assistant", "content": prefix}], add_generation_prompt=False)
        text = text[: text.rindex(prefix) + len(prefix)]
    else:
        text = prompting.render_conversation(tokenizer, [user], add_generation_prompt=True)
    return prompting.encode_with_image_tokens(tokenizer, text, prompting.IMAGE_PLACEHOLDER, num_image_tokens)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """An image, a question and the assistant's answer so far (empty: answer from the start)."""

    image: str
    question: str
    prefix: str = ""


class Answerer:
    """A model, its tokenizer and image preprocessing, ready to answer in batches."""

    def __init__(self, model: LlavaModel, tokenizer: object, spec: image_ops.ImageSpec, *, batch_size: int = 16,
                 path: str = ""):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.path, self.batch_size = path, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # POPE asks several questions per image and Re-Align tries the same neighbours for many
        # records: preprocess each image once (per Answerer, so the cache goes away with it).
        self._pixels = functools.lru_cache(maxsize=4096)(self._preprocess)

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", param_dtype: str = "float32",
             batch_size: int = 16) -> Answerer:
        """A Hugging Face LLaVA folder with its tokenizer."""
        model = hf.load_pretrained(path, dtype=dtype, param_dtype=param_dtype)
        try:
            tokenizer = prompting.load_tokenizer(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"model.path={path!r}: answering needs the checkpoint's tokenizer there ({error})") \
                from None
        spec = image_ops.ImageSpec.for_checkpoint(path, model.config.vision.image_size)
        return cls(model, tokenizer, spec, batch_size=batch_size, path=path)

    def _preprocess(self, image: str) -> np.ndarray:
        return image_ops.preprocess(image_ops.load_image(image), self.spec)

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
                                  eos_token_ids=(self.tokenizer.eos_token_id,), pad_token_id=self.pad_id)
        num_image_tokens = self.model.config.num_image_tokens
        image_token_id = self.model.config.image_token_id
        texts: list[str] = []
        with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
            for batch_index, start in enumerate(range(0, len(prompts), self.batch_size)):
                chunk = list(prompts[start : start + self.batch_size])
                filled = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one batch shape throughout
                rows = [image_prompt_ids(self.tokenizer, p.question, num_image_tokens, p.prefix) for p in filled]
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
                decoded = decode(output.tokens, output.lengths, self.tokenizer)
                tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
                for row, prompt in enumerate(chunk):
                    texts.append(self._joined(rows[row], tokens[row, :lengths[row]]) if prompt.prefix
                                 else decoded[row].strip())
                bar.update(len(chunk))
        return texts

    def _joined(self, prompt: Sequence[int], generated: np.ndarray) -> str:
        """The continuation exactly as it follows the prompt's text (a leading space when the model
        began a new word, none when it finished the prefix's last word), trailing space dropped.

        Decoding the generated tokens alone loses that leading space (SentencePiece drops it), so
        the prompt's last tokens are decoded with and without them and the difference taken."""
        anchor = list(prompt[-_ANCHOR_TOKENS:])
        before = self.tokenizer.decode(anchor, skip_special_tokens=True)
        after = self.tokenizer.decode(anchor + [int(t) for t in generated], skip_special_tokens=True)
        if after.startswith(before):
            return after[len(before):].rstrip()
        return " " + self.tokenizer.decode(generated, skip_special_tokens=True).strip()
