"""A published POPE file as a newcomer writes it: every bad question is named by its file and
line, and relative image paths resolve against the image folder or the file's own folder."""

from __future__ import annotations

import json
import os

import pytest
from flax import nnx
from PIL import Image

from realign_jax.data.chat import ChatCodec
from realign_jax.data.images import ImageProcessing
from realign_jax.data.prompting import IMAGE_PLACEHOLDER
from realign_jax.eval import pope, suite
from realign_jax.models.answering import Answerer
from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel
from realign_jax.settings.sections import EvalSettings


def question(image: str, text: str = "Is there a cat in the image?", label: str = "yes") -> dict:
    return {"question_id": 0, "image": image, "text": text, "label": label}


def write_pope(path, rows: list[dict | None]) -> str:
    """One JSON line per row; None writes a blank line (still a line of the file)."""
    path.write_text("".join("\n" if row is None else json.dumps(row) + "\n" for row in rows))
    return str(path)


def save_image(path) -> str:
    Image.new("RGB", (40, 30), (200, 40, 40)).save(path)
    return str(path)


def test_a_missing_image_names_the_line_before_any_model_runs(tmp_path):
    save_image(tmp_path / "a.png")
    path = write_pope(tmp_path / "coco_pope_random.json", [question("a.png"), None, question("gone.png")])
    with pytest.raises(ValueError, match=r"coco_pope_random\.json, line 3: field 'image': .*gone\.png: image file "
                                         r"not found"):
        pope.read_pope_file(path, "")


def test_a_stray_image_placeholder_in_the_text_names_the_line(tmp_path):
    save_image(tmp_path / "a.png")
    path = write_pope(tmp_path / "pope.json", [question("a.png"), question("a.png", f"{IMAGE_PLACEHOLDER}\nIs it red?")])
    with pytest.raises(ValueError, match=r"pope\.json, line 2: field 'text' must not hold the image placeholder"):
        pope.read_pope_file(path, "")


def test_relative_images_resolve_against_the_file_folder_not_the_current_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    save_image(data / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute = save_image(tmp_path / "b.png")
    path = write_pope(data / "pope.json", [question("a.png"), question(absolute)])
    located = pope.read_pope_file(path, "")
    assert [record["image"] for _, record in located] == [str(data / "a.png"), absolute]
    assert [where for where, _ in located] == [f"{path}, line 1", f"{path}, line 2"]


def test_the_image_folder_wins_over_the_file_folder(tmp_path):
    folder = tmp_path / "val2014"
    folder.mkdir()
    save_image(folder / "a.png")
    save_image(tmp_path / "a.png")
    path = write_pope(tmp_path / "pope.json", [question("a.png")])
    assert pope.read_pope_file(path, str(folder))[0][1]["image"] == str(folder / "a.png")


def test_a_corrupt_image_names_its_line_when_answering_meets_it(tokenizer, tmp_path):
    """The file passes the up-front checks (the file exists); decoding in the real eval path fails."""
    save_image(tmp_path / "a.png")
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    path = write_pope(tmp_path / "pope.json", [question("a.png"), None, question("cut.png", label="no"),
                                               question("cut.png")])
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    model = LlavaModel(preset("tiny", image_token_id=image_id), rngs=nnx.Rngs(0))
    codec = ChatCodec(tokenizer, ImageProcessing(size=32, shortest_edge=32))
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(ValueError, match=r"pope\.json, line 3: field 'image': .*cut\.png: not a readable image"):
        suite.run_pope(Answerer(model, codec, batch_size=2), EvalSettings(pope_file=path), str(out))
    assert os.listdir(out) == []
