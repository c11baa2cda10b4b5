"""A checkpoint's chat side, as the generation runner (models/answering.py) needs it: prompts
(image, question, the answer so far) -> token ids and pixels, and generated ids -> text.

The runner in models/ sees only ids and pixels; the tokenizer, the chat template and the
image preprocessing stay here in data/ (docs/design.md, "Rooms and who may import whom").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from realign_jax.data import images as image_ops
from realign_jax.data import prompting

_ANCHOR_TOKENS = 8  # prompt tokens decoded with a continuation to recover its leading space


class ChatCodec:
    """A tokenizer with its chat template, and the image preprocessing of the same checkpoint."""

    def __init__(self, tokenizer: Any, processing: image_ops.ImageProcessing):
        self.tokenizer, self.processing = tokenizer, processing
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id

    @classmethod
    def load(cls, path: str, image_size: int) -> ChatCodec:
        """The tokenizer and processor config of a Hugging Face LLaVA folder (plain CLIP
        preprocessing at the tower's `image_size` when it has no processor config)."""
        try:
            tokenizer = prompting.load_tokenizer(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"model.path={path!r}: answering needs the checkpoint's tokenizer there ({error})") \
                from None
        return cls(tokenizer, image_ops.ImageProcessing.for_checkpoint(path, image_size))

    def prompt_ids(self, question: str, num_image_tokens: int, prefix: str = "") -> list[int]:
        return prompting.image_prompt_ids(self.tokenizer, question, num_image_tokens, prefix)

    def pixels(self, image: str) -> np.ndarray:
        return image_ops.preprocess(image_ops.load_image(image), self.processing)

    def answer_text(self, generated: Sequence[int]) -> str:
        """A whole answer: the generated ids decoded, special tokens and outer spaces dropped."""
        return self.tokenizer.decode([int(t) for t in generated], skip_special_tokens=True).strip()

    def continuation(self, prompt: Sequence[int], generated: Sequence[int]) -> str:
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
