"""A BPE tokenizer trained on the world's text, saved in Hugging Face format.

Laid out like Llama's (`<unk>`=0, `<s>`=1, `</s>`=2, BOS prepended, metaspace words) plus
`<pad>`=3, and `<image>` as a special token with the LAST id (vocab_size - 1), which is
where the `tiny` model preset expects it (image_token_id=255 with vocab_size=256). The chat
template renders LLaVA-1.5's conversation ("USER: <image>\\n... ASSISTANT: ...</s>") from
plain string contents, as data/prompting.py requires.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from realign_jax.data.prompting import IMAGE_PLACEHOLDER

SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_SPECIAL = re.compile("|".join(re.escape(t) for t in (*SPECIAL_TOKENS, IMAGE_PLACEHOLDER)))


def conversation_text(question: str, answer: str) -> str:
    """What the chat template renders for one image question and its answer (the corpus the
    tokenizer learns from, so "USER:", "ASSISTANT:" and the newline get their own merges)."""
    return f"USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT: {answer}</s>"


def _plain_segments(texts: Iterable[str]) -> Iterator[str]:
    """Text between special tokens: those are added whole, never learned from pieces."""
    for text in texts:
        yield from (s for s in _SPECIAL.split(text) if s)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """BPE with `vocab_size` ids in all; raises if the text's alphabet alone needs more."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=list(SPECIAL_TOKENS),
                                  show_progress=False)
    backend.train_from_iterator(_plain_segments(texts), trainer=trainer)
    learned = backend.get_vocab_size()
    if learned > vocab_size - 1:
        raise ValueError(f"tokenizer_vocab_size={vocab_size} is too small: the world's characters and special "
                         f"tokens alone need {learned + 1} ids")
    backend.add_special_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        chat_template=LLAVA_CHAT_TEMPLATE, clean_up_tokenization_spaces=False, model_max_length=512,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | os.PathLike[str]) -> None:
    """tokenizer.json + tokenizer_config.json, with the chat template inside the config."""
    os.makedirs(folder, exist_ok=True)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
