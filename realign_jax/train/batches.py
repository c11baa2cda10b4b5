"""The configured data as the step wants it: source + encoder + Grain pipeline for record
sources, or the random smoke-test pairs (`data.source='random'`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from realign_jax.data import images as image_ops
from realign_jax.data import loader, prompting, random_pairs
from realign_jax.data.batching import BatchShape, parse_buckets
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.sources import open_source
from realign_jax.models.config import LlavaConfig
from realign_jax.settings.keys import replace
from realign_jax.settings.runs import TrainSettings


def side_files_folder(settings: TrainSettings) -> str:
    """The folder whose tokenizer and processor config the run reads ('' when neither is set)."""
    return settings.data.tokenizer or settings.model.path


def image_processing(settings: TrainSettings, model: LlavaConfig) -> image_ops.ImageProcessing:
    """The preprocessing the run's images go through (the export's processor files describe it):
    the side-file folder's processor config, or plain CLIP at the tower's size when it has none
    or there is no folder (random pairs); `data.pad_to_square` true/false overrides its padding
    (llava-hf's LLaVA-1.5 folders say CLIP, without the padding LLaVA-1.5 was trained with)."""
    folder, size = side_files_folder(settings), model.vision.image_size
    if folder:
        processing = image_ops.ImageProcessing.for_checkpoint(folder, size)
    else:
        processing = image_ops.ImageProcessing(size=size, shortest_edge=size)
    if settings.data.pad_to_square == "auto":
        return processing
    return dataclasses.replace(processing, pad_to_square=settings.data.pad_to_square == "true")


def make_encoder(settings: TrainSettings, model: LlavaConfig) -> ExampleEncoder:
    """Records -> the rows the objective reads, with the checkpoint's tokenizer and image
    preprocessing (checked against the model: the image token must be the model's)."""
    data, layout = settings.data, settings.layout
    folder = side_files_folder(settings)
    if not folder:
        raise ValueError(f"data.source={data.source!r} needs a tokenizer: set data.tokenizer or model.path")
    tokenizer = prompting.load_tokenizer(folder)
    image_id = tokenizer.convert_tokens_to_ids(prompting.IMAGE_PLACEHOLDER)
    if image_id != model.image_token_id:
        raise ValueError(f"data.tokenizer={folder!r}: '{prompting.IMAGE_PLACEHOLDER}' is token {image_id} but the "
                         f"model's image_token_id is {model.image_token_id}")
    return ExampleEncoder(tokenizer, image_processing(settings, model), EncoderConfig(
        kinds=layout.stacked_kinds, num_images=layout.num_images, seq_len=data.seq_len,
        num_image_tokens=model.num_image_tokens, truncation=data.truncation,
        second_image=layout.second_image or "rejected_image",
        ref_logps="required" if settings.reference == "precomputed" else "ignored",
        noise_form=data.image_noise_form))


def with_epochs_as_steps(settings: TrainSettings) -> TrainSettings:
    """`train.epochs > 0`: the settings with `train.steps = ceil(epochs x records / batch_size)`,
    counting every record of the source (a skipped bad record still counts). Resolved before
    anything reads the steps: the learning-rate schedule ends where the last epoch does."""
    epochs = settings.train.epochs
    if not epochs:
        return settings
    data = settings.data
    records = data.num_examples if data.source == "random" else len(open_source(data))
    steps = max(1, math.ceil(epochs * records / settings.train.batch_size))
    if jax.process_index() == 0:
        print(f"train.epochs={epochs:g} over {records} records at train.batch_size={settings.train.batch_size}: "
              f"{steps} steps", flush=True)
    return replace(settings, train__steps=steps)


def make_dataset(settings: TrainSettings, model: LlavaConfig) -> Any:
    """The batches of this process for the configured source."""
    data, batch_size = settings.data, settings.train.batch_size
    if data.source != "random":
        return loader.dataset(
            open_source(data), make_encoder(settings, model), batch_size, seed=data.seed,
            on_bad_record=data.on_bad_record, shard_index=jax.process_index(), shard_count=jax.process_count(),
            workers=data.workers, cache_mb=data.cache_mb)
    return random_pairs.dataset(random_pairs_recipe(settings, model, data.num_examples), batch_size,
                                shard_index=jax.process_index(), shard_count=jax.process_count())


def random_pairs_recipe(settings: TrainSettings, model: LlavaConfig,
                        num_examples: int) -> random_pairs.RandomPairsRecipe:
    """The random smoke-test pairs (`data.source='random'`) in the layout the encoder writes for
    this objective and model."""
    layout = settings.layout
    return random_pairs.RandomPairsRecipe(
        kinds=layout.stacked_kinds, num_images=layout.num_images, seq_len=settings.data.seq_len,
        vocab_size=model.text.vocab_size, image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens, image_size=model.vision.image_size,
        num_examples=num_examples, seed=settings.data.seed)


def batch_shape(settings: TrainSettings, model: LlavaConfig, row_multiple: int,
                micro_batches: int | None = None) -> BatchShape:
    """How each host batch is shaped before the step (data/batching.py `shape_batch`): packed
    (`data.packing`, `data.share_prefix`, `data.pack_len`), per micro-batch of
    `train.grad_accum` unless `micro_batches` says otherwise (a reference pass runs the whole
    batch at once), or trimmed to its length bucket. The random smoke-test pairs always run at
    seq_len unless packed. `row_multiple`: Trainer.packed_row_multiple()."""
    data = settings.data
    return BatchShape(
        layout=settings.layout, num_image_tokens=model.num_image_tokens, image_token_id=model.image_token_id,
        buckets=parse_buckets(data.length_buckets if data.source != "random" else "", data.seq_len),
        packing=data.packing, share_prefix=data.share_prefix, pack_len=data.pack_len,
        micro_batches=settings.train.grad_accum if micro_batches is None else micro_batches, row_multiple=row_multiple)
