"""The world's own phrasing, shared by captions and questions: position and relation phrases,
background words, counts, and the choice of a synonym. General English (articles, plurals,
number words, lists) is data/text.py's.

Varying the word for an object (cup / mug / teacup) is what makes the synonym table matter:
CHAIR must map every surface form back to the canonical category.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from realign_jax.data.text import OPPOSITE, number_word, plural
from realign_jax.synthetic.vocabulary import BY_NAME, RELATIONS

POSITION_PHRASES: dict[str, str] = {"left": "on the left", "right": "on the right", "top": "at the top",
                                    "bottom": "at the bottom", "center": "in the center"}
RELATION_PHRASES: dict[str, str] = {"left of": "to the left of", "right of": "to the right of",
                                    "above": "above", "below": "below"}
OPPOSITE_RELATION: dict[str, str] = {relation: OPPOSITE[relation] for relation in RELATIONS}
BACKGROUND_WORDS: dict[str, str] = {"solid": "plain", "gradient": "gradient", "noise": "textured"}


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def word_for(name: str, rng: np.random.Generator, canonical_probability: float = 0.5) -> str:
    """The canonical name, or (otherwise) one of its synonyms."""
    synonyms = BY_NAME[name].synonyms
    if not synonyms or rng.random() < canonical_probability:
        return name
    return pick(rng, synonyms)


def count_phrase(n: int, word: str) -> str:
    """'one cup', 'two cups', 'no cups'."""
    if n == 0:
        return f"no {plural(word)}"
    return f"{number_word(n)} {word if n == 1 else plural(word)}"
