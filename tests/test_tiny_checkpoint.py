"""The tiny checkpoint the own-data examples run on is a complete LLaVA folder: transformers'
AutoProcessor loads it, its tokenizer puts `<image>` where the `tiny` preset reads it and reads
the example records without `<unk>`, and the same arguments write the same files."""

from __future__ import annotations

import json
import pathlib
import string

import pytest

from realign_jax.models import hf
from realign_jax.models.config import preset
from realign_jax.tiny_checkpoint import main, write_tiny_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "own_data"
RECORDS = [str(EXAMPLES / "pairs.jsonl"), str(EXAMPLES / "sft.jsonl")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    return pathlib.Path(write_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "tiny_llava"), RECORDS))


def test_a_complete_llava_folder(folder: pathlib.Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = processor.tokenizer
    config = preset("tiny")
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == len(tokenizer) - 1
    assert hf.load_pretrained(str(folder)).config.text.vocab_size == config.text.vocab_size
    assert processor.image_processor.do_pad  # LLaVA-1.5's pad-to-square: the wide examples are seen whole
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nDescribe the image."}],
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == "USER: <image>\nDescribe the image. ASSISTANT:"
    for path in [*RECORDS, str(EXAMPLES / "pope.jsonl")]:
        for line in open(path, encoding="utf-8"):
            record = json.loads(line)
            for text in (record.get(k) for k in ("question", "text", "chosen", "rejected")):
                if text:
                    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], (path, text)
    anything = string.ascii_letters + string.digits + string.punctuation + " "  # any ASCII text, not only the examples'
    assert tokenizer.unk_token_id not in tokenizer(anything)["input_ids"]


def test_the_same_arguments_write_the_same_files(folder: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    again = tmp_path / "again"
    main([str(again), "--text", *RECORDS, str(EXAMPLES / "bad_pairs.jsonl")])  # its broken line teaches nothing
    assert json.loads((again / "tokenizer.json").read_text()) != json.loads((folder / "tokenizer.json").read_text())
    main([str(again), "--text", *RECORDS])  # over the folder: files replaced
    assert f"--config.model.path={again}" in capsys.readouterr().out
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json", "processor_config.json"} <= set(names)
    for name in names:
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name
