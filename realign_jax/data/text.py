"""English word helpers shared by the world, the evaluators and the pair builders: articles,
plurals and singulars, number words, colour and size words, relation phrases and their
opposites, yes/no verdicts, and CHAIR's synonym tables (docs/design.md, "Rooms and who may
import whom": they live in data/ so that synthetic/, eval/ and pairs/ can all read them).

Nothing here knows a particular data set: the world's own phrasing (which relation phrase
it writes, its synonyms) stays in synthetic/, and what a data set uses is learnt from its
text by the builders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# --- articles, capitals, lists -------------------------------------------------------------

_VOWELS = ("a", "e", "i", "o", "u")


def article(word: str) -> str:
    """'a' or 'an' for the word that follows it (by its first letter, as the world writes them)."""
    return "an" if word[:1].lower() in _VOWELS else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def cased(like: str, word: str) -> str:
    """`word` capitalised when `like` (the word it replaces) is."""
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def join_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


# --- words, plurals, singulars -------------------------------------------------------------

WORD_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # CHAIR's words: letters, digits, inner hyphens


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner hyphens); punctuation dropped, "dog's" -> dog, s."""
    return WORD_RE.findall(text.lower())


# `plural` and `singularize` keep their own irregular tables: each is what its users were
# built and tested with (the world's nouns; the irregular nouns COCO needs).
_IRREGULAR_PLURALS = {"knife": "knives", "gateau": "gateaux"}
_IRREGULAR_SINGULARS = {"people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot",
                        "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife",
                        "wives": "wife", "lives": "life", "leaves": "leaf", "loaves": "loaf", "scarves": "scarf",
                        "hooves": "hoof", "buses": "bus", "busses": "bus", "dice": "die", "cacti": "cactus",
                        "tvs": "tv"}  # three letters, below the suffix rules' reach
_UNINFLECTED = {"sheep", "deer", "fish", "scissors", "series", "species", "bison", "pants", "jeans"}


def plural(word: str) -> str:
    """English plural of a (possibly two-word) noun; only the last word inflects."""
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        inflected = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "sh", "ch", "x")):
        inflected = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        inflected = last[:-1] + "ies"
    else:
        inflected = last + "s"
    return f"{head} {inflected}" if head else inflected


def singularize(word: str) -> str:
    """A small stand-in for `pattern.en.singularize`: irregular nouns, then suffix rules."""
    if word in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[word]
    if word.endswith("men") and len(word) > 4:  # policemen, firemen, sportsmen
        return word[:-3] + "man"
    if word in _UNINFLECTED or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("lves"):
        return word[:-3] + "f"
    if word.endswith(("ches", "shes", "sses", "xes", "zzes")):
        return word[:-2]
    return word[:-1]


def singular_phrase(text: str) -> str:
    """The text's words, singularised and joined by single spaces: the key synonym tables match on."""
    return " ".join(singularize(w) for w in tokenize(text))


# --- synonym tables ------------------------------------------------------------------------


def load_synonyms(path: str) -> dict[str, list[str]]:
    """CHAIR's `synonyms.txt`: each line 'canonical, syn1, syn2, ...' -> {canonical: [syns]}."""
    table: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            names = [n.strip() for n in line.split(",") if n.strip()]
            if names:
                table.setdefault(names[0], []).extend(names[1:])
    return table


def synonym_lookup(synonyms: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Singularised surface form -> canonical; a later line wins, as in CHAIR's official dict."""
    inverse = {}
    for canonical, names in synonyms.items():
        for name in (canonical, *names):
            inverse[singular_phrase(name)] = canonical
    return inverse


# --- numbers, attributes, relations, verdicts ---------------------------------------------

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                 "ten", "eleven", "twelve")
NUMBER_VALUES: dict[str, int] = {**{w: i for i, w in enumerate(NUMBER_WORDS)},
                                 "no": 0}  # "there are no cups" is a count of zero


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


COLOR_WORDS = frozenset(("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
                         "gray", "grey", "silver", "gold", "beige"))
SIZE_WORDS = frozenset(("small", "large", "big", "little", "tiny", "huge", "giant"))
ATTRIBUTE_WORDS = COLOR_WORDS | SIZE_WORDS

_OPPOSITE_PAIRS = (("to the left of", "to the right of"), ("on the left of", "on the right of"),
                   ("left of", "right of"), ("above", "below"), ("on top of", "under"), ("in front of", "behind"),
                   ("inside", "outside"), ("on the left", "on the right"), ("at the top", "at the bottom"))
OPPOSITE: dict[str, str] = {**dict(_OPPOSITE_PAIRS), **{b: a for a, b in _OPPOSITE_PAIRS}}
CENTRE_PHRASES = ("in the center", "in the centre", "in the middle")  # no opposite
SIDE_PHRASES = ("on the left", "on the right", "at the top", "at the bottom")

VERDICT_RE = re.compile(r"\s*(yes|no)\b(?=\s*(?:[,.!;:]|$))", re.IGNORECASE)  # a leading yes/no verdict
