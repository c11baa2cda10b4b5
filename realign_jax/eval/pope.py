"""POPE (Li et al., EMNLP 2023): yes/no object probing, "Is there a/an {obj} in the image?".

Everything here follows the official code, checked line by line:
- answer parsing and metrics: RUCAIBox/POPE (originally AoiDragon/POPE) `evaluate.py`;
- question sets: the same repository's `utils.py` (`pope`, `create_question`,
  `generate_ground_truth_objects`, `compute_co_occurrence`) and `main.py`.
Differences from that code are listed in the docstrings that make them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from realign_jax.data.images import check_regular_file
from realign_jax.data.jsonl import json_objects
from realign_jax.data.prompting import IMAGE_PLACEHOLDER

SPLITS = ("random", "popular", "adversarial")
TEMPLATE = "Is there {article} {obj} in the image?"
REQUIRED_FIELDS = ("question_id", "image", "text", "label")


def parse_answer(text: str) -> str:
    """'yes' or 'no' by POPE's rule, verbatim from `evaluate.py`.

    Keep the text before the first '.', drop commas, split on single spaces; any of the exact
    words 'No', 'not', 'no' means no, anything else yes. It is case-sensitive and splits on ' '
    only, so "Nope", "NO", "Not sure" and "no\\n" all count as yes, as they do in the official
    script. An empty answer is also yes: the official code gives `''.split(' ') == ['']`,
    which holds none of the three words (we keep that, so numbers match published ones).
    """
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def confusion_metrics(predictions: Sequence[str], labels: Sequence[str], positive: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and the confusion counts with `positive` as the positive class.

    One function for POPE (positive 'yes') and AMBER (positive 'no'). A prediction outside
    the two classes (AMBER's strict parsing) is never positive and never correct. When a ratio
    is undefined (no positive predictions, no positive labels, or precision + recall == 0) it
    is 0.0: the official POPE script would raise ZeroDivisionError there; forks of it that
    guard the division use 0 too.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no predictions to score")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels):
        if pred == positive:
            tp, fp = tp + (label == positive), fp + (label != positive)
        elif label == positive:
            fn += 1
        elif pred == label:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(labels)}


def check_labels(labels: Iterable[str]) -> list[str]:
    """Labels must be 'yes'/'no' (the official script silently counts anything not 'no' as yes)."""
    out = []
    for i, label in enumerate(labels):
        if label not in ("yes", "no"):
            raise ValueError(f"label {i} is {label!r}; expected 'yes' or 'no'")
        out.append(label)
    return out


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 (yes positive) and yes_ratio of the PREDICTIONS.

    `predictions` are raw model answers (already parsed 'yes'/'no' work too: they parse to
    themselves); each goes through `parse_answer`. See `confusion_metrics` for undefined ratios.
    """
    parsed = [parse_answer(p) for p in predictions]
    out = confusion_metrics(parsed, check_labels(labels), positive="yes")
    out["yes_ratio"] = parsed.count("yes") / len(parsed)
    return out


def question_text(obj: str) -> str:
    """The POPE question; 'an' before a vowel-initial name, as `create_question` decides.

    The official code makes the 'an' template with `template.replace("a", "an")`, which would
    also turn "image" into "imange"; the published files read "in the image", as here.
    """
    return TEMPLATE.format(article="an" if obj[:1] in ("a", "e", "i", "o", "u") else "a", obj=obj)


def _ranked(counts: Mapping[str, int]) -> list[str]:
    """Keys by count, descending; ties keep first-seen order (Python's stable sort, as POPE's `sorted`)."""
    return [k for k, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)]


def object_statistics(images: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """Objects by frequency over `images` and, per object, its co-occurring objects by count.

    Computed over the images given, as POPE computes them over its sampled images
    (`generate_ground_truth_objects`, `compute_co_occurrence`). Objects repeated within one
    image count once here (the official code would count repeats; its inputs have none).
    """
    frequency: dict[str, int] = {}
    co_occur: dict[str, dict[str, int]] = {}
    for image in images:
        objects = list(dict.fromkeys(image["objects"]))
        for o in objects:
            frequency[o] = frequency.get(o, 0) + 1
            row = co_occur.setdefault(o, {})
            for other in objects:
                if other != o:
                    row[other] = row.get(other, 0) + 1
    return _ranked(frequency), {o: _ranked(row) for o, row in co_occur.items()}


def build_questions(images: Sequence[Mapping[str, Any]], split: str, *, seed: int, per_image: int = 3,
                    companions: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """POPE questions for one split, as POPE's `utils.pope` builds them.

    Per image: the first `per_image` objects in their listed order (label yes), each followed by
    one negative (label no) that is absent from the image and not yet asked about for it:
    - random: uniform over the absent objects of the whole set;
    - popular: the most frequent object of the set still available;
    - adversarial: the object that co-occurs most with that positive one (`companions`, a
      ranked list per object, replaces the counts from `images` when given).
    When popular/adversarial find no candidate, the negative is drawn at random, as officially.
    Question ids run from 0 as in the published files (the official builder starts at 1).
    Differences: an image with fewer than `per_image` objects gives all it has (POPE's `main.py`
    drops such images beforehand; filter them yourself to match); if no absent object remains
    we raise ValueError where the official loop would never end.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {SPLITS}")
    rng = random.Random(seed)
    by_frequency, co_occur = object_statistics(images)
    ranked = co_occur if companions is None else companions
    questions: list[dict[str, Any]] = []

    def ask(image: str, obj: str, label: str) -> None:
        questions.append({"question_id": len(questions), "image": image, "text": question_text(obj),
                          "label": label, "object": obj, "split": split})

    for image in images:
        present = set(image["objects"])
        used: list[str] = []
        for pos in list(dict.fromkeys(image["objects"]))[:per_image]:
            used.append(pos)
            ask(image["image"], pos, "yes")
            free = [o for o in by_frequency if o not in present and o not in used]
            if not free:
                raise ValueError(f"image {image['image']!r}: no absent object left to ask about")
            if split == "popular":
                neg = free[0]
            elif split == "adversarial":
                neg = next((o for o in ranked.get(pos, ()) if o not in present and o not in used), None)
                neg = neg if neg is not None else rng.choice(sorted(free))
            else:
                neg = rng.choice(sorted(free))
            used.append(neg)
            ask(image["image"], neg, "no")
    return questions


def read_pope_file(path: str, image_folder: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for each question of a published POPE file (JSON lines despite the .json
    name), where = "<path>, line <n>": an image that fails to decode later, during answering,
    can still be named by its line (eval/suite.py).

    Each record keeps its fields (e.g. `image_id`); a relative `image` is joined onto
    `image_folder`, or onto the file's own folder when that is empty (as JSONL records resolve),
    never onto the current directory. A bad line, a missing image file or a `text` holding the
    image placeholder raises ValueError naming the file, the line and the field, before any
    model runs.
    """
    root = image_folder or os.path.dirname(os.path.abspath(path))
    located = []
    for where, record in json_objects(path):
        _check_fields(where, record)
        record["image"] = _image_file(where, root, record["image"])
        located.append((where, record))
    return located


def _check_fields(where: str, record: dict[str, Any]) -> None:
    """Refuse a question the prompt or the metrics cannot take, before a model is loaded."""
    for field in REQUIRED_FIELDS:
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r}")
    if not isinstance(record["question_id"], (int, str)) or isinstance(record["question_id"], bool):
        raise ValueError(f"{where}: field 'question_id' must be an integer or string")
    for field in ("image", "text"):
        if not isinstance(record[field], str) or not record[field]:
            raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    if IMAGE_PLACEHOLDER in record["text"]:
        raise ValueError(f"{where}: field 'text' must not hold the image placeholder {IMAGE_PLACEHOLDER} "
                         "(the prompt puts the image before the question)")
    if record["label"] not in ("yes", "no"):
        raise ValueError(f"{where}: field 'label' is {record['label']!r}; expected 'yes' or 'no'")


def _image_file(where: str, root: str, name: str) -> str:
    """`name` resolved against `root`, checked to be a plain, non-empty file now (decoding waits
    for answering: a whole file's images would take long to decode twice)."""
    image = os.path.join(root, name)
    try:
        check_regular_file(image)
    except ValueError as error:
        raise ValueError(f"{where}: field 'image': {error}") from None
    return image
