"""The world's ground truth in the forms the evaluators take: per-image object lists (POPE,
CHAIR) and AMBER-style yes/no questions by type (existence, attribute, relation, count).

AMBER's discriminative questions are balanced yes/no probes; here each eval image gets one
of each type the image supports, half with a true and half with a false statement, and the
false existence probes prefer the missing companion of a present anchor (the prior's error).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from realign_jax.data.text import NUMBER_WORDS, plural, with_article
from realign_jax.synthetic.language import OPPOSITE_RELATION, RELATION_PHRASES
from realign_jax.synthetic.scenes import anchors_without_companion
from realign_jax.synthetic.truth import ImageTruth
from realign_jax.synthetic.vocabulary import BY_NAME, CATEGORIES, COLORS


def load_truth(world: str, split: str = "eval") -> list[ImageTruth]:
    path = os.path.join(world, split, "annotations.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no world split there (generate one with `python -m realign_jax.synthetic`)")
    with open(path) as f:
        return [ImageTruth.from_json(json.loads(line)) for line in f if line.strip()]


def object_lists(world: str, split: str = "eval") -> list[dict[str, Any]]:
    """[{"image": absolute path, "objects": [canonical names, first-seen order, no repeats]}]."""
    folder = os.path.join(os.path.abspath(world), split)
    return [{"image": os.path.join(folder, t.image), "objects": list(dict.fromkeys(t.names))}
            for t in load_truth(world, split)]


def _existence(truth: ImageTruth, rng: np.random.Generator, want_yes: bool) -> tuple[str, str]:
    present = list(dict.fromkeys(truth.names))
    if want_yes:
        return str(rng.choice(present)), "yes"
    missing = [BY_NAME[anchor].partner for anchor in anchors_without_companion(truth.names)]
    absent = missing or [c.name for c in CATEGORIES if c.name not in present]
    return str(rng.choice(absent)), "no"


def amber_questions(world: str, *, seed: int = 0, split: str = "eval") -> list[dict[str, Any]]:
    """[{"image", "text", "label": yes|no, "type": existence|attribute|relation|count}]."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(os.path.abspath(world), split)
    questions: list[dict[str, Any]] = []
    for truth in load_truth(world, split):
        image = os.path.join(folder, truth.image)
        counts = truth.counts

        def add(kind: str, text: str, label: str) -> None:
            questions.append({"image": image, "text": text, "label": label, "type": kind})

        name, label = _existence(truth, rng, rng.random() < 0.5)
        add("existence", f"Is there {with_article(name)} in the image?", label)
        single = [o for o in truth.objects if counts[o.name] == 1]
        if single:
            obj = single[int(rng.integers(len(single)))]
            yes = rng.random() < 0.5
            color = obj.color if yes else str(rng.choice([c for c in COLORS if c != obj.color]))
            add("attribute", f"Is the {obj.name} {color}?", "yes" if yes else "no")
        pairs = [(i, r, j) for i, r, j in truth.relations
                 if counts[truth.objects[i].name] == 1 and counts[truth.objects[j].name] == 1]
        if pairs:
            i, relation, j = pairs[int(rng.integers(len(pairs)))]
            holding = {r for a, r, b in truth.relations if (a, b) == (i, j)}
            asked = relation if rng.random() < 0.5 else OPPOSITE_RELATION[relation]
            a, b = truth.objects[i].name, truth.objects[j].name
            add("relation", f"Is the {a} {RELATION_PHRASES[asked]} the {b}?", "yes" if asked in holding else "no")
        name = str(rng.choice(list(counts)))
        n = counts[name] if rng.random() < 0.5 else counts[name] % 3 + 1  # the true count or another one
        noun = name if n == 1 else plural(name)
        verb = "Is there" if n == 1 else "Are there"
        add("count", f"{verb} {NUMBER_WORDS[n]} {noun} in the image?", "yes" if n == counts[name] else "no")
    return questions
