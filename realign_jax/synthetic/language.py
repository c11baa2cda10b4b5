"""Small English helpers shared by captions and questions: articles, number words, lists,
position and relation phrases, and the choice of a synonym.

Varying the word for an object (cup / mug / teacup) is what makes the synonym table matter:
CHAIR must map every surface form back to the canonical category.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from realign_jax.synthetic.vocabulary import BY_NAME, plural

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
POSITION_PHRASES: dict[str, str] = {"left": "on the left", "right": "on the right", "top": "at the top",
                                    "bottom": "at the bottom", "center": "in the center"}
RELATION_PHRASES: dict[str, str] = {"left of": "to the left of", "right of": "to the right of",
                                    "above": "above", "below": "below"}
OPPOSITE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below",
                                     "below": "above"}
BACKGROUND_WORDS: dict[str, str] = {"solid": "plain", "gradient": "gradient", "noise": "textured"}


def with_article(phrase: str) -> str:
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def join_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


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
