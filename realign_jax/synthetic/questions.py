"""Question-answer pairs about one image: existence (yes and no, one of each per image, so the
answers are balanced), attribute (colour, size, position), count and relation.

"No" existence questions prefer the missing companion of a present anchor ("Is there a
saucer?" when only the cup is there): that is the answer a language prior gets wrong, so the
data holds the evidence against it. Answers start with "Yes" / "No" and put the verdict
before the first '.', which is all POPE's parser reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from realign_jax.data.text import capitalize, join_list, number_word, plural, with_article
from realign_jax.synthetic.language import (
    OPPOSITE_RELATION,
    POSITION_PHRASES,
    RELATION_PHRASES,
    count_phrase,
    pick,
    word_for,
)
from realign_jax.synthetic.scenes import anchors_without_companion
from realign_jax.synthetic.truth import ImageTruth
from realign_jax.synthetic.vocabulary import BY_NAME, CATEGORIES

POPE_QUESTION = "Is there {} in the image?"  # POPE's wording, with the article
_EXIST_QUESTIONS = (POPE_QUESTION, POPE_QUESTION, "Is there {} in this picture?", "Does the image contain {}?",
                    "Can you see {} in the image?")


@dataclass(frozen=True)
class QA:
    task: str  # exist | color | size | position | count | relation
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def _unique(truth: ImageTruth) -> list[int]:
    """Indices of objects whose category appears once, so 'the cup' names one object."""
    counts = truth.counts
    return [i for i, o in enumerate(truth.objects) if counts[o.name] == 1]


def exist_yes(truth: ImageTruth, rng: np.random.Generator) -> QA:
    name = pick(rng, list(truth.counts))
    word = word_for(name, rng)
    answer = f"Yes, there is {with_article(word)} in the image."
    if truth.counts[name] == 1 and rng.random() < 0.5:
        obj = next(o for o in truth.objects if o.name == name)
        answer = f"Yes, there is {with_article(f'{obj.color} {word}')} {POSITION_PHRASES[obj.position]}."
    elif truth.counts[name] > 1 and rng.random() < 0.5:
        answer = f"Yes, there are {count_phrase(truth.counts[name], word)} in the image."
    question = pick(rng, _EXIST_QUESTIONS).format(with_article(word))
    return QA("exist", question, answer, {"object": name, "label": "yes"})


def exist_no(truth: ImageTruth, rng: np.random.Generator, absent_companion_rate: float) -> QA:
    missing = [str(BY_NAME[a].partner) for a in anchors_without_companion(truth.names)]
    from_prior = bool(missing) and rng.random() < absent_companion_rate
    if from_prior:
        name = pick(rng, missing)
    else:
        present = set(truth.names)
        name = pick(rng, [c.name for c in CATEGORIES if c.name not in present])
    word = word_for(name, rng)
    question = pick(rng, _EXIST_QUESTIONS).format(with_article(word))
    return QA("exist", question, f"No, there is no {word} in the image.",
              {"object": name, "label": "no", "absent_companion": name in missing})


def attribute(truth: ImageTruth, rng: np.random.Generator) -> QA | None:
    unique = _unique(truth)
    if not unique:
        return None
    obj = truth.objects[unique[int(rng.integers(len(unique)))]]
    word = word_for(obj.name, rng)
    kind = pick(rng, ("color", "size", "position"))
    if kind == "color":
        question = pick(rng, (f"What color is the {word}?", f"What is the color of the {word}?"))
        answer = f"The {word} is {obj.color}."
    elif kind == "size":
        question = pick(rng, (f"Is the {word} small or large?", f"What size is the {word}?"))
        answer = f"The {word} is {obj.size}."
    else:
        question = pick(rng, (f"Where is the {word}?", f"Where is the {word} in the image?"))
        answer = f"The {word} is {POSITION_PHRASES[obj.position]}."
    return QA(kind, question, answer, {"object": obj.name})


def count(truth: ImageTruth, rng: np.random.Generator) -> QA:
    roll = rng.random()
    if roll < 0.2:
        n = len(truth.objects)
        answer = "There is one object." if n == 1 else f"There are {number_word(n)} objects."
        return QA("count", "How many objects are there in the image?", answer, {"object": None, "count": n})
    if roll < 0.35:
        present = set(truth.names)
        name = pick(rng, [c.name for c in CATEGORIES if c.name not in present])
    else:
        name = pick(rng, list(truth.counts))
    n = truth.counts.get(name, 0)
    word = word_for(name, rng)
    question = pick(rng, (f"How many {plural(word)} are there in the image?", f"How many {plural(word)} are there?"))
    verb = "is" if n == 1 else "are"
    return QA("count", question, f"There {verb} {count_phrase(n, word)}.", {"object": name, "count": n})


def relation(truth: ImageTruth, rng: np.random.Generator) -> QA | None:
    unique = set(_unique(truth))
    pairs = sorted({(i, j) for i, _, j in truth.relations if i in unique and j in unique})
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    holding = [r for a, r, b in truth.relations if (a, b) == (i, j)]
    name_a, name_b = truth.objects[i].name, truth.objects[j].name
    a, b = word_for(name_a, rng), word_for(name_b, rng)
    meta = {"object": name_a, "other": name_b}
    if rng.random() < 0.5:
        asked = pick(rng, holding)
        if rng.random() < 0.5:
            question = f"Is the {a} {RELATION_PHRASES[asked]} the {b}?"
            return QA("relation", question, f"Yes, the {a} is {RELATION_PHRASES[asked]} the {b}.",
                      {**meta, "label": "yes"})
        question = f"Is the {a} {RELATION_PHRASES[OPPOSITE_RELATION[asked]]} the {b}?"
        return QA("relation", question, f"No, the {a} is {RELATION_PHRASES[asked]} the {b}.", {**meta, "label": "no"})
    question = pick(rng, (f"Where is the {a} relative to the {b}?", f"Where is the {a} compared to the {b}?"))
    answer = capitalize(f"the {a} is {join_list([RELATION_PHRASES[r] for r in holding])} the {b}.")
    return QA("relation", question, answer, meta)


def questions(truth: ImageTruth, rng: np.random.Generator, absent_companion_rate: float) -> list[QA]:
    """One question of each kind that the image supports, in a fixed order."""
    out = [exist_yes(truth, rng), exist_no(truth, rng, absent_companion_rate), attribute(truth, rng),
           count(truth, rng), relation(truth, rng)]
    return [qa for qa in out if qa is not None]
