"""Scene -> pixels, and each object's box measured from what was actually drawn.

Glyph masks are drawn at `supersample` times the image size and box-averaged down, so edges
are anti-aliased and thin parts of 8-pixel glyphs survive as partial coverage instead of
vanishing. The ground-truth box is the extent of the object's own ink at the final size
(pixels at least half covered), not the slot it was aimed at.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from realign_jax.synthetic.backgrounds import render_background
from realign_jax.synthetic.glyphs import GLYPHS, Pen
from realign_jax.synthetic.scenes import Scene, SceneObject
from realign_jax.synthetic.vocabulary import COLORS, RGB

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive

_DARK: RGB = (25, 25, 25)
_LIGHT: RGB = (235, 235, 235)


def auto_supersample(image_size: int) -> int:
    """Enough resolution to anti-alias small images; large ones draw near their final size."""
    return max(2, math.ceil(128 / image_size))


def detail_color(color: RGB) -> RGB:
    """Dark details on light objects, light ones on dark objects."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return _DARK if luminance > 110 else _LIGHT


def object_masks(obj: SceneObject, size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Body and detail coverage (float32 0..1, image size) of one object."""
    canvas = size * supersample
    body, detail = Image.new("L", (canvas, canvas), 0), Image.new("L", (canvas, canvas), 0)
    side = obj.side * canvas
    pen = Pen(ImageDraw.Draw(body), ImageDraw.Draw(detail), obj.cx * canvas - side / 2, obj.cy * canvas - side / 2,
              side)
    GLYPHS[obj.name](pen)
    if supersample > 1:
        body, detail = body.reduce(supersample), detail.reduce(supersample)
    return np.asarray(body, np.float32) / 255.0, np.asarray(detail, np.float32) / 255.0


def ink_box(coverage: np.ndarray) -> Box:
    """Bounding box of the pixels at least half covered (the whole mask if none are)."""
    ys, xs = np.nonzero(coverage >= 0.5)
    if not len(xs):
        ys, xs = np.nonzero(coverage > 0)
    if not len(xs):
        raise ValueError("an object drew nothing; is it outside the image?")
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def render(scene: Scene, size: int, supersample: int) -> tuple[Image.Image, list[Box]]:
    """The RGB image of a scene and each object's box, in the scene's object order."""
    pixels = render_background(scene.background, size)
    boxes = []
    for obj in scene.objects:
        body, detail = object_masks(obj, size, supersample)
        color = np.asarray(COLORS[obj.color], np.float32)
        pixels = pixels * (1 - body[..., None]) + color * body[..., None]
        pixels = pixels * (1 - detail[..., None]) + np.asarray(detail_color(COLORS[obj.color]), np.float32) * detail[
            ..., None]
        boxes.append(ink_box(np.maximum(body, detail)))
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image, boxes
