"""The world's nouns and adjectives: object categories with synonyms, companion pairs,
colours (and each category's typical colour), sizes and positions.

Everything text-side (captions, QA, the CHAIR synonym table, the tokenizer's corpus) reads
the words from here, so a category is added in one place. Companion pairs are the
co-occurrence structure the world's language prior is built from: an anchor (cup) usually
appears with its companion (saucer), which is exactly what POPE-adversarial and CHAIR probe
when the companion is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from realign_jax.data.text import plural

Role = Literal["anchor", "companion", "distractor"]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Category:
    """One object class: its canonical name, the other words for it, and its co-occurrence role."""

    name: str
    synonyms: tuple[str, ...]  # other singular words for it; the canonical name is not repeated
    role: Role
    partner: str | None = None  # the companion of an anchor, the anchor of a companion

    @property
    def words(self) -> tuple[str, ...]:
        """Canonical name first, then the synonyms (all singular)."""
        return (self.name, *self.synonyms)


# Anchor -> companion: "an image with an anchor usually also holds its companion".
COMPANIONS: tuple[tuple[str, str], ...] = (
    ("cup", "saucer"),
    ("dog", "leash"),
    ("car", "traffic light"),
    ("key", "lock"),
    ("fork", "knife"),
    ("flower", "vase"),
    ("cake", "candle"),
    ("umbrella", "cloud"),
    ("racket", "ball"),
    ("boat", "lighthouse"),
    ("bird", "cage"),
    ("pencil", "book"),
    ("moon", "star"),
)

# Objects with no companion: they make the absent objects of POPE-random less predictable.
DISTRACTORS: tuple[str, ...] = ("tree", "house", "apple", "hat", "clock", "bottle", "chair", "bell")

# Synonyms never share a word with another category's (CHAIR maps words back one to one),
# and none is a word the caption/QA templates use for something else.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "cup": ("mug", "teacup"),
    "saucer": ("dish", "plate"),
    "dog": ("puppy", "hound"),
    "leash": ("tether",),
    "car": ("automobile", "sedan"),
    "traffic light": ("stoplight", "traffic signal"),
    "key": ("door key",),
    "lock": ("padlock",),
    "fork": ("dinner fork",),
    "knife": ("blade",),
    "flower": ("blossom", "bloom"),
    "vase": ("urn", "jar"),
    "cake": ("birthday cake", "gateau"),
    "candle": ("taper",),
    "umbrella": ("parasol",),
    "cloud": ("raincloud",),
    "racket": ("racquet", "tennis racket"),
    "ball": ("tennis ball",),
    "boat": ("ship", "sailboat"),
    "lighthouse": ("beacon",),
    "bird": ("songbird", "sparrow"),
    "cage": ("birdcage",),
    "pencil": ("crayon",),
    "book": ("notebook", "journal"),
    "moon": ("crescent", "crescent moon"),
    "star": (),
    "tree": ("pine", "fir"),
    "house": ("home", "cottage"),
    "apple": (),
    "hat": ("top hat",),
    "clock": ("timepiece",),
    "bottle": ("flask",),
    "chair": ("seat",),
    "bell": ("handbell",),
}

def _categories() -> tuple[Category, ...]:
    out = []
    for anchor, companion in COMPANIONS:
        out.append(Category(anchor, SYNONYMS[anchor], "anchor", companion))
        out.append(Category(companion, SYNONYMS[companion], "companion", anchor))
    out.extend(Category(name, SYNONYMS[name], "distractor") for name in DISTRACTORS)
    return tuple(out)


CATEGORIES: tuple[Category, ...] = _categories()
BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}

# Saturated object colours; backgrounds are muted and kept away from all of them (backgrounds.py).
COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 190),
    "pink": (250, 120, 190),
    "brown": (130, 80, 30),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
# Each category's usual colour, as real objects have one (apples are red). A from-scratch vision
# tower trained for minutes tells ten colours apart long before it tells 34 glyph shapes apart,
# so colour carries most of what the base model sees; shape only has to separate the 3-5
# categories that share a colour. An anchor and its companion never share one, so seeing an
# absent companion is never a colour confusion: saying it is there comes from the prior.
TYPICAL_COLORS: dict[str, str] = {
    "cup": "white", "saucer": "blue", "dog": "brown", "leash": "red", "car": "orange",
    "traffic light": "black", "key": "yellow", "lock": "purple", "fork": "black", "knife": "white",
    "flower": "pink", "vase": "blue", "cake": "brown", "candle": "yellow", "umbrella": "purple",
    "cloud": "white", "racket": "pink", "ball": "green", "boat": "blue", "lighthouse": "red",
    "bird": "yellow", "cage": "black", "pencil": "orange", "book": "green", "moon": "yellow",
    "star": "orange", "tree": "green", "house": "red", "apple": "red", "hat": "black",
    "clock": "white", "bottle": "green", "chair": "brown", "bell": "purple",
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def synonym_lines() -> list[str]:
    """The CHAIR synonym table: one line per category, canonical name first, then every other
    word for it, singular and plural ("cup, cups, mug, mugs, ..."), so no lemmatiser is needed."""
    lines = []
    for category in CATEGORIES:
        words: list[str] = []
        for word in category.words:
            words.extend((word, plural(word)))
        lines.append(", ".join(words))
    return lines


def check_vocabulary() -> None:
    """Every surface form names one category only (else CHAIR's mapping would be ambiguous), and
    every category has a typical colour that its companion does not share."""
    for category in CATEGORIES:
        if TYPICAL_COLORS.get(category.name) not in COLORS:
            raise ValueError(f"{category.name} needs a typical colour from {sorted(COLORS)}")
        if category.partner and TYPICAL_COLORS[category.name] == TYPICAL_COLORS[category.partner]:
            raise ValueError(f"{category.name} and its partner {category.partner} share their typical colour")
    seen: dict[str, str] = {}
    for category in CATEGORIES:
        for word in category.words:
            for form in (word, plural(word)):
                if seen.setdefault(form, category.name) != category.name:
                    raise ValueError(f"'{form}' names both {seen[form]} and {category.name}")
