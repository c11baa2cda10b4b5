"""The configured data as the step wants it: source + encoder + Grain pipeline for record
sources, or the random smoke-test pairs (`data.source='random'`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from realign_jax.data import images as image_ops
from realign_jax.data import loader, packing, prompting, random_pairs
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.sources import open_source
from realign_jax.models.config import LlavaConfig
from realign_jax.train.settings import TrainSettings


def make_encoder(data: Any, settings: TrainSettings, model: LlavaConfig) -> ExampleEncoder:
    """Records -> the rows the objective reads, with the checkpoint's tokenizer and image
    preprocessing (checked against the model: the image token must be the model's)."""
    folder = data.tokenizer or settings.model.get("path")
    if not folder:
        raise ValueError(f"data.source={data.source!r} needs a tokenizer: set data.tokenizer or model.path")
    tokenizer = prompting.load_tokenizer(folder)
    image_id = tokenizer.convert_tokens_to_ids(prompting.IMAGE_PLACEHOLDER)
    if image_id != model.image_token_id:
        raise ValueError(f"data.tokenizer={folder!r}: '{prompting.IMAGE_PLACEHOLDER}' is token {image_id} but the "
                         f"model's image_token_id is {model.image_token_id}")
    processing = image_ops.ImageProcessing.for_checkpoint(folder, model.vision.image_size)
    return ExampleEncoder(tokenizer, processing, EncoderConfig(
        kinds=settings.layout.kinds, num_images=settings.layout.num_images, seq_len=data.seq_len,
        num_image_tokens=model.num_image_tokens, truncation=data.truncation,
        second_image=second_image(settings.layout),
        ref_logps="required" if settings.reference == "precomputed" else "ignored"))


def second_image(layout: Any) -> str:
    """What the encoder puts in image slot 1 for this layout."""
    if layout.noisy_scoring == "argmax":
        return "noised"
    return "cropped" if layout.alt_image == "crop" else "rejected_image"


def make_dataset(data: Any, settings: TrainSettings, model: LlavaConfig) -> Any:
    """The batches of this process for the configured source (`settings.parse` checked its name)."""
    if data.source != "random":
        return loader.dataset(
            open_source(data), make_encoder(data, settings, model),
            settings.batch_size, seed=data.seed, on_bad_record=data.on_bad_record, shard_index=jax.process_index(),
            shard_count=jax.process_count(), workers=data.workers,
            cache_mb=data.cache_mb)
    return random_pairs.dataset(random_pairs_recipe(data, settings, model, data.num_examples), settings.batch_size,
                                shard_index=jax.process_index(), shard_count=jax.process_count())


def random_pairs_recipe(data: Any, settings: TrainSettings, model: LlavaConfig,
                        num_examples: int) -> random_pairs.RandomPairsRecipe:
    """The random smoke-test pairs (`data.source='random'`) in the layout the encoder writes for
    this objective and model."""
    return random_pairs.RandomPairsRecipe(
        kinds=settings.layout.kinds, num_images=settings.layout.num_images, seq_len=data.seq_len,
        vocab_size=model.text.vocab_size, image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens, image_size=model.vision.image_size,
        num_examples=num_examples, seed=data.seed)


def _agreed(value: int) -> int:
    """The largest `value` of all processes (they must agree on the global shapes)."""
    if jax.process_count() > 1:
        return int(np.max(multihost_utils.process_allgather(np.int32(value))))
    return value


def to_bucket(batch: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Trim the batch to its length bucket; every process takes the longest any of them needs,
    so the global arrays agree in shape."""
    return loader.trim(batch, _agreed(loader.bucket_length(batch, buckets)))


def to_packed(batch: dict[str, np.ndarray], layout: Any, model: LlavaConfig, row_multiple: int,
              share_prefix: bool = False, pack_len: int = 0, micro_batches: int = 1) -> dict[str, np.ndarray]:
    """Pack the batch's rows (`data.packing`, `data.share_prefix`) into a multiple of
    `row_multiple` rows of `pack_len` tokens (0: the batch's row length); every process packs
    its own examples into as many rows as the fullest of them needs.

    With `micro_batches` > 1 (`train.grad_accum`) the step splits the batch strided
    (`step._micro_batches`: micro-batch m holds examples m, m + count, ...), so each
    micro-batch's examples are packed on their own, into the same number of rows, and row r of
    micro-batch m is placed at r * count + m, where the strided split finds it."""
    pack_len = pack_len or batch["input_ids"].shape[-1]
    k = len(layout.kinds)
    subs = [{key: value[m::micro_batches] for key, value in batch.items()} for m in range(micro_batches)]
    bins = []
    for sub in subs:
        groups = packing.units(sub, layout.image_slots, share_prefix, pack_len)
        bins.append([[groups[i] for i in members]
                     for members in packing.assign_rows([u.length for u in groups], pack_len)])
    rows = _agreed(-(-max(len(b) for b in bins) // row_multiple) * row_multiple)
    offset = jax.process_index() * (batch["input_ids"].shape[0] // micro_batches) * k
    packed = [packing.pack(sub, sub_bins, rows, pack_len, layout.image_slots, model.num_image_tokens,
                           model.image_token_id, offset) for sub, sub_bins in zip(subs, bins)]
    token_keys = ("input_ids", "attention_mask", "loss_mask", *packing.PACKED_KEYS)
    out = dict(batch)  # per-example arrays (images, ref_logps) stay whole: the step splits them itself
    out.update({key: np.stack([p[key] for p in packed], axis=1).reshape(rows * micro_batches, pack_len)
                for key in token_keys})
    return out


def batch_shaper(data: Any, settings: TrainSettings, trainer: Any,
                 micro_batches: int | None = None) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """What each host batch goes through before the step: packing (`data.packing`,
    `data.share_prefix`, `data.pack_len`, per micro-batch of `train.grad_accum` unless
    `micro_batches` says otherwise: a reference pass runs the whole batch at once) or
    trimming to its length bucket. The random smoke-test pairs always run at seq_len unless
    packed."""
    if data.packing:
        row_multiple = trainer.packed_row_multiple()
        share_prefix, pack_len = data.get("share_prefix", False), data.get("pack_len", 0)
        micro_batches = settings.grad_accum if micro_batches is None else micro_batches
        return lambda batch: to_packed(batch, settings.layout, trainer.model_config, row_multiple, share_prefix,
                                       pack_len, micro_batches)
    buckets = loader.parse_buckets(data.length_buckets if data.source != "random" else "", data.seq_len)
    return lambda batch: to_bucket(batch, buckets)
