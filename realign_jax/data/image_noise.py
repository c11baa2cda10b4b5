"""POVID's image distortion: forward diffusion noise on the [0, 1] pixels (docs/methods.md §3).

    betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    abar  = cumprod(1 - betas)
    x_t   = sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * eps,   eps ~ N(0, I)

A record asks for it with `"image_noise": {"kind": "diffusion", "t": 500}`; the pipeline draws
fresh noise every time it reads the example, from a generator seeded by (data seed, epoch,
record), so a resumed run sees the same noise as an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

DIFFUSION_STEPS = 1000
DEFAULT_NOISE: Mapping[str, Any] = {"kind": "diffusion", "t": 500}


@functools.cache
def alphas_cumprod() -> np.ndarray:
    betas = 1 / (1 + np.exp(-np.linspace(-6, 6, DIFFUSION_STEPS))) * (5e-3 - 1e-5) + 1e-5
    return np.cumprod(1 - betas)


def check(spec: Any) -> str | None:
    """None if `spec` is a usable noise spec, else what is wrong with it."""
    if not isinstance(spec, Mapping) or spec.get("kind") != "diffusion":
        return 'must be {"kind": "diffusion", "t": <step>}'
    t = spec.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < DIFFUSION_STEPS:
        return f"t must be an integer step in [0, {DIFFUSION_STEPS}), got {t!r}"
    return None


def diffuse(pixels: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """x_t from x0 = `pixels` in [0, 1] (any shape), float32."""
    abar = alphas_cumprod()[t]
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    return (np.sqrt(abar) * pixels + np.sqrt(1 - abar) * noise).astype(np.float32)
