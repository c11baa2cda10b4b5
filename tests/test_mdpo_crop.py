"""mDPO's image corruption as its code makes it: torchvision's RandomResizedCrop(scale=(0.01, 0.2))
on the model's input tensor, resized back; mdpo reads it wherever it runs; crop_per_forward draws
the reference its own crop."""

from __future__ import annotations

import importlib
import math
import os
import sys

import jax
import numpy as np
import pytest
from test_data_pipeline import SPEC, good_record, write_dataset

from realign_jax.data import images as image_ops
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.sources import JsonlSource
from realign_jax.settings.runs import RowLayout, load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
LOW, HIGH = 0.01, 0.2  # mDPO's scale
RATIO = (3 / 4, 4 / 3)  # torchvision's default ratio, which mDPO keeps


def _boxes(height, width, seeds=400):
    return [image_ops.crop_box(height, width, np.random.default_rng(seed)) for seed in range(seeds)]


@pytest.mark.parametrize("height,width", [(336, 336), (24, 40)])
def test_crop_box_keeps_1_to_20_percent_at_a_bounded_aspect_ratio(height, width):
    """torchvision's documented get_params: a box inside the image whose rounded sides come from
    an area share in [0.01, 0.2] and a width / height ratio in [3/4, 4/3], at a uniform position."""
    boxes = _boxes(height, width)
    for top, left, h, w in boxes:
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
        # each side is round(sqrt(...)): within half a pixel of the exact side
        assert (w - 0.5) * (h - 0.5) <= HIGH * height * width and (w + 0.5) * (h + 0.5) >= LOW * height * width
        assert (w - 0.5) / (h + 0.5) <= RATIO[1] and (w + 0.5) / (h - 0.5) >= RATIO[0]
    shares = np.array([h * w / (height * width) for _, _, h, w in boxes])
    assert shares.min() < 0.03 and shares.max() > 0.17 and shares.std() > 0.04  # the whole range is drawn
    aspects = np.array([w / h for *_, h, w in boxes])
    assert aspects.min() < 0.85 and aspects.max() > 1.2
    assert len({(top, left) for top, left, *_ in boxes}) > 200  # positions vary


def test_crop_box_falls_back_to_torchvisions_centre_crop():
    """No box fits in 10 tries: the whole image when its ratio is in range, else the largest
    centred box at the nearer ratio bound (round(side * 4/3) or round(side / (3/4)))."""
    assert image_ops.crop_box(1, 1, np.random.default_rng(0)) == (0, 0, 1, 1)  # 20% of a pixel rounds away
    big = dict(scale=(0.9, 1.0))
    assert image_ops.crop_box(10, 100, np.random.default_rng(0), **big) == (0, (100 - 13) // 2, 10, 13)
    assert image_ops.crop_box(100, 10, np.random.default_rng(0), **big) == ((100 - 13) // 2, 0, 13, 10)


def test_random_resized_crop_is_the_boxs_bilinear_enlargement_and_seeded():
    pixels = np.random.default_rng(0).normal(size=(3, 24, 40)).astype(np.float32)
    out = image_ops.random_resized_crop(pixels, np.random.default_rng(7))
    assert out.shape == pixels.shape and out.dtype == np.float32 and out.flags.c_contiguous
    top, left, h, w = image_ops.crop_box(24, 40, np.random.default_rng(7))
    np.testing.assert_array_equal(out, image_ops.resize_bilinear(pixels[:, top:top + h, left:left + w], 24, 40))
    np.testing.assert_array_equal(out, image_ops.random_resized_crop(pixels, np.random.default_rng(7)))
    assert not np.array_equal(out, image_ops.random_resized_crop(pixels, np.random.default_rng(8)))


def test_resize_equals_torchs_antialiased_bilinear_on_enlargements():
    """torchvision v2's resize of a tensor is `interpolate(mode='bilinear', align_corners=False,
    antialias=True)`; a crop is never larger than the tensor, so only enlargements occur."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for h, w in [(3, 5), (7, 7), (24, 40), (1, 1)]:
        crop = rng.normal(size=(3, h, w)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(torch.tensor(crop)[None], size=(24, 40), mode="bilinear",
                                                 align_corners=False, antialias=True)[0].numpy()
        np.testing.assert_allclose(image_ops.resize_bilinear(crop, 24, 40), theirs, atol=2e-5)


def _ramp_record(tmp_path):
    path = write_dataset(tmp_path, [good_record(0) | {"image": "ramp.png", "rejected_image": None}])
    from PIL import Image

    ramp = np.add.outer(np.arange(48), np.arange(80)).astype(np.uint8) * 2  # every crop looks different
    Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], -1)).save(tmp_path / "ramp.png")
    return JsonlSource(path)[0]


@pytest.mark.parametrize("num_images", [2, 3])
def test_encoder_crops_the_preprocessed_image_from_the_examples_stream(tokenizer, tmp_path, num_images):
    """Slot 1 (and slot 2 under crop_per_forward, the next draw) is the crop of the record's own
    preprocessed image; its rejected_image is not read."""
    record = _ramp_record(tmp_path)
    config = EncoderConfig(kinds=("chosen", "rejected", "chosen_alt_image"), num_images=num_images, seq_len=64,
                           num_image_tokens=16, second_image="cropped")
    pixels = ExampleEncoder(tokenizer, SPEC, config).encode(record, "r", np.random.default_rng(4))["pixel_values"]
    clean = image_ops.preprocess(image_ops.load_image(record.image), SPEC)
    np.testing.assert_array_equal(pixels[0], clean)
    rng = np.random.default_rng(4)
    for slot in range(1, num_images):
        np.testing.assert_array_equal(pixels[slot], image_ops.random_resized_crop(clean, rng))
    assert len({pixels[slot].tobytes() for slot in range(num_images)}) == num_images


def test_mdpo_reads_the_crop_wherever_it_runs():
    assert RowLayout.for_objective("mdpo").second_image == "cropped"
    assert RowLayout.for_objective("rdpo").second_image == "rejected_image"
    assert RowLayout.for_objective("rdpo", alt_image="crop").num_images == 2
    with pytest.raises(ValueError, match="loss.alt_image='rejected_image' cannot go with loss.name='mdpo'"):
        RowLayout.for_objective("mdpo", alt_image="rejected_image")
    with pytest.raises(ValueError, match="loss.alt_image='crop' needs a loss with a visual term"):
        RowLayout.for_objective("dpo", alt_image="crop")


@pytest.mark.parametrize("name,arg,stage", [("train_llava", "loss=mdpo", None), ("mdpo_llava", None, "stage1"),
                                            ("paper_recipes", "method=mdpo", None)])
def test_every_mdpo_config_crops(name, arg, stage):
    config = importlib.import_module(name).get_config(arg)
    if stage is None:
        config.model.path = "/somewhere"
    settings = load(config)
    settings = getattr(settings.align, stage) if stage else settings
    assert (settings.loss.name, settings.layout.second_image, settings.layout.num_images) == ("mdpo", "cropped", 2)


def test_crop_per_forward_gives_the_reference_its_own_slot():
    policy = RowLayout.for_objective("mdpo", crop_per_forward=True)
    assert policy.num_images == 3 and policy.image_slots == (0, 0, 1)
    assert policy.for_reference().image_slots == (0, 0, 2)
    assert RowLayout.for_objective("mdpo").for_reference().image_slots == (0, 0, 1)  # default: one shared crop
    with pytest.raises(ValueError, match="loss.crop_per_forward=True needs the crop"):
        RowLayout.for_objective("rdpo", crop_per_forward=True)
    config = importlib.import_module("train_llava").get_config("loss=mdpo")
    config.loss.crop_per_forward, config.data.packing = True, True
    with pytest.raises(ValueError, match="data.packing=True cannot go with loss.crop_per_forward=True"):
        load(config)


def _first_step_visual_reward(crop_per_forward):
    """beta * mean D(y_w | crop) at step 0, when the policy still equals the reference (LoRA B = 0)."""
    from realign_jax.train.batches import make_dataset
    from realign_jax.train.trainer import Trainer

    config = importlib.import_module("train_llava").get_config("loss=mdpo")
    config.data.seq_len, config.data.num_examples, config.train.batch_size = 32, 8, 8
    config.loss.crop_per_forward = crop_per_forward
    settings = load(config)
    trainer = Trainer(settings)
    batch = next(iter(make_dataset(settings, trainer.model_config)))
    assert batch["pixel_values"].shape[1] == settings.layout.num_images
    _, metrics = trainer.step(trainer.init_state(), trainer.device_batch(batch))
    return float(jax.device_get(metrics["visual/rewards/rejected"]))


def test_reference_scores_its_own_crop_under_crop_per_forward():
    """One shared crop: policy and reference agree on it at step 0 (D = 0). Per forward: the
    reference scores y_w under a different crop, so D(y_w | crop) is no longer 0."""
    assert _first_step_visual_reward(False) == pytest.approx(0.0, abs=1e-6)
    assert not math.isclose(_first_step_visual_reward(True), 0.0, abs_tol=1e-4)
