"""Conversations -> LLaVA token ids, with the image placeholder expanded and the response marked.

The ids must equal what transformers' ``LlavaProcessor`` produces for the same text, because
the model replaces exactly the image-token positions with vision features. The response mask
tells preference losses (DPO and relatives) which tokens' log-probabilities to score.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IMAGE_PLACEHOLDER = "<image>"
_ROLES = ("system", "user", "assistant")

Message = Mapping[str, str]


@dataclass(frozen=True)
class PromptResponse:
    """Token ids of prompt + response, and a mask that is True exactly on the response tokens."""

    input_ids: list[int]
    response_mask: list[bool]


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Loads the tokenizer saved in a local checkpoint folder (never from the Hub)."""
    from transformers import AutoTokenizer  # Deferred: importing transformers takes seconds.

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{folder}: no usable tokenizer (tokenizer.json or tokenizer.model expected): {error}"
        ) from error


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    """Formats messages with the tokenizer's chat template, or LLaVA-1.5's format if it has none.

    User content is a plain string that may contain the image placeholder.
    """
    _check_messages(messages)
    if not tokenizer.chat_template:
        return _render_llava_v1(messages, tokenizer.eos_token or "", add_generation_prompt)
    text = tokenizer.apply_chat_template(
        [dict(message) for message in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    _check_contents_rendered(text, messages)
    return text


def _check_messages(messages: Sequence[Message]) -> None:
    for index, message in enumerate(messages):
        if message.get("role") not in _ROLES:
            raise ValueError(f"message {index}: role must be one of {_ROLES}, got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index}: content must be a string, got {message.get('content')!r}")


def _render_llava_v1(messages: Sequence[Message], eos_token: str, add_generation_prompt: bool) -> str:
    """LLaVA-1.5's "v1" conversation: ``USER: <image>\\n{question} ASSISTANT: {answer}</s>``."""
    text = "".join(_llava_v1_turn(message["role"], message["content"], eos_token) for message in messages)
    return text + "ASSISTANT:" if add_generation_prompt else text


def _llava_v1_turn(role: str, content: str, eos_token: str) -> str:
    if role == "system":
        return f"{content} "
    if role == "user":
        return f"USER: {content} "
    return f"ASSISTANT: {content}{eos_token}"


def _check_contents_rendered(text: str, messages: Sequence[Message]) -> None:
    """Catches templates that silently drop string content (e.g. ones expecting a list of parts)."""
    for index, message in enumerate(messages):
        if message["content"].strip() not in text:
            raise ValueError(
                f"message {index} ({message['role']}): the chat template did not render its content verbatim; "
                "the template may expect content as a list of typed parts"
            )


def encode_with_image_tokens(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    image_token: str,
    num_image_tokens: int,
    num_images: int = 1,
) -> list[int]:
    """Tokenises ``text`` and repeats each image placeholder id ``num_image_tokens`` times.

    Equivalent to ``LlavaProcessor``'s string expansion followed by tokenisation. Special tokens
    (BOS) are added unless the text already starts with BOS, as the processor's chat path does.
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
    placeholders = text.count(image_token)
    if placeholders != num_images:
        raise ValueError(f"text has {placeholders} '{image_token}' placeholder(s) but {num_images} image(s) were given")
    image_id = _single_token_id(tokenizer, image_token)
    starts_with_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    ids = tokenizer(text, add_special_tokens=not starts_with_bos)["input_ids"]
    if ids.count(image_id) != num_images:
        raise ValueError(
            f"the tokenizer did not keep '{image_token}' as one token in context; it must be a special token"
        )
    return [token for token_id in ids for token in [token_id] * (num_image_tokens if token_id == image_id else 1)]


def image_prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, num_image_tokens: int,
                     prefix: str = "") -> list[int]:
    """One user turn (image, then the question) with the assistant's turn opened and, if given,
    begun with `prefix` (rendered as the template renders an answer, cut after the prefix):
    the prompt the generation runner (models/answering.py) continues."""
    user = {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}
    if prefix:
        text = render_conversation(tokenizer, [user, {"role": "assistant", "content": prefix}],
                                   add_generation_prompt=False)
        text = text[: text.rindex(prefix) + len(prefix)]
    else:
        text = render_conversation(tokenizer, [user], add_generation_prompt=True)
    return encode_with_image_tokens(tokenizer, text, IMAGE_PLACEHOLDER, num_image_tokens)


def _single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"'{token}' is not a single known token in this tokenizer (encodes to {ids})")
    return ids[0]


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    image_token: str,
    num_image_tokens: int,
    num_images: int = 1,
) -> PromptResponse:
    """Encodes a conversation whose last message is the assistant response to be scored.

    The response is everything the template renders after the generation prompt, so its
    end-of-turn token (e.g. ``</s>``) is scored too: the model must learn when to stop.
    """
    _check_response(messages, image_token)
    prompt_text = render_conversation(tokenizer, messages[:-1], add_generation_prompt=True)
    full_text = render_conversation(tokenizer, messages, add_generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template's generation prompt is not a prefix of the rendered answer turn")
    prompt_ids = encode_with_image_tokens(tokenizer, prompt_text, image_token, num_image_tokens, num_images)
    input_ids = encode_with_image_tokens(tokenizer, full_text, image_token, num_image_tokens, num_images)
    if input_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "prompt and response tokens merge at their boundary, so the response cannot be separated; "
            f"prompt ends with {prompt_text[-20:]!r}"
        )
    num_prompt = len(prompt_ids)
    return PromptResponse(input_ids, [False] * num_prompt + [True] * (len(input_ids) - num_prompt))


def _check_response(messages: Sequence[Message], image_token: str) -> None:
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant response")
    response = messages[-1].get("content")
    if not isinstance(response, str) or not response.strip():
        raise ValueError(f"the assistant response is empty: {response!r}")
    if image_token in response:
        raise ValueError(f"the assistant response contains the image placeholder '{image_token}'")
