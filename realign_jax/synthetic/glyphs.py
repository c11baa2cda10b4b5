"""One glyph per object category, drawn with Pillow primitives in a unit square.

A glyph paints two masks: `body` (filled with the object's colour) and `detail` (wheels,
eyes, windows: a dark or light contrast colour on top). Each category has a distinct
silhouette (outline, orientation, holes) so that it stays recognisable at the tiny model's
32-pixel images, where a small object is only about 8 pixels wide; colour never identifies
a category, since every object's colour is an independent attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from PIL import ImageDraw

Layer = Literal["body", "detail", "erase"]
Point = tuple[float, float]
Box = tuple[float, float, float, float]


class Pen:
    """Draws on the body/detail masks in a glyph's unit square (x right, y down, 0..1)."""

    def __init__(self, body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, left: float, top: float, side: float):
        self.body, self.detail = body, detail
        self.left, self.top, self.side = left, top, side

    def _xy(self, u: float, v: float) -> Point:
        return (self.left + u * self.side, self.top + v * self.side)

    def _box(self, box: Box) -> list[float]:
        return [*self._xy(box[0], box[1]), *self._xy(box[2], box[3])]

    def _width(self, width: float) -> int:
        return max(1, round(width * self.side))

    def _targets(self, layer: Layer) -> list[tuple[ImageDraw.ImageDraw, int]]:
        """Erasing clears both masks, so holes show the background."""
        if layer == "erase":
            return [(self.body, 0), (self.detail, 0)]
        return [(self.body if layer == "body" else self.detail, 255)]

    def ellipse(self, box: Box, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.ellipse(self._box(box), fill=value)

    def circle(self, cx: float, cy: float, r: float, layer: Layer = "body") -> None:
        self.ellipse((cx - r, cy - r, cx + r, cy + r), layer)

    def rect(self, box: Box, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.rectangle(self._box(box), fill=value)

    def poly(self, points: Sequence[Point], layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.polygon([self._xy(u, v) for u, v in points], fill=value)

    def line(self, points: Sequence[Point], width: float, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.line([self._xy(u, v) for u, v in points], fill=value, width=self._width(width), joint="curve")

    def ring(self, box: Box, width: float, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.ellipse(self._box(box), outline=value, width=self._width(width))

    def arc(self, box: Box, start: float, end: float, width: float, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.arc(self._box(box), start, end, fill=value, width=self._width(width))

    def chord(self, box: Box, start: float, end: float, layer: Layer = "body") -> None:
        for draw, value in self._targets(layer):
            draw.chord(self._box(box), start, end, fill=value)


def rotate(points: Sequence[Point], degrees: float, centre: Point = (0.5, 0.5)) -> list[Point]:
    """Points turned clockwise on screen (y down) about `centre`."""
    a = math.radians(degrees)
    cx, cy = centre
    return [(cx + (u - cx) * math.cos(a) - (v - cy) * math.sin(a),
             cy + (u - cx) * math.sin(a) + (v - cy) * math.cos(a)) for u, v in points]


def _star_points(cx: float, cy: float, outer: float, inner: float, tips: int = 5) -> list[Point]:
    points = []
    for k in range(2 * tips):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / tips
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


# --- anchors and companions -------------------------------------------------------------

def cup(p: Pen) -> None:
    p.ring((0.5, 0.3, 0.95, 0.75), 0.11)
    p.poly([(0.08, 0.18), (0.7, 0.18), (0.63, 0.92), (0.15, 0.92)])
    p.rect((0.08, 0.18, 0.7, 0.26), "detail")


def saucer(p: Pen) -> None:
    p.ellipse((0.0, 0.46, 1.0, 0.9))
    p.ring((0.3, 0.58, 0.7, 0.78), 0.04, "detail")


def dog(p: Pen) -> None:
    p.rect((0.12, 0.38, 0.72, 0.66))
    p.rect((0.14, 0.6, 0.26, 0.95))
    p.rect((0.56, 0.6, 0.68, 0.95))
    p.ellipse((0.58, 0.14, 0.96, 0.5))
    p.poly([(0.6, 0.14), (0.74, 0.14), (0.7, 0.4), (0.6, 0.36)], "detail")
    p.line([(0.14, 0.42), (0.02, 0.18)], 0.08)
    p.circle(0.83, 0.28, 0.05, "detail")


def leash(p: Pen) -> None:
    p.ring((0.0, 0.0, 0.46, 0.46), 0.16)
    p.line([(0.34, 0.34), (0.5, 0.66), (0.66, 0.52), (0.82, 0.84)], 0.17)
    p.rect((0.76, 0.78, 1.0, 1.0), "detail")


def car(p: Pen) -> None:
    p.poly([(0.2, 0.46), (0.3, 0.14), (0.72, 0.14), (0.84, 0.46)])
    p.rect((0.0, 0.42, 1.0, 0.76))
    p.rect((0.38, 0.24, 0.62, 0.4), "detail")
    p.circle(0.24, 0.8, 0.13, "detail")
    p.circle(0.76, 0.8, 0.13, "detail")


def traffic_light(p: Pen) -> None:
    p.rect((0.2, 0.0, 0.8, 0.8))
    p.rect((0.42, 0.8, 0.58, 1.0))
    for y in (0.15, 0.4, 0.65):
        p.circle(0.5, y, 0.08, "detail")


def key(p: Pen) -> None:
    p.circle(0.25, 0.5, 0.25)
    p.circle(0.25, 0.5, 0.08, "erase")
    p.rect((0.4, 0.4, 1.0, 0.6))
    p.rect((0.68, 0.6, 0.8, 0.8))
    p.rect((0.86, 0.6, 0.98, 0.74))


def lock(p: Pen) -> None:
    p.ring((0.24, 0.02, 0.76, 0.62), 0.11)
    p.rect((0.12, 0.36, 0.88, 0.98))
    p.circle(0.5, 0.58, 0.08, "detail")
    p.rect((0.46, 0.6, 0.54, 0.8), "detail")


def fork(p: Pen) -> None:
    p.rect((0.4, 0.45, 0.6, 1.0))
    p.rect((0.16, 0.28, 0.84, 0.5))
    for x in (0.16, 0.44, 0.72):
        p.rect((x, 0.0, x + 0.12, 0.34))


def knife(p: Pen) -> None:
    p.poly([(0.36, 0.32), (0.84, 0.32), (1.0, 0.5), (0.88, 0.66), (0.36, 0.66)])
    p.rect((0.0, 0.38, 0.36, 0.6), "detail")


def flower(p: Pen) -> None:
    p.rect((0.46, 0.5, 0.54, 1.0))
    p.ellipse((0.52, 0.68, 0.82, 0.82))
    for k in range(5):
        a = -math.pi / 2 + k * 2 * math.pi / 5
        p.circle(0.5 + 0.21 * math.cos(a), 0.36 + 0.21 * math.sin(a), 0.15)
    p.circle(0.5, 0.36, 0.1, "detail")


def vase(p: Pen) -> None:
    p.rect((0.3, 0.0, 0.7, 0.1))
    p.rect((0.38, 0.05, 0.62, 0.4))
    p.ellipse((0.14, 0.3, 0.86, 1.0))
    p.rect((0.14, 0.6, 0.86, 0.68), "detail")


def cake(p: Pen) -> None:
    p.rect((0.04, 0.48, 0.96, 0.96))
    p.rect((0.18, 0.22, 0.82, 0.48))
    p.rect((0.04, 0.64, 0.96, 0.72), "detail")
    p.circle(0.5, 0.12, 0.09, "detail")


def candle(p: Pen) -> None:
    p.rect((0.36, 0.38, 0.64, 1.0))
    p.poly([(0.5, 0.0), (0.62, 0.2), (0.5, 0.32), (0.38, 0.2)], "detail")


def umbrella(p: Pen) -> None:
    p.chord((0.0, 0.0, 1.0, 0.96), 180, 360)
    p.rect((0.44, 0.45, 0.56, 0.85))
    p.arc((0.2, 0.66, 0.56, 1.0), 0, 180, 0.12)
    for x in (0.17, 0.83):
        p.circle(x, 0.5, 0.09, "erase")


def cloud(p: Pen) -> None:
    p.circle(0.28, 0.6, 0.2)
    p.circle(0.5, 0.42, 0.25)
    p.circle(0.74, 0.58, 0.2)
    p.rect((0.26, 0.55, 0.76, 0.8))


def racket(p: Pen) -> None:
    p.ellipse((0.14, 0.0, 0.86, 0.66))
    p.rect((0.42, 0.6, 0.58, 1.0))
    p.line([(0.5, 0.1), (0.5, 0.56)], 0.05, "detail")
    p.line([(0.24, 0.33), (0.76, 0.33)], 0.05, "detail")


def ball(p: Pen) -> None:
    p.circle(0.5, 0.5, 0.42)
    p.arc((-0.2, 0.1, 0.4, 0.9), -50, 50, 0.06, "detail")
    p.arc((0.6, 0.1, 1.2, 0.9), 130, 230, 0.06, "detail")


def boat(p: Pen) -> None:
    p.poly([(0.0, 0.62), (1.0, 0.62), (0.8, 0.92), (0.2, 0.92)])
    p.rect((0.46, 0.04, 0.53, 0.62))
    p.poly([(0.56, 0.06), (0.56, 0.56), (0.95, 0.56)])
    p.poly([(0.44, 0.16), (0.44, 0.56), (0.14, 0.56)], "detail")


def lighthouse(p: Pen) -> None:
    p.poly([(0.3, 0.26), (0.7, 0.26), (0.84, 1.0), (0.16, 1.0)])
    p.poly([(0.26, 0.16), (0.5, 0.0), (0.74, 0.16)])
    p.rect((0.36, 0.15, 0.64, 0.27), "detail")
    p.poly([(0.26, 0.52), (0.74, 0.52), (0.76, 0.64), (0.24, 0.64)], "detail")


def bird(p: Pen) -> None:
    p.poly([(0.22, 0.55), (0.0, 0.38), (0.04, 0.72)])
    p.ellipse((0.12, 0.36, 0.76, 0.84))
    p.circle(0.7, 0.32, 0.17)
    p.poly([(0.84, 0.26), (1.0, 0.34), (0.84, 0.4)], "detail")
    p.circle(0.73, 0.28, 0.04, "detail")
    p.arc((0.22, 0.44, 0.6, 0.76), 20, 160, 0.06, "detail")


def cage(p: Pen) -> None:
    p.arc((0.06, 0.06, 0.94, 0.66), 180, 360, 0.15)
    p.circle(0.5, 0.06, 0.07)
    for x in (0.13, 0.37, 0.63, 0.87):
        p.line([(x, 0.34), (x, 0.86)], 0.14)
    p.rect((0.0, 0.82, 1.0, 1.0))


def pencil(p: Pen) -> None:
    p.poly(rotate([(0.16, 0.37), (0.74, 0.37), (0.74, 0.63), (0.16, 0.63)], -40))
    p.poly(rotate([(0.74, 0.37), (1.0, 0.5), (0.74, 0.63)], -40))
    p.poly(rotate([(0.0, 0.37), (0.16, 0.37), (0.16, 0.63), (0.0, 0.63)], -40), "detail")
    p.poly(rotate([(0.9, 0.45), (1.0, 0.5), (0.9, 0.55)], -40), "detail")


def book(p: Pen) -> None:
    p.poly([(0.0, 0.16), (0.47, 0.28), (0.47, 0.94), (0.0, 0.82)])
    p.poly([(0.53, 0.28), (1.0, 0.16), (1.0, 0.82), (0.53, 0.94)])
    for y in (0.42, 0.58):
        p.line([(0.1, y - 0.06), (0.38, y)], 0.04, "detail")
        p.line([(0.62, y), (0.9, y - 0.06)], 0.04, "detail")


def moon(p: Pen) -> None:
    p.circle(0.5, 0.5, 0.45)
    p.circle(0.74, 0.36, 0.38, "erase")


def star(p: Pen) -> None:
    p.poly(_star_points(0.5, 0.54, 0.5, 0.2))


# --- distractors ------------------------------------------------------------------------

def tree(p: Pen) -> None:
    p.rect((0.4, 0.66, 0.6, 1.0), "detail")
    p.poly([(0.5, 0.0), (0.8, 0.36), (0.2, 0.36)])
    p.poly([(0.5, 0.18), (0.96, 0.72), (0.04, 0.72)])


def house(p: Pen) -> None:
    p.rect((0.12, 0.46, 0.88, 1.0))
    p.poly([(0.0, 0.5), (0.5, 0.04), (1.0, 0.5)])
    p.rect((0.42, 0.66, 0.6, 1.0), "detail")
    p.rect((0.2, 0.58, 0.34, 0.72), "detail")


def apple(p: Pen) -> None:
    p.circle(0.34, 0.6, 0.3)
    p.circle(0.66, 0.6, 0.3)
    p.rect((0.46, 0.06, 0.54, 0.34), "detail")
    p.poly([(0.54, 0.18), (0.74, 0.04), (0.88, 0.12), (0.66, 0.24)])


def hat(p: Pen) -> None:
    p.ellipse((0.0, 0.72, 1.0, 0.94))
    p.rect((0.24, 0.14, 0.76, 0.84))
    p.rect((0.24, 0.62, 0.76, 0.72), "detail")


def clock(p: Pen) -> None:
    p.circle(0.5, 0.5, 0.47)
    p.line([(0.5, 0.5), (0.5, 0.16)], 0.08, "detail")
    p.line([(0.5, 0.5), (0.76, 0.5)], 0.08, "detail")
    for u, v in ((0.5, 0.88), (0.12, 0.5)):
        p.circle(u, v, 0.05, "detail")


def bottle(p: Pen) -> None:
    p.rect((0.41, 0.06, 0.59, 0.4))
    p.ellipse((0.28, 0.26, 0.72, 0.54))
    p.rect((0.28, 0.4, 0.72, 1.0))
    p.rect((0.38, 0.0, 0.62, 0.1), "detail")
    p.rect((0.28, 0.6, 0.72, 0.78), "detail")


def chair(p: Pen) -> None:
    p.rect((0.14, 0.0, 0.34, 0.64))
    p.rect((0.14, 0.46, 0.88, 0.64))
    p.rect((0.14, 0.6, 0.3, 1.0))
    p.rect((0.72, 0.6, 0.88, 1.0))


def bell(p: Pen) -> None:
    p.ellipse((0.2, 0.04, 0.8, 0.6))
    p.poly([(0.2, 0.34), (0.8, 0.34), (0.98, 0.84), (0.02, 0.84)])
    p.circle(0.5, 0.88, 0.1)
    p.rect((0.02, 0.74, 0.98, 0.84), "detail")


GLYPHS: dict[str, Callable[[Pen], None]] = {
    "cup": cup, "saucer": saucer, "dog": dog, "leash": leash, "car": car, "traffic light": traffic_light,
    "key": key, "lock": lock, "fork": fork, "knife": knife, "flower": flower, "vase": vase, "cake": cake,
    "candle": candle, "umbrella": umbrella, "cloud": cloud, "racket": racket, "ball": ball, "boat": boat,
    "lighthouse": lighthouse, "bird": bird, "cage": cage, "pencil": pencil, "book": book, "moon": moon,
    "star": star, "tree": tree, "house": house, "apple": apple, "hat": hat, "clock": clock, "bottle": bottle,
    "chair": chair, "bell": bell,
}
