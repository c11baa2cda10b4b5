"""Ground truth of one image: objects with attributes and drawn boxes, and the spatial
relations between them, in the JSON form of `annotations.jsonl`.

Relations come from the boxes, not from the slots, so they say what the pixels show:
i is "left of" j when i's box centre is left of j's by more than `RELATION_MARGIN` of the
image side (likewise right of / above / below). Both directions are listed, so a reader can
look up any ordered pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[int, int, int, int]
Relation = tuple[int, str, int]

RELATION_MARGIN = 0.1


@dataclass(frozen=True)
class ObjectTruth:
    name: str
    color: str
    size: str
    position: str
    box: Box  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color, "size": self.size, "position": self.position,
                "box": list(self.box)}


@dataclass(frozen=True)
class ImageTruth:
    id: str
    image: str  # relative to the annotations file
    objects: tuple[ObjectTruth, ...]
    relations: tuple[Relation, ...]
    background: str

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def counts(self) -> dict[str, int]:
        """Objects per category, in first-appearance order."""
        return dict(Counter(self.names))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "objects": [o.to_json() for o in self.objects],
                "counts": self.counts, "relations": [list(r) for r in self.relations], "background": self.background}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ImageTruth:
        objects = tuple(ObjectTruth(o["name"], o["color"], o["size"], o.get("position", ""), tuple(o["box"]))
                        for o in obj["objects"])
        relations = tuple((int(i), str(r), int(j)) for i, r, j in obj.get("relations", []))
        return cls(str(obj["id"]), str(obj["image"]), objects, relations, str(obj.get("background", "")))


def relations(boxes: Sequence[Box], image_size: int) -> tuple[Relation, ...]:
    """Every [i, relation, j] that holds between two boxes (i != j)."""
    margin = RELATION_MARGIN * image_size
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    out: list[Relation] = []
    for i, (xi, yi) in enumerate(centres):
        for j, (xj, yj) in enumerate(centres):
            if i == j:
                continue
            if xi < xj - margin:
                out.append((i, "left of", j))
            if xi > xj + margin:
                out.append((i, "right of", j))
            if yi < yj - margin:
                out.append((i, "above", j))
            if yi > yj + margin:
                out.append((i, "below", j))
    return tuple(out)
