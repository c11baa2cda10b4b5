"""What one image shows, sampled before anything is drawn: categories with the world's
co-occurrence structure, a colour (usually the category's typical one), size and slot per
object, and a background.

The co-occurrence rule is exact: whenever an anchor is picked its companion is added with
probability `companion_probability`, and nothing else can bring the companion in (it leaves
the pool while its anchor is present, and an anchor cannot join once its companion is there).
So P(companion present | anchor present) is that probability, for train (strong, the language
prior) and eval (weak, to probe the prior) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from realign_jax.synthetic.backgrounds import Background, sample_background
from realign_jax.synthetic.layout import MAX_OBJECTS, place
from realign_jax.synthetic.vocabulary import BY_NAME, CATEGORIES, COLORS, TYPICAL_COLORS


@dataclass(frozen=True)
class SamplingSpec:
    """The knobs of scene sampling for one split."""

    min_objects: int = 1
    max_objects: int = 4
    companion_probability: float = 0.9
    duplicate_probability: float = 0.15  # a non-anchor object comes twice (counting questions)
    companion_weight: float = 0.5  # how often a companion is picked on its own, relative to the others
    typical_color_probability: float = 0.85  # an object has its category's typical colour, else any colour

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got "
                             f"{self.min_objects}, {self.max_objects}")
        if self.max_objects < 2:
            raise ValueError("max_objects must be at least 2 so that an anchor can come with its companion")
        for name in ("companion_probability", "duplicate_probability", "typical_color_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.companion_weight < 0:
            raise ValueError(f"companion_weight must be >= 0, got {self.companion_weight}")


@dataclass(frozen=True)
class SceneObject:
    name: str
    color: str
    size: str
    position: str
    cx: float  # centre and side of the object's square, fractions of the image side
    cy: float
    side: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background


_WEIGHT_BY_ROLE = {"anchor": 1.0, "distractor": 1.0}


def sample_categories(rng: np.random.Generator, spec: SamplingSpec) -> list[str]:
    """Object names for one image (a name repeats when an object comes twice)."""
    target = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    names: list[str] = []
    while len(names) < target:
        room = spec.max_objects - len(names)
        present = set(names)
        pool = [c for c in CATEGORIES if c.name not in present and c.partner not in present
                and (c.role != "anchor" or room >= 2)]
        weights = np.array([_WEIGHT_BY_ROLE.get(c.role, spec.companion_weight) for c in pool])
        if weights.sum() <= 0:
            weights = np.ones(len(pool))
        category = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        names.append(category.name)
        if category.role == "anchor":
            if rng.random() < spec.companion_probability:
                names.append(str(category.partner))
        elif room >= 2 and rng.random() < spec.duplicate_probability:
            names.append(category.name)
    return names


def sample_scene(rng: np.random.Generator, spec: SamplingSpec) -> Scene:
    """Categories, then attributes and slots, then a background that contrasts with the objects."""
    names = sample_categories(rng, spec)
    names = [names[i] for i in rng.permutation(len(names))]
    color_names = list(COLORS)
    colors = [TYPICAL_COLORS[name] if rng.random() < spec.typical_color_probability
              else color_names[int(rng.integers(len(color_names)))] for name in names]
    placements = place(rng, len(names))
    objects = tuple(SceneObject(name, color, p.size, p.position, p.cx, p.cy, p.side)
                    for name, color, p in zip(names, colors, placements, strict=True))
    background = sample_background(rng, [COLORS[c] for c in colors])
    return Scene(objects, background)


def anchors_without_companion(names: list[str]) -> list[str]:
    """The anchors in `names` whose companion is missing: what POPE-adversarial and CHAIR probe."""
    present = set(names)
    return [n for n in dict.fromkeys(names) if BY_NAME[n].role == "anchor" and BY_NAME[n].partner not in present]
