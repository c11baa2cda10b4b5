"""An export whose source has only a tokenizer (the synthetic world's) still loads with
`transformers.AutoProcessor`, and that processor gives the pixels and token ids training used.
Files the source does have are copied unchanged."""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from transformers import AutoProcessor, LlavaImageProcessorPil, LlavaProcessor

from realign_jax.data import prompting
from realign_jax.data.images import ImageProcessing, preprocess
from realign_jax.models import hf
from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel
from realign_jax.settings import runs as run_settings
from realign_jax.synthetic.tokenizer import conversation_text, save_tokenizer, train_tokenizer
from realign_jax.train.trainer import Trainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import train_llava  # noqa: E402

MESSAGES = [{"role": "user", "content": f"{prompting.IMAGE_PLACEHOLDER}\nWhat is ab?"},
            {"role": "assistant", "content": "It is bab."}]
# Landscape, portrait, square, smaller than the crop and a sliver: every resize and pad branch.
IMAGE_SIZES = ((40, 30), (23, 64), (32, 32), (9, 12), (120, 7))


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic world's tokenizer alone (no processor files), 256 ids with `<image>` last as
    the tiny preset expects: enough distinct words that BPE learns every id."""
    texts = [conversation_text(f"What is {a}{b}?", f"It is {b}{a}{b}.")
             for a in string.ascii_letters for b in string.ascii_lowercase]
    tokenizer = train_tokenizer(texts, vocab_size=preset("tiny").text.vocab_size)
    assert tokenizer.convert_tokens_to_ids(prompting.IMAGE_PLACEHOLDER) == preset("tiny").image_token_id
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    save_tokenizer(tokenizer, folder)
    assert sorted(os.listdir(folder)) == ["tokenizer.json", "tokenizer_config.json"]
    return folder


def _export(path: Path, source: str, processing: ImageProcessing, strategy: str = "default") -> str:
    model = LlavaModel(preset("tiny", vision_feature_select_strategy=strategy), rngs=nnx.Rngs(0))
    hf.save_pretrained(model, str(path), copy_side_files_from=source, image_processing=processing)
    return str(path)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES]


def test_export_loads_as_a_llava_processor_with_the_chat_template(tokenizer_folder: str, tmp_path: Path) -> None:
    export = _export(tmp_path, tokenizer_folder, ImageProcessing(size=32, shortest_edge=32))
    processor = AutoProcessor.from_pretrained(export)
    assert isinstance(processor, LlavaProcessor)
    assert processor.chat_template == prompting.load_tokenizer(tokenizer_folder).chat_template
    assert processor.apply_chat_template([{"role": "user", "content": MESSAGES[0]["content"]}],
                                         add_generation_prompt=True, tokenize=False) \
        == prompting.render_conversation(processor.tokenizer, MESSAGES[:1], add_generation_prompt=True)


@pytest.mark.parametrize("processing", [
    ImageProcessing(size=32, shortest_edge=32),
    ImageProcessing(size=32, shortest_edge=32, pad_to_square=True),  # LLaVA-1.5's expand2square
    ImageProcessing(size=32, shortest_edge=40, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                    resample=Image.Resampling.BILINEAR, pad_to_square=True),
], ids=["clip", "pad", "other-settings"])
def test_pixel_values_equal_the_project_preprocessing(tokenizer_folder: str, tmp_path: Path,
                                                     processing: ImageProcessing) -> None:
    export = _export(tmp_path, tokenizer_folder, processing)
    # The PIL backend is the one data/images.py reproduces (transformers picks torchvision when installed).
    processor = AutoProcessor.from_pretrained(export, backend="pil")
    images = _images()
    got = processor.image_processor(images=images, return_tensors="np")["pixel_values"]
    want = np.stack([preprocess(image, processing) for image in images])
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert ImageProcessing.from_hf(export) == processing  # the project reads its own file back


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_image_prompt_ids_equal_the_project_encoder(tokenizer_folder: str, tmp_path: Path, strategy: str) -> None:
    export = _export(tmp_path, tokenizer_folder, ImageProcessing(size=32, shortest_edge=32), strategy)
    config = hf.config_from_hf(export)
    processor = AutoProcessor.from_pretrained(export)
    text = prompting.render_conversation(processor.tokenizer, MESSAGES, add_generation_prompt=False)
    ids = processor(text=text, images=_images()[:1], return_tensors="np")["input_ids"][0].tolist()
    assert ids.count(config.image_token_id) == config.num_image_tokens == 16 + (strategy == "full")
    tokenizer = prompting.load_tokenizer(tokenizer_folder)
    assert ids == prompting.encode_prompt_response(tokenizer, MESSAGES, prompting.IMAGE_PLACEHOLDER,
                                                   config.num_image_tokens).input_ids


def test_processor_files_of_the_source_are_kept_byte_for_byte(tokenizer_folder: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in os.listdir(tokenizer_folder):
        (source / name).write_bytes(Path(tokenizer_folder, name).read_bytes())
    LlavaImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 32, "width": 32}, do_pad=True,
                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(source)
    original = (source / "preprocessor_config.json").read_bytes()
    export = _export(tmp_path / "export", str(source), ImageProcessing(size=32, shortest_edge=32))
    assert Path(export, "preprocessor_config.json").read_bytes() == original
    # processor_config.json, which the source lacks, is still written: the processor loads.
    processor = AutoProcessor.from_pretrained(export, backend="pil")
    assert isinstance(processor, LlavaProcessor)
    assert processor.image_processor.size["shortest_edge"] == 48


def test_trainer_export_describes_the_preprocessing_the_run_used(tokenizer_folder: str, tmp_path: Path) -> None:
    """What train/loop.py's export writes when data.tokenizer is the world's tokenizer folder."""
    config = train_llava.get_config()
    config.data.tokenizer = tokenizer_folder
    trainer = Trainer(run_settings.load(config))
    trainer.export(trainer.init_state(), str(tmp_path), copy_side_files_from=tokenizer_folder)
    assert isinstance(AutoProcessor.from_pretrained(str(tmp_path)), LlavaProcessor)
    size = trainer.model_config.vision.image_size
    assert ImageProcessing.from_hf(tmp_path) == ImageProcessing.for_checkpoint(tokenizer_folder, size)
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["patch_size"] == trainer.model_config.vision.patch_size


@pytest.mark.parametrize("pad", ["auto", "true", "false"])
def test_data_pad_to_square_sets_the_runs_padding_and_its_export(tokenizer_folder: str, tmp_path: Path,
                                                               pad: str) -> None:
    """llava-hf's LLaVA-1.5 folders describe CLIP without the pad-to-square LLaVA-1.5 trained with:
    `data.pad_to_square=true` pads anyway, and the export says so; `auto` follows the folder."""
    import shutil

    from realign_jax.models.processor_files import PREPROCESSOR_CONFIG, image_processor_config
    from realign_jax.train.batches import image_processing, make_encoder

    source = tmp_path / "source"
    shutil.copytree(tokenizer_folder, source)
    size = preset("tiny").vision.image_size
    plain = ImageProcessing(size=size, shortest_edge=size)
    (source / PREPROCESSOR_CONFIG).write_text(json.dumps(image_processor_config(plain)))
    config = train_llava.get_config()
    config.data.tokenizer, config.data.pad_to_square = str(source), pad
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    processing = image_processing(settings, trainer.model_config)
    assert processing.pad_to_square is (pad == "true")
    assert make_encoder(settings, trainer.model_config).processing == processing  # what training reads
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 60, 3), dtype=np.uint8))
    padded = preprocess(wide, ImageProcessing(size=size, shortest_edge=size, pad_to_square=True))
    assert np.array_equal(preprocess(wide, processing), padded) is (pad == "true")
    trainer.export(trainer.init_state(), str(tmp_path / "export"), copy_side_files_from=str(source))
    exported = ImageProcessing.from_hf(tmp_path / "export")
    assert exported.pad_to_square is (pad == "true")
    if pad == "auto":  # the source's own file, byte for byte
        assert (tmp_path / "export" / PREPROCESSOR_CONFIG).read_bytes() == (source / PREPROCESSOR_CONFIG).read_bytes()
