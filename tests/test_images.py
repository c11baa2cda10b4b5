"""realign_jax.data.images against transformers' PIL-backend CLIP and LLaVA image processors."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil

from realign_jax.data.images import ImageProcessing, load_image, preprocess, preprocess_batch

TOLERANCE = 1e-5

# (width, height): wide, tall, smaller than the crop, exactly the crop, odd, extreme, near-square, tiny.
SIZES = [(640, 480), (480, 640), (200, 150), (336, 336), (337, 401), (1000, 333), (335, 336), (50, 13)]


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic stand-in for a photograph: gradients, sensor noise, shapes, slight blur."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    gradients = np.stack([cols / width, rows / height, (rows + cols) / (width + height)], axis=-1) * 255
    noisy = np.clip(gradients + rng.normal(0.0, 12.0, gradients.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        left, right = sorted(rng.integers(0, width, 2).tolist())
        top, bottom = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(rng.integers(0, 256, 3).tolist())
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((left, top, right, bottom), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def hf_pixels(processor: CLIPImageProcessorPil | LlavaImageProcessorPil, image: Image.Image) -> np.ndarray:
    return np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0])


def clip_processor(size: int = 336, shortest_edge: int = 336, **kwargs: object) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": shortest_edge}, crop_size={"height": size, "width": size}, **kwargs
    )


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < TOLERANCE


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_matches_clip_processor(width: int, height: int) -> None:
    image = photo_like(width, height, seed=width * height)
    assert_close(preprocess(image, ImageProcessing()), hf_pixels(clip_processor(), image))


@pytest.mark.parametrize(
    ("size", "shortest_edge", "resample"),
    [(224, 256, Image.Resampling.BICUBIC), (224, 200, Image.Resampling.BICUBIC), (224, 224, Image.Resampling.BILINEAR)],
)
def test_matches_clip_processor_with_other_settings(size: int, shortest_edge: int, resample: Image.Resampling) -> None:
    # shortest_edge < size makes the centre crop pad, which must land where transformers pads.
    spec = ImageProcessing(
        size=size, shortest_edge=shortest_edge, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125), resample=resample
    )
    processor = clip_processor(
        size, shortest_edge, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.25, 0.125], resample=resample
    )
    for width, height in [(301, 457), (640, 480)]:
        image = photo_like(width, height, seed=size + width)
        assert_close(preprocess(image, spec), hf_pixels(processor, image))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_pad_to_square_matches_llava_processor(width: int, height: int) -> None:
    image = photo_like(width, height, seed=width + height)
    processor = LlavaImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True
    )
    assert_close(preprocess(image, ImageProcessing(pad_to_square=True)), hf_pixels(processor, image))


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's original helper (llava/mm_utils.py), written out independently."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


@pytest.mark.parametrize(("width", "height"), [(640, 480), (333, 500), (120, 90)])
def test_pad_to_square_matches_original_llava_recipe(width: int, height: int) -> None:
    image = photo_like(width, height, seed=7)
    background = tuple(int(m * 255) for m in (0.48145466, 0.4578275, 0.40821073))
    reference = hf_pixels(clip_processor(), expand2square(image, background))
    assert_close(preprocess(image, ImageProcessing(pad_to_square=True)), reference)


def test_batch_matches_processor_on_mixed_sizes() -> None:
    images = [photo_like(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    reference = np.asarray(clip_processor()(images=images, return_tensors="np")["pixel_values"])
    ours = preprocess_batch(images, ImageProcessing())
    assert ours.shape == (len(SIZES), 3, 336, 336)
    assert np.abs(ours - reference).max() < TOLERANCE


def test_empty_batch_has_batch_dimension_zero() -> None:
    assert preprocess_batch([], ImageProcessing(size=224)).shape == (0, 3, 224, 224)


def test_jpeg_round_trip_matches_processor() -> None:
    data = encode(photo_like(500, 375, seed=3), "JPEG")
    reference = hf_pixels(clip_processor(), Image.open(io.BytesIO(data)))
    assert_close(preprocess(load_image(data), ImageProcessing()), reference)


def real_photograph() -> Path:
    """Grace Hopper's portrait, a real JPEG photograph that matplotlib ships in its sample data."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


# Crops of the photograph (left, top, right, bottom): whole, wide, tall, smaller than the crop, odd.
PHOTO_BOXES = [None, (0, 100, 512, 300), (100, 0, 250, 600), (50, 50, 250, 190), (3, 7, 404, 344)]


@pytest.mark.parametrize("box", PHOTO_BOXES)
def test_real_photograph_matches_processors(box: tuple[int, int, int, int] | None) -> None:
    padding = LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True)
    with Image.open(real_photograph()) as original:
        photo = original.convert("RGB") if box is None else original.convert("RGB").crop(box)
    plain, padded = hf_pixels(clip_processor(), photo), hf_pixels(padding, photo)
    assert_close(preprocess(photo, ImageProcessing()), plain)
    assert_close(preprocess(photo, ImageProcessing(pad_to_square=True)), padded)
    if box is None:  # and through the file decoder
        assert_close(preprocess(load_image(real_photograph()), ImageProcessing()), plain)


def rgba_image() -> Image.Image:
    image = photo_like(96, 64, seed=11).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))
    image.putalpha(Image.fromarray(alpha))
    return image


@pytest.mark.parametrize(
    "make",
    [
        lambda: photo_like(96, 64).convert("P", palette=Image.Palette.ADAPTIVE),
        lambda: photo_like(96, 64).convert("L"),
        lambda: photo_like(96, 64).convert("CMYK"),
        lambda: photo_like(96, 64).convert("1"),
        rgba_image,
        lambda: rgba_image().convert("LA"),
    ],
    ids=["P", "L", "CMYK", "1", "RGBA", "LA"],
)
def test_any_mode_matches_processor_on_the_same_image(make: Callable[[], Image.Image]) -> None:
    image = make()
    format = "JPEG" if image.mode == "CMYK" else "PNG"
    data = encode(image, format)
    loaded = load_image(data)
    assert loaded.mode == "RGB"
    assert_close(
        preprocess(loaded, ImageProcessing(size=64, shortest_edge=64)),
        hf_pixels(clip_processor(64, 64), Image.open(io.BytesIO(data))),
    )


def test_transparency_is_composited_onto_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.all(np.asarray(load_image(encode(transparent, "PNG"))) == 255)


def test_palette_with_transparent_index_is_composited_onto_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    assert np.all(np.asarray(load_image(buffer.getvalue())) == 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (4, 1))
    loaded = np.asarray(load_image(encode(Image.fromarray(ramp), "PNG")))
    assert loaded.shape == (4, 128, 3)
    expected = ramp.astype(np.float64) / 257
    assert np.abs(loaded[..., 0] - expected).max() <= 0.5
    assert np.array_equal(loaded[..., 0], loaded[..., 2])


def test_exif_orientation_is_applied() -> None:
    pixels = np.asarray(photo_like(40, 20, seed=5))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    assert np.array_equal(np.asarray(load_image(buffer.getvalue())), np.rot90(pixels, k=-1))


def test_load_image_from_path(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    photo_like(30, 20).save(path)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(photo_like(30, 20)))


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(ValueError, match=r"nowhere\.jpg: image file not found"):
        load_image(missing)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_file_error_names_the_path(tmp_path: Path, format: str) -> None:
    data = encode(photo_like(200, 150), format)
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_image(path)


@pytest.mark.parametrize("data", [b"", b"certainly not an image", encode(photo_like(10, 10), "PNG")[:40]])
def test_bytes_that_are_not_an_image_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=re.escape(f"<{len(data)} bytes of image data>")):
        load_image(data)


def write_config(folder: Path, config: dict[str, object]) -> Path:
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def test_from_hf_reads_a_config_saved_by_transformers(tmp_path: Path) -> None:
    settings = dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4], resample=Image.Resampling.BILINEAR)
    saved = LlavaImageProcessorPil(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_pad=True, **settings
    )
    saved.save_pretrained(tmp_path)
    spec = ImageProcessing.from_hf(tmp_path)
    assert spec == ImageProcessing(224, 256, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), Image.Resampling.BILINEAR, pad_to_square=True)
    image = photo_like(300, 200, seed=9)
    assert_close(preprocess(image, spec), hf_pixels(LlavaImageProcessorPil.from_pretrained(tmp_path), image))


def test_from_hf_accepts_old_integer_sizes_and_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, {"crop_size": 224, "size": 224, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    spec = ImageProcessing.from_hf(tmp_path)
    assert (spec.size, spec.shortest_edge, spec.resample, spec.pad_to_square) == (
        224,
        224,
        Image.Resampling.BICUBIC,
        False,
    )


VALID = {
    "crop_size": {"height": 336, "width": 336},
    "size": {"shortest_edge": 336},
    "image_mean": [0.5] * 3,
    "image_std": [0.5] * 3,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crop_size": None}, "missing key 'crop_size'"),
        ({"image_std": None}, "missing key 'image_std'"),
        ({"crop_size": "336"}, "'crop_size' must be"),
        ({"crop_size": {"height": 336, "width": 224}}, "'crop_size' must be"),
        ({"size": {"longest_edge": 336}}, "'size' must be"),
        ({"size": True}, "'size' must be"),
        ({"image_mean": [0.5, 0.5]}, "'image_mean' must be a list of 3 numbers"),
        ({"resample": "bicubic"}, "'resample' must be"),
        ({"do_pad": "yes"}, "'do_pad' must be true or false"),
        ({"do_center_crop": False}, "'do_center_crop' must be true"),
        ({"rescale_factor": 1 / 127.5}, "'rescale_factor' must be 1/255"),
    ],
)
def test_from_hf_errors_name_the_file_and_key(tmp_path: Path, change: dict[str, object], message: str) -> None:
    config = {key: value for key, value in {**VALID, **change}.items() if value is not None}
    write_config(tmp_path, config)
    with pytest.raises(ValueError, match=message) as caught:
        ImageProcessing.from_hf(tmp_path)
    assert "preprocessor_config.json" in str(caught.value)


def test_from_hf_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json: not found"):
        ImageProcessing.from_hf(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: not valid JSON"):
        ImageProcessing.from_hf(tmp_path)


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        ImageProcessing(size=0)
    with pytest.raises(ValueError, match="3 values"):
        ImageProcessing(mean=(0.5, 0.5))  # type: ignore[arg-type]
