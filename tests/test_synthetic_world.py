"""The synthetic world (realign_jax/synthetic): deterministic, consistent with its pixels,
co-occurrence structure as configured, and its text and tokenizer usable by the data pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from realign_jax.data.prompting import IMAGE_PLACEHOLDER, encode_prompt_response, load_tokenizer, render_conversation
from realign_jax.data.sources import JsonlSource
from realign_jax.models.config import preset
from realign_jax.synthetic import WorldConfig, generate_world
from realign_jax.synthetic.render import object_masks
from realign_jax.synthetic.scenes import SceneObject, anchors_without_companion, sample_categories, sample_scene
from realign_jax.synthetic.tokenizer import LLAVA_CHAT_TEMPLATE
from realign_jax.synthetic.vocabulary import BY_NAME, CATEGORIES, COLORS, COMPANIONS, SIZES, TYPICAL_COLORS

CONFIG = WorldConfig(seed=3, num_train_images=200, num_eval_images=80)
TINY = preset("tiny")


def _make(tmp_path_factory: pytest.TempPathFactory, name: str, config: WorldConfig) -> Path:
    out = tmp_path_factory.mktemp(name)
    generate_world(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory, "world", CONFIG)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def parse_synonyms(path: Path) -> dict[str, str]:
    """CHAIR's reading of synonyms.txt: every word on a line maps to the line's first word."""
    table: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        for word in words:
            assert table.setdefault(word, words[0]) == words[0], f"'{word}' names two categories"
    return table


def mentioned(text: str, table: dict[str, str]) -> list[str]:
    """Canonical objects a text mentions, longest surface forms first (as CHAIR does with two-word names)."""
    text = text.lower()
    found = []
    for form in sorted(table, key=lambda w: (-len(w.split()), -len(w))):
        pattern = rf"\b{re.escape(form)}\b"
        found += [table[form]] * len(re.findall(pattern, text))
        text = re.sub(pattern, " ", text)
    return found


def test_same_seed_same_files_other_seed_other_files(world: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    again = _make(tmp_path_factory, "again", CONFIG)
    assert file_digests(again) == file_digests(world)
    other = file_digests(_make(tmp_path_factory, "other", dataclasses.replace(CONFIG, seed=4)))
    ours = file_digests(world)
    for name in ("train/annotations.jsonl", "train/sft.jsonl", "eval/annotations.jsonl", "train/images/000000.png"):
        assert other[name] != ours[name], name


def test_refuses_to_overwrite_unless_asked(world: Path) -> None:
    with pytest.raises(FileExistsError, match="already holds a world"):
        generate_world(CONFIG, world, progress=False)


def test_layout_and_metadata(world: Path) -> None:
    meta = json.loads((world / "world.json").read_text())
    assert WorldConfig.from_json(meta["config"]) == CONFIG
    assert [c["name"] for c in meta["categories"]] == [c.name for c in CATEGORIES]
    assert meta["companions"] == [list(pair) for pair in COMPANIONS]
    for split, count in (("train", CONFIG.num_train_images), ("eval", CONFIG.num_eval_images)):
        annotations = read_jsonl(world / split / "annotations.jsonl")
        assert len(annotations) == count == meta["stats"][split]["images"]
        assert len(list((world / split / "images").glob("*.png"))) == count
        for a in annotations:
            assert set(a) >= {"id", "image", "objects", "relations"}
            assert all(set(o) >= {"name", "color", "size", "box"} for o in a["objects"])
            assert CONFIG.min_objects <= len(a["objects"]) <= CONFIG.max_objects
            with Image.open(world / split / a["image"]) as image:
                assert image.size == (CONFIG.image_size, CONFIG.image_size) and image.mode == "RGB"


def test_splits_are_disjoint(world: Path) -> None:
    def pixels(split: str) -> dict[str, str]:
        return {a["id"]: hashlib.sha1(np.asarray(Image.open(world / split / a["image"])).tobytes()).hexdigest()
                for a in read_jsonl(world / split / "annotations.jsonl")}

    train, eval_ = pixels("train"), pixels("eval")
    assert not set(train) & set(eval_)
    assert not set(train.values()) & set(eval_.values())


def test_boxes_hold_the_objects_colour_and_nothing_else_does(world: Path) -> None:
    """Each box shows its object's colour; outside the boxes no pixel is close to any object colour."""
    for split in ("train", "eval"):
        for a in read_jsonl(world / split / "annotations.jsonl"):
            pixels = np.asarray(Image.open(world / split / a["image"]), np.float32)
            inside = np.zeros(pixels.shape[:2], bool)
            for o in a["objects"]:
                x0, y0, x1, y1 = o["box"]
                assert 0 <= x0 < x1 <= CONFIG.image_size and 0 <= y0 < y1 <= CONFIG.image_size
                near = np.linalg.norm(pixels[y0:y1, x0:x1] - np.asarray(COLORS[o["color"]]), axis=-1) <= 40
                assert near.sum() >= 3 and near.mean() >= 0.05, (a["id"], o)
                inside[y0:y1, x0:x1] = True
            colors = np.asarray([COLORS[o["color"]] for o in a["objects"]], np.float32)
            outside = pixels[~inside]
            distance = np.linalg.norm(outside[:, None, :] - colors[None], axis=-1)
            assert distance.min(initial=np.inf) > 20, a["id"]


def test_sizes_and_relations_agree_with_boxes(world: Path) -> None:
    sides: dict[str, list[int]] = {size: [] for size in SIZES}
    for a in read_jsonl(world / "train" / "annotations.jsonl"):
        boxes = [o["box"] for o in a["objects"]]
        for o in a["objects"]:
            x0, y0, x1, y1 = o["box"]
            sides[o["size"]].append(max(x1 - x0, y1 - y0))
        centre = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        for i, relation, j in a["relations"]:
            dx, dy = centre[i][0] - centre[j][0], centre[i][1] - centre[j][1]
            assert {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[relation], (a["id"], i, j)
        assert all([j, {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[r], i]
                   in a["relations"] for i, r, j in a["relations"])
    assert np.mean(sides["large"]) > 1.25 * np.mean(sides["small"])


def test_companion_probability_is_exact_in_sampling() -> None:
    """P(companion | anchor) equals the configured probability (no other way brings companions in)."""
    for split, expected in (("train", CONFIG.companion_probability), ("eval", 1 - CONFIG.eval_companion_absent_rate)):
        rng = np.random.default_rng(0)
        anchors = with_companion = 0
        for _ in range(4000):
            names = sample_categories(rng, CONFIG.sampling(split))
            present = [n for n in set(names) if BY_NAME[n].role == "anchor"]
            anchors += len(present)
            with_companion += len(present) - len(anchors_without_companion(names))
        rate = with_companion / anchors
        assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / anchors) + 1e-9, (split, rate)


@pytest.mark.parametrize("absent_rate", [0.0, 1.0])
def test_eval_absent_rate_is_controllable(absent_rate: float) -> None:
    config = dataclasses.replace(CONFIG, eval_companion_absent_rate=absent_rate)
    rng = np.random.default_rng(1)
    draws = [sample_categories(rng, config.sampling("eval")) for _ in range(300)]
    probes = sum(bool(anchors_without_companion(names)) for names in draws)
    has_anchor = sum(any(BY_NAME[n].role == "anchor" for n in names) for names in draws)
    assert probes == (has_anchor if absent_rate == 1.0 else 0)


def test_objects_usually_have_their_typical_colour(world: Path) -> None:
    """The configured share of objects wears its category's typical colour, the rest any colour
    (so colour questions still need the image); companions never share their anchor's."""
    objects = [o for a in read_jsonl(world / "train" / "annotations.jsonl") for o in a["objects"]]
    typical = np.mean([o["color"] == TYPICAL_COLORS[o["name"]] for o in objects])
    # An object not drawn typical still gets its typical colour 1 time in len(COLORS).
    expected = CONFIG.typical_color_probability + (1 - CONFIG.typical_color_probability) / len(COLORS)
    assert abs(typical - expected) < 4 * np.sqrt(expected * (1 - expected) / len(objects)), typical
    assert len({o["color"] for o in objects}) == len(COLORS)
    assert all(TYPICAL_COLORS[a] != TYPICAL_COLORS[c] for a, c in COMPANIONS)
    never = dataclasses.replace(CONFIG, typical_color_probability=0.0).sampling("train")
    rng = np.random.default_rng(0)
    drawn = [o for _ in range(300) for o in sample_scene(rng, never).objects]
    assert abs(np.mean([o.color == TYPICAL_COLORS[o.name] for o in drawn]) - 1 / len(COLORS)) < 0.05


def test_grounding_curriculum_files(world: Path) -> None:
    """captions.jsonl = the captions of sft.jsonl; grounding.jsonl adds balanced existence pairs
    per image whose answers agree with the annotations."""
    sft = read_jsonl(world / "train" / "sft.jsonl")
    captions = read_jsonl(world / "train" / "captions.jsonl")
    assert captions == [r for r in sft if r["provenance"]["task"] == "caption"]
    grounding = read_jsonl(world / "train" / "grounding.jsonl")
    assert grounding[:len(captions)] == captions
    existence = grounding[len(captions):]
    assert len(existence) == 2 * CONFIG.grounding_exist_pairs * CONFIG.num_train_images
    truth = {a["id"]: {o["name"] for o in a["objects"]} for a in read_jsonl(world / "train" / "annotations.jsonl")}
    for record in existence:
        present = record["provenance"]["object"] in truth[record["provenance"]["image_id"]]
        assert present == (record["provenance"]["label"] == "yes") == record["chosen"].startswith("Yes"), record
    assert len({r["id"] for r in grounding}) == len(grounding)


def test_train_split_carries_the_prior_and_eval_probes_it(world: Path) -> None:
    stats = json.loads((world / "world.json").read_text())["stats"]
    train, eval_ = stats["train"], stats["eval"]
    tolerance = 4 * np.sqrt(0.9 * 0.1 / train["anchor_occurrences"])
    assert abs(train["companion_rate"] - CONFIG.companion_probability) < tolerance
    assert eval_["companion_rate"] < 0.75
    eval_annotations = read_jsonl(world / "eval" / "annotations.jsonl")
    probes = [a for a in eval_annotations if anchors_without_companion([o["name"] for o in a["objects"]])]
    assert len(probes) == eval_["images_with_anchor_without_companion"] >= 10


def test_records_load_and_describe_the_image(world: Path) -> None:
    table = parse_synonyms(world / "synonyms.txt")
    for split in ("train", "eval"):
        truth = {a["id"]: a for a in read_jsonl(world / split / "annotations.jsonl")}
        raw = read_jsonl(world / split / "sft.jsonl")
        source = JsonlSource(str(world / split / "sft.jsonl"))
        assert len(source) == len(raw)
        answers = {"yes": 0, "no": 0}
        for index, row in enumerate(raw):
            record = source[index]
            assert Path(record.image).is_file() and record.chosen and IMAGE_PLACEHOLDER in record.messages[0]["content"]
            names = {o["name"] for o in truth[row["provenance"]["image_id"]]["objects"]}
            task = row["provenance"]["task"]
            said = mentioned(row["chosen"], table)
            if task == "caption":
                assert set(said) == names, (row["chosen"], names)  # CHAIR_i = 0 and recall 1
            elif task == "exist":
                label = row["provenance"]["label"]
                answers[label] += 1
                assert row["chosen"].startswith("Yes," if label == "yes" else "No,")
                assert (row["provenance"]["object"] in names) == (label == "yes")
            names_absent = row["provenance"].get("label") == "no" and task == "exist" or \
                row["provenance"].get("count") == 0
            if not names_absent:
                assert set(said) <= names, row
        assert answers["yes"] == answers["no"] == len(truth)
        tasks = {r["provenance"]["task"] for r in raw}
        assert tasks >= {"caption", "exist", "count", "relation"} and tasks & {"color", "size", "position"}


def test_no_answers_ask_about_missing_companions(world: Path) -> None:
    rows = read_jsonl(world / "train" / "sft.jsonl")
    nos = [r for r in rows if r["provenance"]["task"] == "exist" and r["provenance"]["label"] == "no"]
    assert any(r["provenance"]["absent_companion"] for r in nos)
    assert all(re.match(r"No, there is no [a-z ]+ in the image\.$", r["chosen"]) for r in nos)


def test_synonyms_file_parses(world: Path) -> None:
    table = parse_synonyms(world / "synonyms.txt")
    assert set(table.values()) == {c.name for c in CATEGORIES}
    assert table["mugs"] == table["mug"] == table["cups"] == "cup" and table["automobile"] == "car"
    assert table["knives"] == "knife" and table["traffic lights"] == "traffic light"


def test_tokenizer_fits_the_tiny_preset_and_round_trips(world: Path) -> None:
    tokenizer = load_tokenizer(world / "tokenizer")
    assert json.loads((world / "tokenizer" / "tokenizer_config.json").read_text())["chat_template"] == \
        LLAVA_CHAT_TEMPLATE
    assert len(tokenizer) == TINY.text.vocab_size
    image_ids = tokenizer.encode(IMAGE_PLACEHOLDER, add_special_tokens=False)
    assert image_ids == [TINY.image_token_id]
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    for split in ("train", "eval"):
        for row in read_jsonl(world / split / "sft.jsonl"):
            for text in (row["question"], row["chosen"]):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    row = read_jsonl(world / "train" / "sft.jsonl")[0]
    messages = [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{row['question']}"},
                {"role": "assistant", "content": row["chosen"]}]
    rendered = render_conversation(tokenizer, messages, add_generation_prompt=False)
    assert rendered == f"USER: {IMAGE_PLACEHOLDER}\n{row['question']} ASSISTANT: {row['chosen']}</s>"
    ids = tokenizer(rendered)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(TINY.image_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith(row["chosen"] + "</s>")
    encoded = encode_prompt_response(tokenizer, messages, IMAGE_PLACEHOLDER, TINY.num_image_tokens)
    assert encoded.input_ids.count(TINY.image_token_id) == TINY.num_image_tokens
    response = [t for t, scored in zip(encoded.input_ids, encoded.response_mask, strict=True) if scored]
    assert tokenizer.decode(response).strip() == row["chosen"] + "</s>"


@pytest.mark.parametrize("side", [0.22, 0.35])
def test_categories_are_distinguishable_at_the_tiny_image_size(side: float) -> None:
    """Drawn alone at the smallest and largest size, any two categories differ in >= 15% of their ink."""
    size = TINY.vision.image_size

    def labels(name: str) -> np.ndarray:
        body, detail = object_masks(SceneObject(name, "red", "small", "center", 0.5, 0.5, side), size, 4)
        return np.where(detail >= 0.5, 2, np.where(body >= 0.5, 1, 0))

    drawn = {c.name: labels(c.name) for c in CATEGORIES}
    names = list(drawn)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            differ = (drawn[a] != drawn[b]).sum()
            assert differ >= 5 and differ >= 0.15 * ((drawn[a] > 0) | (drawn[b] > 0)).sum(), (a, b)


def test_larger_images(tmp_path: Path) -> None:
    config = WorldConfig(seed=0, num_train_images=4, num_eval_images=2, image_size=96)
    result = generate_world(config, tmp_path, progress=False)
    annotation = read_jsonl(Path(result["train"]["annotations"]))[0]
    with Image.open(Path(result["train"]["annotations"]).parent / annotation["image"]) as image:
        assert image.size == (96, 96)
    assert max(max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in annotation["objects"]) >= 18


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="companion_probability"):
        WorldConfig(companion_probability=1.5)
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=6)
    with pytest.raises(ValueError, match="image_size"):
        WorldConfig(image_size=8)
    with pytest.raises(ValueError, match="typical_color_probability"):
        WorldConfig(typical_color_probability=-0.1)
