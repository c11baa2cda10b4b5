"""POVID's diffusion noise: the schedule of docs/methods.md, applied to [0, 1] pixels before
standardisation, fresh per epoch and reproducible on resume."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_pipeline import SPEC, encoder, good_record, write_dataset

from realign_jax.data import image_noise, loader
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.records import BadRecord, from_json
from realign_jax.data.sources import JsonlSource


def test_schedule_matches_the_formula():
    steps = np.arange(1000)
    betas = [1 / (1 + np.exp(-(-6 + 12 * i / 999))) * (5e-3 - 1e-5) + 1e-5 for i in steps]
    expected = np.cumprod(1 - np.array(betas))
    np.testing.assert_allclose(image_noise.alphas_cumprod(), expected, rtol=1e-12)
    assert 0 < image_noise.alphas_cumprod()[500] < image_noise.alphas_cumprod()[0] < 1
    # POVID's t = 500: x_t = 0.863 x0 + 0.505 eps.
    abar = image_noise.alphas_cumprod()[500]
    assert np.sqrt(abar) == pytest.approx(0.863, abs=5e-4) and np.sqrt(1 - abar) == pytest.approx(0.505, abs=5e-4)
    x0, eps = np.full((1, 2, 2), 0.5, np.float32), np.random.default_rng(3).standard_normal((1, 2, 2), np.float32)
    noisy = image_noise.diffuse(x0, 500, np.random.default_rng(3))  # draws the same eps from the same stream
    np.testing.assert_allclose(noisy, 0.863017 * x0 + 0.505175 * eps, atol=1e-5)


def test_diffuse_has_the_forward_process_statistics():
    x0 = np.full((3, 200, 200), 0.5, np.float32)
    abar = image_noise.alphas_cumprod()[500]
    noisy = image_noise.diffuse(x0, 500, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert noisy.mean() == pytest.approx(np.sqrt(abar) * 0.5, abs=0.01)
    assert noisy.std() == pytest.approx(np.sqrt(1 - abar), rel=0.02)


def test_noise_spec_is_validated_naming_the_record():
    base = {"question": "Q?", "chosen": "A.", "rejected": "B."}
    assert from_json(base | {"image_noise": {"kind": "diffusion", "t": 999}}, "x:0").image_noise["t"] == 999
    for bad in ({"kind": "gaussian", "t": 5}, {"kind": "diffusion", "t": 1000}, {"kind": "diffusion", "t": 2.5}, 3):
        with pytest.raises(BadRecord, match="x:1: field 'image_noise'"):
            from_json(base | {"image_noise": bad}, "x:1")


def test_povid_second_image_is_the_noised_first_image(tokenizer, tmp_path):
    """Slot 1 under POVID's argmax scoring: slot 0's pixels in [0, 1] with the forward process
    at the record's t, then standardised; fresh in every epoch, the same for the same
    (seed, epoch, record)."""
    path = write_dataset(tmp_path, [good_record(i) | {"image_noise": {"kind": "diffusion", "t": 300}}
                                    for i in range(2)])
    config = EncoderConfig(kinds=("chosen", "rejected"), num_images=2, seq_len=64, num_image_tokens=16,
                           second_image="noised")
    noisy_encoder = ExampleEncoder(tokenizer, SPEC, config)
    record = JsonlSource(path)[0]
    a = noisy_encoder.encode(record, "r", np.random.default_rng(1))["pixel_values"]
    b = noisy_encoder.encode(record, "r", np.random.default_rng(1))["pixel_values"]
    c = noisy_encoder.encode(record, "r", np.random.default_rng(2))["pixel_values"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[1], c[1])
    clean = encoder(tokenizer, kinds=("chosen", "rejected")).encode(record, "r")["pixel_values"][0]
    np.testing.assert_array_equal(a[0], clean)
    mean = np.asarray(SPEC.mean, np.float32)[:, None, None]
    std = np.asarray(SPEC.std, np.float32)[:, None, None]
    x0, xt = clean * std + mean, a[1] * std + mean  # back to [0, 1] pixels
    abar = image_noise.alphas_cumprod()[300]
    residual = xt - np.sqrt(abar) * x0
    assert residual.std() == pytest.approx(np.sqrt(1 - abar), rel=0.05) and abs(residual.mean()) < 0.02
    # Through the pipeline: the noise differs between epochs of the same record.
    batches = iter(loader.dataset(JsonlSource(path), noisy_encoder, 1, seed=0))
    seen: dict[int, list[np.ndarray]] = {}
    for _ in range(4):
        batch = next(batches)
        seen.setdefault(int(np.round(batch["input_ids"].sum())), []).append(batch["pixel_values"][0, 1])
    for versions in seen.values():
        assert all(not np.array_equal(versions[0], v) for v in versions[1:])


def test_preprocessed_pixels_are_c_contiguous_with_and_without_noise():
    """Grain's worker processes pass only C-contiguous arrays through shared memory; anything
    else is pickled through a pipe (slow, and it stalls the workers' shutdown)."""
    from PIL import Image

    from realign_jax.data import images as image_ops

    picture = Image.new("RGB", (50, 40), (10, 120, 200))
    clean = image_ops.preprocess(picture, SPEC)
    noisy = image_ops.preprocess(picture, SPEC, lambda x: image_noise.diffuse(x, 10, np.random.default_rng(0)))
    assert clean.flags.c_contiguous and noisy.flags.c_contiguous and clean.dtype == noisy.dtype == np.float32


def test_argmax_scoring_needs_no_noisy_text(tokenizer, tmp_path):
    """Under POVID's argmax scoring the noisy answer is scored inside the chosen row, so the batch
    stacks no noisy row and a pair with only chosen and rejected (what configs/povid_pairs.py
    writes) encodes; without the argmax the noisy text is required."""
    from realign_jax.settings.runs import RowLayout

    path = write_dataset(tmp_path, [good_record(0)])
    record = JsonlSource(path)[0]
    assert record.rejected_noisy is None
    layout = RowLayout.for_objective("povid", noisy_scoring="argmax")
    assert layout.stacked_kinds == ("chosen", "rejected") and "rejected_noisy" in layout.kinds
    argmax = ExampleEncoder(tokenizer, SPEC, EncoderConfig(kinds=layout.stacked_kinds, num_images=2, seq_len=64,
                                                           num_image_tokens=16, second_image="noised"))
    example = argmax.encode(record, "r", np.random.default_rng(0))
    assert example["input_ids"].shape[0] == 2 and example["pixel_values"].shape[0] == 2
    kinds = RowLayout.for_objective("povid").stacked_kinds
    batch = ExampleEncoder(tokenizer, SPEC, EncoderConfig(kinds=kinds, num_images=1, seq_len=64, num_image_tokens=16))
    with pytest.raises(BadRecord, match="field 'rejected_noisy': is required"):
        batch.encode(record, "r")


def _torchvision_povid_noise(image, t, noise):
    """POVID's training code on one image, with torchvision's ToTensor / ToPILImage written out
    in torch ops (torchvision is not installed): `img.permute(2, 0, 1).float().div(255)`, the
    q(x_t | x_0) sample in float32, then `pic.mul(255).byte()` back to HWC uint8."""
    torch = pytest.importorskip("torch")
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, dim=0)
    x0 = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
    xt = torch.sqrt(abar)[t] * x0 + torch.sqrt(1 - abar)[t] * torch.from_numpy(noise)
    return xt.mul(255).byte().permute(1, 2, 0).numpy(), (float(torch.sqrt(abar)[t]), float(torch.sqrt(1 - abar)[t]))


def test_povid_code_form_reproduces_povid_codes_8_bit_wrap():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))  # native size, not square
    noise = rng.standard_normal((3, 37, 53), dtype=np.float32)
    ours = np.asarray(image_noise.povid_code_with(image, 500, noise))
    theirs, (a, b) = _torchvision_povid_noise(image, 500, noise)
    abar = image_noise.alphas_cumprod()[500]
    np.testing.assert_allclose([np.sqrt(abar), np.sqrt(1 - abar)], [a, b], rtol=1e-6)  # torch's float32 schedule
    # Bit for bit given the same coefficients; torch's float32 schedule (its linspace rounds per
    # CPU vector width) differs by an ulp at some steps, which moves about 5 pixels in 100,000 by
    # one level (or across the wrap).
    assert ours.shape == theirs.shape == (37, 53, 3) and ours.dtype == np.uint8
    assert (ours != theirs).mean() < 1e-3 and np.abs(ours.astype(int) - theirs.astype(int)).max() in (0, 1, 255)
    # Out-of-range values wrap rather than clamp: black under strongly negative noise turns bright.
    black = Image.new("RGB", (4, 4))
    wrapped = np.asarray(image_noise.povid_code_with(black, 500, np.full((3, 4, 4), -1.0, np.float32)))
    assert (wrapped == int(np.trunc(-np.sqrt(1 - abar) * 255)) % 256).all() and wrapped.min() >= 128


def test_povid_code_form_noises_before_padding_and_resizing(tokenizer, tmp_path):
    """Under `povid_code` the padding added for a wide image is the clean mean colour (POVID
    pads after noising); under `paper` the noise covers it."""
    import dataclasses

    from PIL import Image

    from realign_jax.data import images as image_ops

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 64, 3), dtype=np.uint8)).save(tmp_path / "w.png")
    padded = dataclasses.replace(SPEC, pad_to_square=True)
    rows = {}
    for form in image_noise.FORMS:
        record = from_json(good_record(0) | {"image": str(tmp_path / "w.png"),
                                             "image_noise": {"kind": "diffusion", "t": 500, "form": form}}, "r")
        config = EncoderConfig(kinds=("chosen", "rejected"), num_images=2, seq_len=64, num_image_tokens=16,
                               second_image="noised")
        rows[form] = ExampleEncoder(tokenizer, padded, config).encode(record, "r", np.random.default_rng(7))
    clean = rows["paper"]["pixel_values"][0]
    top = slice(0, 8)  # the square's top band is canvas, away from the resized image's edge
    np.testing.assert_array_equal(rows["povid_code"]["pixel_values"][1][:, top], clean[:, top])
    assert np.abs(rows["paper"]["pixel_values"][1][:, top] - clean[:, top]).mean() > 0.5
    # The image itself is noised by the code's pipeline: the same as noising, then preprocessing.
    expected = image_ops.preprocess(image_noise.povid_code(Image.open(tmp_path / "w.png").convert("RGB"), 500,
                                                           np.random.default_rng(7)), padded)
    np.testing.assert_array_equal(rows["povid_code"]["pixel_values"][1], expected)
    with pytest.raises(BadRecord, match="form must be one of"):
        from_json(good_record(0) | {"image_noise": {"kind": "diffusion", "t": 5, "form": "jpeg"}}, "r")
