"""`pairs.on_bad_record`: an input record whose image is missing, corrupt or absent (or whose
text field is not text) stops `mode=build_pairs` naming its line and field before anything is
written, or is skipped, counted and named, the rest building exactly as a file without it."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import build_world_llava

from realign_jax.main import run
from realign_jax.pairs.build import build_pairs
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.synthetic import WorldConfig, generate_world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import bdhs_pairs  # noqa: E402
import povid_pairs  # noqa: E402

GOOD = 9  # the world's first records, every one with a readable image
# Each bad record, the line it sits on in bad.jsonl (good records fill the other lines), and
# the field and problem it is named with.
BAD = {
    2: ({"id": "gone", "image": "images/missing.png"}, "image", "image file not found"),
    5: ({"id": "broken", "image": "images/corrupt.png"}, "image", "not a readable image, or truncated"),
    7: ({"id": "blind"}, "image", "is missing"),
    10: ({"id": "listy", "image": "images/000000.png", "chosen": ["a cup"]}, "chosen", "must be a string"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=3, num_train_images=8, num_eval_images=2), out, progress=False)
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def data(world: Path, tmp_path: Path) -> Path:
    """A user's folder: the world's PNGs, a corrupt one (half a real PNG), clean.jsonl with the
    good records and bad.jsonl with the same records and the BAD ones at their lines."""
    root = tmp_path / "data"
    shutil.copytree(world / "train" / "images", root / "images")
    whole = (root / "images" / "000001.png").read_bytes()
    (root / "images" / "corrupt.png").write_bytes(whole[:len(whole) // 2])
    shutil.copy(world / "synonyms.txt", root / "synonyms.txt")
    good = read_records(str(world / "train" / "sft.jsonl"))[:GOOD]
    write_jsonl(root / "clean.jsonl", good)
    lines, rest = [], iter(good)
    for line in range(1, GOOD + len(BAD) + 1):
        if line in BAD:
            lines.append({"question": "What do you see?", "chosen": "A cup.", **BAD[line][0]})
        else:
            lines.append(next(rest))
    write_jsonl(root / "bad.jsonl", lines)
    return root


def povid_config(data: Path, records: str, on_bad_record: str | None = None) -> Any:
    """POVID with rule injection (no model) on `records`; pairs.on_bad_record left at its default
    unless given."""
    config = povid_pairs.get_config()
    config.data.path = str(data / records)
    config.pairs.synonyms = str(data / "synonyms.txt")
    config.pairs.shard_size = 4
    if on_bad_record is not None:
        config.pairs.on_bad_record = on_bad_record
    return config


def read_pairs(folder: Path) -> list[dict[str, Any]]:
    return [r for path in sorted(folder.glob("pairs-*.jsonl")) for r in read_records(str(path))]


@pytest.mark.parametrize("line", sorted(BAD))
def test_error_names_the_line_and_field_and_writes_nothing(data: Path, tmp_path: Path, line: int) -> None:
    """Each kind of bad record alone among good ones stops the run on its own line, before the
    builder makes its output folder."""
    records = read_records(str(data / "clean.jsonl"))
    bad, field, problem = BAD[line]
    records.insert(line - 1, {"question": "What do you see?", "chosen": "A cup.", **bad})
    write_jsonl(data / "one_bad.jsonl", records)
    where = f"{data / 'one_bad.jsonl'}, line {line} (id {bad['id']!r})"
    with pytest.raises(ValueError, match=rf"^{re.escape(where)}: field '{field}': .*{problem}"):
        run(povid_config(data, "one_bad.jsonl"), str(tmp_path / "work"))
    assert not (tmp_path / "work" / "pairs").exists()


def test_skip_builds_the_good_records_as_a_file_without_the_bad(data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    clean = build_pairs(povid_config(data, "clean.jsonl"), str(tmp_path / "clean"))
    skipped = build_pairs(povid_config(data, "bad.jsonl", "skip"), str(tmp_path / "skip"))
    printed = capsys.readouterr().out
    expected = read_pairs(tmp_path / "clean" / "pairs")
    assert len(expected) > GOOD // 2 and read_pairs(tmp_path / "skip" / "pairs") == expected
    dropped = {"dropped_bad_image": 3, "dropped_bad_chosen": 1}
    assert skipped["counts"] == dict(sorted({**clean["counts"], **dropped}.items()))
    names = [f"{data / 'bad.jsonl'}, line {line} (id {bad['id']!r}): field '{field}': "
             for line, (bad, field, _) in sorted(BAD.items())]
    assert [n[:len(prefix)] for n, prefix in zip(skipped["skipped_records"], names)] == names
    assert "skipped 4 bad records (pairs.on_bad_record='skip')" in printed
    assert all(name in printed for name in names)


def test_an_unknown_choice_is_named(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pairs.on_bad_record='drop'"):
        run(povid_config(data, "bad.jsonl", "drop"), str(tmp_path / "work"))


def test_bdhs_skips_before_the_model_sees_a_bad_image(world: Path, data: Path, tmp_path: Path) -> None:
    """A model-based builder (a random LLaVA): a bad image stops it before the model loads, or
    is skipped without reaching generation, the good records' pairs being the clean file's."""
    checkpoint = build_world_llava(str(world), str(tmp_path / "llava"))

    def config(records: str, on_bad_record: str) -> Any:
        config = bdhs_pairs.get_config()
        config.data.path, config.model.path = str(data / records), checkpoint
        config.pairs.update({"max_new_tokens": 8, "batch_size": 8, "shard_size": 3, "eps_s": 1.01})
        if on_bad_record:
            config.pairs.on_bad_record = on_bad_record
        return config

    first_bad = re.escape(f"{data / 'bad.jsonl'}, line 2 (id 'gone'): field 'image'")
    with pytest.raises(ValueError, match=f"^{first_bad}"):
        build_pairs(config("bad.jsonl", ""), str(tmp_path / "error"))
    assert not (tmp_path / "error").exists()
    build_pairs(config("clean.jsonl", ""), str(tmp_path / "clean"))
    skipped = build_pairs(config("bad.jsonl", "skip"), str(tmp_path / "skip"))
    expected = read_pairs(tmp_path / "clean" / "pairs")
    assert len(expected) == GOOD and read_pairs(tmp_path / "skip" / "pairs") == expected
    assert skipped["counts"]["dropped_bad_image"] == 3 and len(skipped["skipped_records"]) == 4
