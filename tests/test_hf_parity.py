"""Logit, generation and checkpoint parity with transformers' LlavaForConditionalGeneration."""

import os

import numpy as np
import pytest
import torch

from conftest import IMAGE_TOKEN_ID
from realign_jax.models import generation, hf


def _inputs(model, batch=2, text_len=7, seed=0):
    """A prompt of BOS + image placeholders + text per row, and random pixels."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    n_img = patches + (1 if cfg.vision_feature_select_strategy == "full" else 0)
    text = rng.integers(3, 100, size=(batch, text_len))
    ids = np.concatenate([np.ones((batch, 1), int), np.full((batch, n_img), IMAGE_TOKEN_ID), text], axis=1)
    pixels = rng.normal(size=(batch, 3, cfg.vision_config.image_size, cfg.vision_config.image_size))
    return ids.astype(np.int32), pixels.astype(np.float32)


def test_checkpoint_is_sharded_when_asked(hf_checkpoint):
    path, _, variant = hf_checkpoint
    sharded = os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    assert sharded == (variant == "llama_gqa")


def test_logits_match_transformers(hf_checkpoint):
    path, torch_model, _ = hf_checkpoint
    ids, pixels = _inputs(torch_model)
    ours = np.asarray(hf.load_pretrained(path)(ids, pixels))
    with torch.no_grad():
        ref = torch_model(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(pixels)).logits.numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_logits_match_with_padding(hf_checkpoint):
    """Right padding: real positions agree with transformers given the same mask."""
    path, torch_model, _ = hf_checkpoint
    ids, pixels = _inputs(torch_model)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    ours = np.asarray(hf.load_pretrained(path)(ids, pixels, attention_mask=mask))
    with torch.no_grad():
        ref = torch_model(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(pixels),
                          attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(hf_checkpoint):
    path, torch_model, _ = hf_checkpoint
    ids, pixels = _inputs(torch_model, seed=1)
    steps = 12
    sampling = generation.SamplingConfig(max_new_tokens=steps, eos_token_ids=(2,), pad_token_id=0)
    out = generation.generate(hf.load_pretrained(path), ids, sampling, pixel_values=pixels)
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(pixels),
                                   attention_mask=torch.ones(ids.shape, dtype=torch.long), do_sample=False,
                                   max_new_tokens=steps, eos_token_id=2, pad_token_id=0).numpy()[:, ids.shape[1]:]
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(ids.shape[0]):
        n = int(lengths[row])
        np.testing.assert_array_equal(tokens[row, :n], ref[row, :n])


def test_save_pretrained_round_trips_bit_exactly(hf_checkpoint, tmp_path):
    import transformers

    path, torch_model, _ = hf_checkpoint
    hf.save_pretrained(hf.load_pretrained(path), str(tmp_path), max_shard_bytes=30_000)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")  # several shards were written
    reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    original, again = torch_model.state_dict(), reloaded.state_dict()
    assert set(original) == set(again)
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype, name
        assert torch.equal(again[name], tensor), name


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_weights_are_as_readable_as_the_config(hf_checkpoint, tmp_path, umask):
    """Every exported file gets the mode the umask gives (safetensors alone writes 0600)."""
    path, _, _ = hf_checkpoint
    model = hf.load_pretrained(path)
    previous = os.umask(umask)
    try:
        hf.save_pretrained(model, str(tmp_path / "one"))
        hf.save_pretrained(model, str(tmp_path / "shards"), max_shard_bytes=30_000)
    finally:
        os.umask(previous)
    for folder in ("one", "shards"):
        modes = {name: os.stat(tmp_path / folder / name).st_mode & 0o777 for name in os.listdir(tmp_path / folder)}
        assert any(name.endswith(".safetensors") for name in modes)
        assert set(modes.values()) == {0o666 & ~umask}, modes


def test_config_round_trip(hf_checkpoint):
    path, _, _ = hf_checkpoint
    config = hf.config_from_hf(path)
    back = hf.config_to_hf(config)
    import transformers

    original = transformers.AutoConfig.from_pretrained(path)
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "image_token_id"):
        assert getattr(back, key) == getattr(original, key), key
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size"):
        assert getattr(back.text_config, key) == getattr(original.text_config, key), key


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_pretrained(str(tmp_path))


def test_bfloat16_export_and_import(hf_checkpoint, tmp_path):
    """Real checkpoints ship in half precision: a bf16 folder loads into fp32 parameters exactly."""
    import ml_dtypes

    path, _, _ = hf_checkpoint
    model = hf.load_pretrained(path)
    hf.save_pretrained(model, str(tmp_path), dtype=ml_dtypes.bfloat16)
    reloaded = hf.load_pretrained(str(tmp_path), param_dtype="float32")
    original = np.asarray(model.decoder.layers.q_proj.kernel[...])
    again = np.asarray(reloaded.decoder.layers.q_proj.kernel[...])
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again, original.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert not np.array_equal(again, original)  # the round to bf16 really happened
