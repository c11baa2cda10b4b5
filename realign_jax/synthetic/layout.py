"""Where objects go: five position slots (left, right, top, bottom, center) and two sizes.

Slots make the position attribute exact (an object "on the left" is drawn in the left slot),
and the sizes are chosen so no two objects overlap: slot centres are 0.31 of the image apart,
a small object spans at most 0.25 and a large one 0.35, and two large objects are only
allowed in opposite slots (left/right, top/bottom). All lengths are fractions of the image side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from realign_jax.synthetic.vocabulary import POSITIONS

SLOT_CENTRES: dict[str, tuple[float, float]] = {
    "left": (0.19, 0.5), "right": (0.81, 0.5), "top": (0.5, 0.19), "bottom": (0.5, 0.81), "center": (0.5, 0.5),
}
# Away from the centre: the only direction a side slot may shift without nearing a neighbour.
_OUTWARD: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1),
                                        "center": (0, 0)}
SIDE_RANGE: dict[str, tuple[float, float]] = {"small": (0.22, 0.25), "large": (0.32, 0.35)}
_OPPOSITE = ({"left", "right"}, {"top", "bottom"})
MAX_OBJECTS = len(POSITIONS)


@dataclass(frozen=True)
class Placement:
    """An object's slot, size word and square (centre and side, fractions of the image side)."""

    position: str
    size: str
    cx: float
    cy: float
    side: float


def adjacent(a: str, b: str) -> bool:
    """Slots close enough that two large objects in them would overlap."""
    return a != b and {a, b} not in _OPPOSITE


def place(rng: np.random.Generator, count: int) -> list[Placement]:
    """Distinct slots and sizes for `count` objects, never overlapping."""
    if not 1 <= count <= MAX_OBJECTS:
        raise ValueError(f"an image holds 1 to {MAX_OBJECTS} objects, asked for {count}")
    positions = [str(p) for p in rng.permutation(POSITIONS)[:count]]
    placements: list[Placement] = []
    for position in positions:
        size = "large" if rng.random() < 0.5 else "small"
        if size == "large" and any(p.size == "large" and adjacent(p.position, position) for p in placements):
            size = "small"
        side = float(rng.uniform(*SIDE_RANGE[size]))
        cx, cy = SLOT_CENTRES[position]
        if position == "center":
            if count == 1:  # alone, the centre object may wander a little
                cx, cy = cx + float(rng.uniform(-0.08, 0.08)), cy + float(rng.uniform(-0.08, 0.08))
        else:
            dx, dy = _OUTWARD[position]
            shift = float(rng.uniform(0.0, max(0.0, 0.19 - side / 2)))  # stays inside the image
            cx, cy = cx + dx * shift, cy + dy * shift
        placements.append(Placement(position, size, cx, cy, side))
    return placements
