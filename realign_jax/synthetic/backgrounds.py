"""Backgrounds: solid colours, linear gradients and noise textures, all muted.

A background is chosen per image to stay at least `MIN_CONTRAST` (RGB distance) away from
every object colour in that image, and noise is bounded, so an object's colour is never
found in the background: the ground truth "this box holds a red cup" stays checkable from
the pixels, and a model cannot confuse the floor with an object.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from realign_jax.synthetic.vocabulary import RGB

KINDS: tuple[str, ...] = ("solid", "gradient", "noise")
MIN_CONTRAST = 90.0
NOISE_AMPLITUDE = 22.0  # largest shared (texture) deviation per channel
NOISE_GRAIN = 4.0  # largest per-channel deviation on top
_FALLBACK: RGB = (128, 128, 128)  # far enough from every object colour


@dataclass(frozen=True)
class Background:
    """What to paint behind the objects; rendering it is deterministic from these fields."""

    kind: str
    colors: tuple[RGB, ...]  # one for solid and noise, two (start, end) for a gradient
    angle: float = 0.0  # gradient direction in degrees
    seed: int = 0  # noise texture


def _muted(rng: np.random.Generator) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.38, 0.78))
    return (round(r * 255), round(g * 255), round(b * 255))


def _far(colors: Sequence[RGB], avoid: Sequence[RGB]) -> bool:
    """Every colour on the segment between `colors` (a gradient's path) is far from `avoid`."""
    a = np.asarray(colors[0], float)
    b = np.asarray(colors[-1], float)
    path = a + np.linspace(0.0, 1.0, 11)[:, None] * (b - a)
    targets = np.asarray(avoid, float).reshape(-1, 3)
    return bool(np.linalg.norm(path[:, None, :] - targets[None], axis=-1).min() >= MIN_CONTRAST) if len(avoid) else True


def sample_background(rng: np.random.Generator, avoid: Sequence[RGB]) -> Background:
    """A random background whose colours all keep `MIN_CONTRAST` from the `avoid` colours."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    count = 2 if kind == "gradient" else 1
    colors: tuple[RGB, ...] = (_FALLBACK,) * count
    for _ in range(200):
        candidate = tuple(_muted(rng) for _ in range(count))
        if _far(candidate, avoid):
            colors = candidate
            break
    return Background(kind, colors, angle=float(rng.uniform(0, 360)), seed=int(rng.integers(2**31)))


def render_background(background: Background, size: int) -> np.ndarray:
    """The background as a float32 (size, size, 3) array of 0..255 values."""
    base = np.asarray(background.colors[0], np.float32)
    if background.kind == "solid":
        return np.broadcast_to(base, (size, size, 3)).copy()
    if background.kind == "gradient":
        a = np.deg2rad(background.angle)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = xs * np.cos(a) + ys * np.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        end = np.asarray(background.colors[1], np.float32)
        return base + t[..., None] * (end - base)
    if background.kind == "noise":
        rng = np.random.default_rng(background.seed)
        coarse = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
        blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
        grain = rng.uniform(-1, 1, (size, size, 3)).astype(np.float32)
        return base + NOISE_AMPLITUDE * blotches[..., None] + NOISE_GRAIN * grain
    raise ValueError(f"unknown background kind {background.kind!r}; expected one of {KINDS}")
