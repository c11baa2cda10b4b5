"""`generate_world(config, out_dir)`: draws both splits, writes their ground truth and SFT
records, the CHAIR synonym table, the tokenizer and `world.json`.

Layout of `out_dir`:

    world.json             config, categories, companions, synonyms, colours, split stats
    synonyms.txt           CHAIR format: "canonical, syn1, syn2, ..." per line
    tokenizer/             tokenizer.json + tokenizer_config.json (chat template inside)
    train/ and eval/       images/NNNNNN.png, annotations.jsonl, sft.jsonl (paths relative to the split),
                           and the grounding curriculum: captions.jsonl (captions only), then
                           grounding.jsonl (captions + dense balanced existence questions)

Every image has its own random streams, derived from (seed, split, index), one for the scene
and one for its text, so a world is byte-identical for a seed whatever else changes in the
run. Eval images identical to a train image (possible only for tiny images) are redrawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from realign_jax.files import changed_keys
from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.render import render
from realign_jax.synthetic.scenes import anchors_without_companion, sample_scene
from realign_jax.synthetic.sft_records import existence_records, image_records
from realign_jax.synthetic.truth import ImageTruth, ObjectTruth, relations
from realign_jax.synthetic.vocabulary import (
    CATEGORIES,
    COLORS,
    COMPANIONS,
    POSITIONS,
    RELATIONS,
    SIZES,
    check_vocabulary,
    plural,
    synonym_lines,
)

SPLITS: tuple[str, ...] = ("train", "eval")
_STREAM_SCENE, _STREAM_TEXT, _STREAM_GROUNDING = 0, 1, 2
_OUTPUTS = ("world.json", "synonyms.txt", "tokenizer", *SPLITS)
_ANCHORS = frozenset(a for a, _ in COMPANIONS)


def _draw_split(config: WorldConfig, split: str, count: int, folder: Path, taken: set[bytes],
                progress: bool) -> list[ImageTruth]:
    """Images of one split, written as PNG; `taken` holds the pixel hashes of earlier splits."""
    split_index = SPLITS.index(split)
    spec = config.sampling(split)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    truths = []
    hashes = set()
    for index in tqdm(range(count), desc=f"drawing {split} images", disable=not progress, unit="img"):
        for attempt in range(100):
            rng = np.random.default_rng([config.seed, split_index, index, _STREAM_SCENE, attempt])
            scene = sample_scene(rng, spec)
            image, boxes = render(scene, config.image_size, config.resolved_supersample)
            digest = hashlib.sha1(image.tobytes()).digest()
            if digest not in taken:
                break
        hashes.add(digest)
        relative = f"images/{index:06d}.png"
        image.save(folder / relative, format="PNG")
        objects = tuple(ObjectTruth(o.name, o.color, o.size, o.position, box)
                        for o, box in zip(scene.objects, boxes, strict=True))
        truths.append(ImageTruth(f"{split}-{index:06d}", relative, objects, relations(boxes, config.image_size),
                                 scene.background.kind))
    taken.update(hashes)
    return truths


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _split_records(config: WorldConfig, split: str, truths: list[ImageTruth]) -> list[dict[str, Any]]:
    split_index = SPLITS.index(split)
    records = []
    for index, truth in enumerate(truths):
        rng = np.random.default_rng([config.seed, split_index, index, _STREAM_TEXT])
        records.extend(image_records(truth, rng, config.captions_per_image, config.attribute_probability,
                                     config.relation_probability, config.absent_companion_question_rate))
    return records


def _grounding_records(config: WorldConfig, split: str, truths: list[ImageTruth],
                       captions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The split's captions plus `grounding_exist_pairs` existence pairs per image (own stream,
    so sft.jsonl does not change with it)."""
    split_index = SPLITS.index(split)
    out = list(captions)
    for index, truth in enumerate(truths):
        rng = np.random.default_rng([config.seed, split_index, index, _STREAM_GROUNDING])
        out.extend(existence_records(truth, rng, config.grounding_exist_pairs))
    return out


def split_stats(truths: list[ImageTruth], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts that show the co-occurrence structure and the balance of the text."""
    anchor_images = with_companion = probe_images = 0
    for truth in truths:
        names = truth.names
        anchors = [n for n in dict.fromkeys(names) if n in _ANCHORS]
        anchor_images += len(anchors)
        missing = anchors_without_companion(names)
        with_companion += len(anchors) - len(missing)
        probe_images += bool(missing)
    tasks = Counter(r["provenance"]["task"] for r in records)
    labels = Counter(r["provenance"]["label"] for r in records if r["provenance"]["task"] == "exist")
    return {
        "images": len(truths),
        "objects": sum(len(t.objects) for t in truths),
        "objects_per_image": dict(sorted(Counter(len(t.objects) for t in truths).items())),
        "records": len(records),
        "records_by_task": dict(sorted(tasks.items())),
        "exist_answers": dict(sorted(labels.items())),
        "anchor_occurrences": anchor_images,
        "companion_rate": with_companion / anchor_images if anchor_images else None,
        "images_with_anchor_without_companion": probe_images,
        "backgrounds": dict(sorted(Counter(t.background for t in truths).items())),
    }


def _lexicon() -> list[str]:
    """Every word the world can say, so the tokenizer never meets an unseen character."""
    words = [w for c in CATEGORIES for word in c.words for w in (word, plural(word))]
    return [" ".join(words), " ".join([*COLORS, *SIZES, *POSITIONS, *RELATIONS])]


def _clear(out: Path, overwrite: bool) -> None:
    existing = [name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a world ({', '.join(existing)}); pass overwrite=True")
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def world_metadata(config: WorldConfig) -> dict[str, Any]:
    """The vocabulary and structure of the world (what evaluators need besides the splits)."""
    return {
        "config": config.to_json(),
        "categories": [{"name": c.name, "role": c.role, "partner": c.partner, "synonyms": list(c.synonyms)}
                       for c in CATEGORIES],
        "companions": [list(pair) for pair in COMPANIONS],
        "synonyms": {c.name: [f for w in c.words for f in (w, plural(w))] for c in CATEGORIES},
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
        "relations": list(RELATIONS),
        "box_format": "[x0, y0, x1, y1] in pixels, x1 and y1 exclusive",
    }


def generate_world(config: WorldConfig, out_dir: str | os.PathLike[str], *, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write a whole world to `out_dir`; returns its paths, counts and the seconds it took."""
    from realign_jax.synthetic.tokenizer import conversation_text, save_tokenizer, train_tokenizer

    start = time.perf_counter()
    check_vocabulary()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)
    taken: set[bytes] = set()
    result: dict[str, Any] = {"out_dir": str(out)}
    texts: list[str] = _lexicon()
    stats = {}
    for split, count in (("train", config.num_train_images), ("eval", config.num_eval_images)):
        folder = out / split
        truths = _draw_split(config, split, count, folder, taken, progress)
        records = _split_records(config, split, truths)
        _write_jsonl(folder / "annotations.jsonl", (t.to_json() for t in truths))
        _write_jsonl(folder / "sft.jsonl", records)
        captions = [r for r in records if r["provenance"]["task"] == "caption"]
        _write_jsonl(folder / "captions.jsonl", captions)
        _write_jsonl(folder / "grounding.jsonl", _grounding_records(config, split, truths, captions))
        texts.extend(conversation_text(r["question"], r["chosen"]) for r in records)
        stats[split] = split_stats(truths, records)
        result[split] = {"images": str(folder / "images"), "annotations": str(folder / "annotations.jsonl"),
                         "sft": str(folder / "sft.jsonl"), "num_images": len(truths), "num_records": len(records)}
    (out / "synonyms.txt").write_text("\n".join(synonym_lines()) + "\n", encoding="utf-8")
    tokenizer = train_tokenizer(texts, config.tokenizer_vocab_size)
    save_tokenizer(tokenizer, out / "tokenizer")
    tokenizer_info = {"path": "tokenizer", "vocab_size": len(tokenizer),
                      "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
                      "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                      "pad_token_id": tokenizer.pad_token_id, "unk_token_id": tokenizer.unk_token_id}
    metadata = {**world_metadata(config), "tokenizer": tokenizer_info, "stats": stats,
                "splits": {s: {k: os.path.relpath(v, out) for k, v in result[s].items() if isinstance(v, str)}
                           for s in SPLITS}}
    (out / "world.json").write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    result.update(world=str(out / "world.json"), synonyms=str(out / "synonyms.txt"), tokenizer=str(out / "tokenizer"),
                  tokenizer_info=tokenizer_info, stats=stats, seconds=time.perf_counter() - start)
    return result


def ensure_world(config: WorldConfig, out_dir: str | os.PathLike[str]) -> str:
    """The world folder: generated unless the same world (same config) is already there."""
    meta = Path(out_dir) / "world.json"
    if meta.is_file():
        existing, wanted = json.loads(meta.read_text())["config"], config.to_json()
        changed = changed_keys(existing, wanted)
        if changed:
            raise ValueError(f"{out_dir} holds a different world (keys {changed} differ); delete it or point "
                             "world.dir elsewhere")
        return str(out_dir)
    generate_world(config, out_dir)
    return str(out_dir)
