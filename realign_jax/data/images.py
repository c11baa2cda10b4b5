"""LLaVA/CLIP image preprocessing in numpy and Pillow.

The vision tower was trained on pixels produced by transformers' ``CLIPImageProcessor``
(PIL backend), so this module reproduces it step for step (same resize size formula,
same uint8 resampling, same float64 rescale then float32 normalisation) without
importing torch or transformers. The data pipeline can then run in plain worker processes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_CONFIG_NAME = "preprocessor_config.json"
# Steps this module always performs; a config that switches one off cannot be reproduced.
_ALWAYS_ON = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_RESCALE = 1 / 255
# Refused before decoding: a small file can declare a huge canvas (a decompression bomb), and a
# sliver resized to `shortest_edge` or padded to a square becomes one.
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own warning threshold (it only raises at twice this)
MAX_ASPECT_RATIO = 200.0
# Refused before opening: a bigger file is not a photo a VLM is trained on (an 89-Mpixel RGB
# image is 268 MB even uncompressed), and reading it would stall the pipeline.
MAX_IMAGE_FILE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ImageProcessing:
    """How a checkpoint's vision tower expects its pixels.

    Attributes:
        size: side of the square centre crop fed to the vision tower.
        shortest_edge: the image's shorter side is resized to this before cropping.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting ``mean``.
        resample: Pillow filter used for the resize.
        pad_to_square: LLaVA-1.5's "expand2square": centre the image on a square canvas
            of colour ``pad_color`` before resizing, so no content is cropped away.
    """

    size: int = 336
    shortest_edge: int = 336
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: Image.Resampling = Image.Resampling.BICUBIC
    pad_to_square: bool = False

    def __post_init__(self) -> None:
        if self.size < 1 or self.shortest_edge < 1:
            raise ValueError(f"size and shortest_edge must be positive, got {self.size} and {self.shortest_edge}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be positive, got {self.std}")

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """Canvas colour for ``pad_to_square``: the mean colour, truncated as LLaVA does."""
        red, green, blue = (int(m * 255) for m in self.mean)
        return red, green, blue

    @classmethod
    def from_hf(cls, path: str | os.PathLike[str]) -> ImageProcessing:
        """Reads a checkpoint folder's ``preprocessor_config.json`` (CLIPImageProcessor fields)."""
        config_file = Path(path) / _CONFIG_NAME
        config = _read_json_object(config_file)
        fields = _ConfigFields(config, config_file)
        fields.check_fixed_steps()
        return cls(
            size=fields.crop_size(),
            shortest_edge=fields.shortest_edge(),
            mean=fields.triple("image_mean"),
            std=fields.triple("image_std"),
            resample=fields.resample(),
            pad_to_square=fields.flag("do_pad", default=False),
        )

    @classmethod
    def for_checkpoint(cls, path: str | os.PathLike[str], image_size: int) -> ImageProcessing:
        """The folder's processor config, or plain CLIP preprocessing at the tower's size when it
        has none (the random checkpoints the project writes)."""
        if (Path(path) / _CONFIG_NAME).is_file():
            return cls.from_hf(path)
        return cls(size=image_size, shortest_edge=image_size)


def _read_json_object(config_file: Path) -> dict[str, Any]:
    """Loads a JSON object, turning the usual failures into errors that name the file."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{config_file}: not found; the checkpoint folder needs an image processor config"
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


class _ConfigFields:
    """Typed access to a preprocessor config, with errors naming the file and the key."""

    def __init__(self, config: Mapping[str, Any], config_file: Path) -> None:
        self._config = config
        self._file = config_file

    def _error(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{self._file}: '{key}' must be {expected}, got {self._config[key]!r}")

    def _require(self, key: str) -> Any:
        if key not in self._config:
            raise ValueError(f"{self._file}: missing key '{key}'")
        return self._config[key]

    def check_fixed_steps(self) -> None:
        """Rejects configs that switch off, or rescale differently in, steps this module always applies."""
        for key in _ALWAYS_ON:
            if self._config.get(key, True) is not True:
                raise self._error(key, "true (or absent): this pipeline always applies that step")
        factor = self._config.get("rescale_factor", _RESCALE)
        if not _is_number(factor) or not math.isclose(factor, _RESCALE):
            raise self._error("rescale_factor", "1/255 (or absent)")

    def crop_size(self) -> int:
        """``crop_size`` as a square side: ``{"height": n, "width": n}`` or a bare ``n`` (old configs)."""
        value = self._require("crop_size")
        if _is_positive_int(value):
            return value
        if (
            isinstance(value, dict)
            and _is_positive_int(value.get("height"))
            and value.get("height") == value.get("width")
        ):
            return value["height"]
        raise self._error("crop_size", 'a positive int or {"height": n, "width": n} with equal sides')

    def shortest_edge(self) -> int:
        """``size`` as a shortest edge: ``{"shortest_edge": n}`` or a bare ``n`` (old configs)."""
        value = self._require("size")
        if _is_positive_int(value):
            return value
        if isinstance(value, dict) and _is_positive_int(value.get("shortest_edge")):
            return value["shortest_edge"]
        raise self._error("size", 'a positive int or {"shortest_edge": n}')

    def triple(self, key: str) -> tuple[float, float, float]:
        """A three-number list such as ``image_mean``."""
        value = self._require(key)
        if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise self._error(key, "a list of 3 numbers")
        return float(value[0]), float(value[1]), float(value[2])

    def resample(self) -> Image.Resampling:
        """The Pillow filter id; CLIPImageProcessor defaults to bicubic when it is absent."""
        value = self._config.get("resample", Image.Resampling.BICUBIC.value)
        if not isinstance(value, int) or isinstance(value, bool) or value not in range(6):
            raise self._error("resample", "a Pillow resampling filter id from 0 to 5 (3 is bicubic)")
        return Image.Resampling(value)

    def flag(self, key: str, default: bool) -> bool:
        """An optional boolean switch."""
        value = self._config.get(key, default)
        if not isinstance(value, bool):
            raise self._error(key, "true or false")
        return value


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_image(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Decodes a file path or encoded bytes into an RGB image, applying EXIF orientation.

    The orientation is applied (as transformers' own ``load_image`` does) so that the pixels
    match what annotators saw. The image is fully decoded here so that truncated files fail
    now, with a ``ValueError`` naming the source, rather than later inside a batch.
    """
    name = f"<{len(source)} bytes of image data>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes):
        check_regular_file(name)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():  # Pillow warns of a large canvas; check_size refuses it outright
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(stream)
        with opened:
            check_size(*opened.size, name)
            opened.load()
            return to_rgb(ImageOps.exif_transpose(opened))
    except FileNotFoundError as error:
        raise ValueError(f"{name}: image file not found") from error
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: not a readable image, or truncated ({error})") from error


def check_regular_file(path: str) -> None:
    """Refuse, before opening, what is not a plain file of a sane size (links are followed).

    A named pipe would block the reader forever, and a device or /proc file is endless or lies
    about its size: each is a bad record, never a hang.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the image file ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a named pipe" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise ValueError(f"{path}: {kind}, not an image file")
    if os.path.realpath(path).startswith(("/proc/", "/sys/", "/dev/")):
        raise ValueError(f"{path}: a kernel file, not an image file")
    if info.st_size == 0:
        raise ValueError(f"{path}: the image file is empty (0 bytes)")
    if info.st_size > MAX_IMAGE_FILE_BYTES:
        raise ValueError(f"{path}: {info.st_size} bytes, over the limit of {MAX_IMAGE_FILE_BYTES} for an image file")


def check_size(width: int, height: int, name: str) -> None:
    """Refuse empty images and ones whose decoding or preprocessing would take unbounded memory."""
    if width < 1 or height < 1:
        raise ValueError(f"{name}: the image is {width}x{height} pixels (empty)")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: the image declares {width}x{height} pixels, over the limit of "
                         f"{MAX_IMAGE_PIXELS} (a decompression bomb, or a photo to downscale first)")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(f"{name}: the image is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO:g}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB the way CLIPImageProcessor does, except for 16-bit.

    Transparent images are composited onto white (transformers' ``convert_to_rgb``). 16-bit
    greyscale is scaled to 8 bits: Pillow's own conversion clips at 255, whitening the image.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        eight_bit = np.round(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


MDPO_CROP_SCALE = (0.01, 0.2)  # mDPO's code: v2.RandomResizedCrop(scale=(0.01, 0.2)), the default ratio
MDPO_CROP_RATIO = (3 / 4, 4 / 3)


def crop_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = MDPO_CROP_SCALE,
             ratio: tuple[float, float] = MDPO_CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) as torchvision's ``RandomResizedCrop.get_params`` draws it: up
    to 10 tries of an area share U(scale) and a log aspect ratio (width / height) U(log ratio),
    the first box that fits kept at a uniform position; else a centre crop, the whole image
    when its ratio lies inside ``ratio``, else its largest centred box at the nearest bound."""
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < min(ratio):
        w, h = width, round(width / min(ratio))
    elif width / height > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _bilinear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index the two source indices and the second's weight: torch's bilinear
    interpolation with ``align_corners=False`` (half-pixel centres, clamped at the edges)."""
    x = np.maximum((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0)
    low = np.minimum(x.astype(np.int64), source - 1)
    return low, np.minimum(low + 1, source - 1), (x - low).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """float [C, h, w] -> float32 [C, height, width] by bilinear interpolation. No antialiasing:
    it is only ever an enlargement here, where torchvision's antialias changes nothing."""
    top, bottom, down = _bilinear_taps(pixels.shape[1], height)
    left, right, across = _bilinear_taps(pixels.shape[2], width)
    rows = pixels[:, top] * (1 - down)[:, None] + pixels[:, bottom] * down[:, None]
    return np.ascontiguousarray(rows[:, :, left] * (1 - across) + rows[:, :, right] * across, dtype=np.float32)


def random_resized_crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mDPO's corrupted image, as its code makes it (``crop_images`` in modeling_bunny_phi.py):
    ``v2.RandomResizedCrop(size=(H, W), scale=(0.01, 0.2))`` on the model's input tensor
    [C, H, W], after preprocessing, resized back to (H, W) with bilinear interpolation. Crop and
    resize commute with the per-channel standardisation, so the standardised tensor serves."""
    height, width = pixels.shape[1:]
    top, left, h, w = crop_box(height, width, rng)
    return resize_bilinear(pixels[:, top:top + h, left:left + w], height, width)


def resized_shape(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``shortest_edge``.

    The longer side is ``int(shortest_edge * long / short)`` (truncated, as transformers'
    ``get_resize_output_image_size`` does); rounding instead would shift the crop by a pixel.
    """
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Centres ``image`` on a square canvas of ``color`` (LLaVA-1.5's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Square centre crop; Pillow fills any area outside a too-small image with black.

    The offsets ``(width - size) // 2`` (negative when the image is smaller) place the image
    exactly where transformers' zero-padding ``center_crop`` does.
    """
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


@functools.lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: every uint8 value of every channel through the rescale + standardise."""
    scaled = (np.arange(256, dtype=np.float64) * _RESCALE).astype(np.float32)
    return (scaled[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def normalise(pixels: np.ndarray, processing: ImageProcessing,
              perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """uint8 [H, W, 3] -> C-contiguous float32 [3, H, W], scaled to [0, 1] then standardised.

    `perturb` acts on the [0, 1] pixels before standardisation (POVID's diffusion noise).
    The float64 rescale followed by float32 arithmetic mirrors transformers bit for bit;
    without `perturb` a 256-entry table per channel gives the same values ~2x faster.
    C-contiguous output matters: Grain's worker processes share only such arrays through
    shared memory and pickle the rest through a pipe.
    """
    if perturb is None:
        table = _normalise_table(tuple(processing.mean), tuple(processing.std))
        return np.stack([table[c][pixels[..., c]] for c in range(3)])
    scaled = (pixels.astype(np.float64) * _RESCALE).astype(np.float32).transpose(2, 0, 1)
    scaled = perturb(scaled).astype(np.float32)
    mean = np.asarray(processing.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processing.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((scaled - mean) / std)


def preprocess(image: Image.Image, processing: ImageProcessing,
               perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """One image -> float32 [3, size, size], equal to CLIPImageProcessor's ``pixel_values[0]``
    (when `perturb` is None; see `normalise`)."""
    image = to_rgb(image)
    if processing.pad_to_square:
        side = max(image.size)
        if side * side > MAX_IMAGE_PIXELS:
            raise ValueError(f"the image is {image.width}x{image.height} pixels: padded to a square (LLaVA-1.5) it "
                             f"would exceed {MAX_IMAGE_PIXELS} pixels; downscale it first")
        image = expand_to_square(image, processing.pad_color)
    width, height = image.size
    image = image.resize(resized_shape(width, height, processing.shortest_edge), resample=processing.resample)
    return normalise(np.asarray(centre_crop(image, processing.size)), processing, perturb)


def preprocess_batch(images: Sequence[Image.Image], processing: ImageProcessing) -> np.ndarray:
    """Images -> float32 [B, 3, size, size]; an empty sequence gives B = 0."""
    if not images:
        return np.zeros((0, 3, processing.size, processing.size), dtype=np.float32)
    return np.stack([preprocess(image, processing) for image in images])
