"""realign_jax.data.prompting against transformers' LlavaProcessor, with a tiny trained tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from realign_jax.data.prompting import (
    IMAGE_PLACEHOLDER,
    encode_prompt_response,
    encode_with_image_tokens,
    load_tokenizer,
    render_conversation,
)

# A 64-pixel crop cut into 16-pixel patches: each image becomes (64 // 16) ** 2 = 16 tokens.
CROP, PATCH, NUM_IMAGE_TOKENS = 64, 16, 16

CORPUS = [
    "USER: What is in the picture?\nASSISTANT: A red cat sits on a mat.",
    "SYSTEM: Be brief. Describe the image in detail.",
    "There is no dog in the photo, only a cat and a blue ball. Is it red?",
]

# LLaVA-1.5 style (USER:/ASSISTANT:, </s> closing each answer); system turns render as "SYSTEM: ..."
# so that a test can tell the template apart from the built-in fallback format.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEMPLATES = {"template": LLAVA_TEMPLATE, "bos_template": "{{ bos_token }}" + LLAVA_TEMPLATE, "no_template": None}

QUESTION = {"role": "user", "content": "<image>\nWhat is in the picture?"}
ANSWER = {"role": "assistant", "content": "A red cat sits on a mat."}


def build_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    """A Llama-like BPE (metaspace, BOS prepended) trained on a few sentences."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    special = ["<unk>", "<pad>", "<s>", "</s>", IMAGE_PLACEHOLDER]
    backend.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=150, special_tokens=special))
    bos = ("<s>", backend.token_to_id("<s>"))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=chat_template,
    )


@pytest.fixture(scope="module", params=list(TEMPLATES))
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """The tokenizer as a checkpoint ships it: saved to a folder, loaded back with load_tokenizer."""
    folder = tmp_path_factory.mktemp(request.param)
    build_tokenizer(TEMPLATES[request.param]).save_pretrained(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def processor(tokenizer: PreTrainedTokenizerBase) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP})
    return LlavaProcessor(image_processor, tokenizer, patch_size=PATCH, vision_feature_select_strategy="full")


def processor_ids(processor: LlavaProcessor, text: str, num_images: int = 1) -> list[int]:
    """What LlavaProcessor feeds the model. BOS is not added twice when the text already starts
    with it, which is what the processor's own chat path (apply_chat_template) does."""
    images = [Image.new("RGB", (40, 30), (200, 30, 30))] * num_images or None
    add_bos = not text.startswith("<s>")
    return processor(text=text, images=images, add_special_tokens=add_bos)["input_ids"][0]


def test_processor_expands_each_image_to_the_expected_count(processor: LlavaProcessor) -> None:
    ids = processor_ids(processor, "USER: <image>\nIs it red? ASSISTANT:")
    assert ids.count(processor.image_token_id) == NUM_IMAGE_TOKENS


@pytest.mark.parametrize(
    ("text", "num_images"),
    [
        ("USER: <image>\nWhat is in the picture? ASSISTANT:", 1),
        ("<s>USER: <image>\nDescribe the image in detail. ASSISTANT:", 1),
        ("USER: Is the cat<image>red? ASSISTANT: A red cat.</s>", 1),
        ("<image><image>\nThere is no dog in the photo.", 2),
        ("USER: Is it red? ASSISTANT:", 0),
    ],
)
def test_encode_matches_llava_processor(
    tokenizer: PreTrainedTokenizerBase, processor: LlavaProcessor, text: str, num_images: int
) -> None:
    ours = encode_with_image_tokens(tokenizer, text, IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS, num_images=num_images)
    assert ours == processor_ids(processor, text, num_images)


@pytest.mark.parametrize(
    "messages",
    [
        [QUESTION, ANSWER],
        [{"role": "system", "content": "Be brief."}, QUESTION, ANSWER],
        [QUESTION, {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Is it red?"}, ANSWER],
    ],
    ids=["single-turn", "system", "multi-turn"],
)
def test_prompt_response_matches_processor_and_masks_only_the_answer(
    tokenizer: PreTrainedTokenizerBase, processor: LlavaProcessor, messages: list[dict[str, str]]
) -> None:
    encoded = encode_prompt_response(tokenizer, messages, IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS)
    full_ids = processor_ids(processor, render_conversation(tokenizer, messages, add_generation_prompt=False))
    prompt_ids = processor_ids(processor, render_conversation(tokenizer, messages[:-1], add_generation_prompt=True))
    assert encoded.input_ids == full_ids
    assert encoded.response_mask == [False] * len(prompt_ids) + [True] * (len(full_ids) - len(prompt_ids))
    response_ids = [t for t, scored in zip(encoded.input_ids, encoded.response_mask, strict=True) if scored]
    assert tokenizer.decode(response_ids).strip() == ANSWER["content"] + "</s>"


def test_fallback_renders_llava_v1() -> None:
    tokenizer = build_tokenizer(chat_template=None)
    system = {"role": "system", "content": "Be brief."}
    assert render_conversation(tokenizer, [QUESTION, ANSWER], add_generation_prompt=False) == (
        "USER: <image>\nWhat is in the picture? ASSISTANT: A red cat sits on a mat.</s>"
    )
    assert render_conversation(tokenizer, [system, QUESTION], add_generation_prompt=True) == (
        "Be brief. USER: <image>\nWhat is in the picture? ASSISTANT:"
    )


def test_chat_template_is_preferred_to_the_fallback() -> None:
    tokenizer = build_tokenizer("{{ bos_token }}" + LLAVA_TEMPLATE)
    system = {"role": "system", "content": "Be brief."}
    assert render_conversation(tokenizer, [system, QUESTION], add_generation_prompt=True) == (
        "<s>SYSTEM: Be brief. USER: <image>\nWhat is in the picture? ASSISTANT:"
    )


def test_template_that_drops_string_content_is_rejected() -> None:
    parts_only = (
        "{% for m in messages %}{% for part in m['content'] if part['type'] == 'text' %}"
        "{{ part['text'] }}{% endfor %}{% endfor %}"
    )
    with pytest.raises(ValueError, match=r"message 0 \(user\).*list of typed parts"):
        render_conversation(build_tokenizer(parts_only), [QUESTION], add_generation_prompt=True)


def test_answer_merging_with_the_generation_prompt_is_rejected() -> None:
    # "ASSISTANT: " ends in a lone "▁" token that the full text merges into "▁A".
    trailing_space = LLAVA_TEMPLATE.replace("ASSISTANT:{% endif %}", "ASSISTANT: {% endif %}")
    with pytest.raises(ValueError, match="merge at their boundary"):
        encode_prompt_response(build_tokenizer(trailing_space), [QUESTION, ANSWER], IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS)


def test_generation_prompt_that_is_not_a_prefix_is_rejected() -> None:
    other_prompt = LLAVA_TEMPLATE.replace("ASSISTANT:{% endif %}", "BOT:{% endif %}")
    with pytest.raises(ValueError, match="not a prefix"):
        encode_prompt_response(build_tokenizer(other_prompt), [QUESTION, ANSWER], IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS)


@pytest.mark.parametrize(
    ("text", "image_token", "num_image_tokens", "num_images", "message"),
    [
        ("USER: Is it red?", IMAGE_PLACEHOLDER, 16, 1, "0 '<image>' placeholder.*1 image"),
        ("USER: <image>\nIs it red?", IMAGE_PLACEHOLDER, 16, 0, "1 '<image>' placeholder.*0 image"),
        ("<image><image> Is it red?", IMAGE_PLACEHOLDER, 16, 1, "2 '<image>' placeholder.*1 image"),
        ("USER: <img>\nIs it red?", "<img>", 16, 1, "'<img>' is not a single known token"),
        ("USER: <image>\nIs it red?", IMAGE_PLACEHOLDER, 0, 1, "num_image_tokens must be positive"),
    ],
)
def test_encode_errors(text: str, image_token: str, num_image_tokens: int, num_images: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_with_image_tokens(build_tokenizer(None), text, image_token, num_image_tokens, num_images=num_images)


def test_placeholder_missing_from_the_vocabulary_is_rejected() -> None:
    # A word-level tokenizer maps the unknown placeholder to one token, <unk>, which must not count.
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "USER:": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ValueError, match="'<image>' is not a single known token"):
        encode_with_image_tokens(tokenizer, "USER: <image>", IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS)


def test_placeholder_that_is_not_a_special_token_is_rejected() -> None:
    # "cat" alone is the single token "▁cat", but glued to a word it tokenises differently.
    with pytest.raises(ValueError, match="did not keep 'cat' as one token"):
        encode_with_image_tokens(build_tokenizer(None), "USER: Is the bigcat red?", "cat", NUM_IMAGE_TOKENS)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([QUESTION, {"role": "assistant", "content": "  "}], "response is empty"),
        ([QUESTION], "last message must be the assistant response"),
        ([], "last message must be the assistant response"),
        ([QUESTION, {"role": "assistant", "content": "Look: <image>"}], "response contains the image placeholder"),
        ([{"role": "robot", "content": "<image>"}, ANSWER], "message 0: role must be one of"),
        ([{"role": "user", "content": None}, ANSWER], "message 0: content must be a string"),
    ],
)
def test_prompt_response_errors(messages: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_prompt_response(build_tokenizer(LLAVA_TEMPLATE), messages, IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS)


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: no usable tokenizer")):
        load_tokenizer(tmp_path)


def test_load_tokenizer_keeps_vocabulary_and_template(tmp_path: Path) -> None:
    original = build_tokenizer(LLAVA_TEMPLATE)
    original.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "USER: <image>\nWhat is in the picture?"
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    assert loaded.chat_template == LLAVA_TEMPLATE
