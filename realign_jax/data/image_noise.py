"""POVID's image distortion: forward diffusion noise on the [0, 1] pixels (docs/methods.md §3).

    betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    abar  = cumprod(1 - betas)
    x_t   = sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * eps,   eps ~ N(0, I)

A record asks for it with `"image_noise": {"kind": "diffusion", "t": 500}`; the pipeline draws
fresh noise every time it reads the example, from a generator seeded by (data seed, epoch,
record), so a resumed run sees the same noise as an uninterrupted one.

Where the noise is applied is the spec's `form` (default `data.image_noise_form`):
- `paper`: on the model's input pixels in [0, 1] (after padding, resizing and cropping, before
  normalisation), unclipped: the formula as the paper writes it.
- `povid_code`: as POVID's training code does it: on the decoded image at its own resolution
  (torchvision's ToTensor: uint8 / 255), then back to 8 bits with ToPILImage's `mul(255).byte()`,
  which truncates and wraps instead of clamping (-0.3 becomes 180), and only then padded to a
  square with the mean colour and resized and cropped like any image.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

DIFFUSION_STEPS = 1000
DEFAULT_NOISE: Mapping[str, Any] = {"kind": "diffusion", "t": 500}
FORMS = ("paper", "povid_code")


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
    if spec.get("form", FORMS[0]) not in FORMS:
        return f"form must be one of {FORMS}, got {spec['form']!r}"
    return None


def diffuse(pixels: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """x_t from x0 = `pixels` in [0, 1] (any shape), float32."""
    abar = alphas_cumprod()[t]
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    return (np.sqrt(abar) * pixels + np.sqrt(1 - abar) * noise).astype(np.float32)


def povid_code(image: Image.Image, t: int, rng: np.random.Generator) -> Image.Image:
    """The `povid_code` form on a decoded RGB image: noise drawn fresh from `rng`."""
    noise = rng.standard_normal((3, image.height, image.width), dtype=np.float32)
    return povid_code_with(image, t, noise)


def povid_code_with(image: Image.Image, t: int, noise: np.ndarray) -> Image.Image:
    """POVID's code on a decoded RGB image, given its noise ([3, H, W] float32, torch's CHW
    order): ToTensor, x_t in float32, then ToPILImage's `mul(255).byte()`, a truncation to an
    integer kept modulo 256."""
    x0 = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    abar = alphas_cumprod()[t]
    xt = np.float32(np.sqrt(abar)) * x0 + np.float32(np.sqrt(1 - abar)) * noise
    wrapped = (np.trunc(xt * np.float32(255)).astype(np.int64) & 0xFF).astype(np.uint8)
    return Image.fromarray(wrapped.transpose(1, 2, 0), "RGB")
