"""Sequence packing against length buckets: the world's SFT step on the same batches, both ways.

    python benchmarks/packing.py [--steps 20] [--world /tmp/rdpo/world]

Takes the synthetic world's two SFT record files (a small world of 600 images is generated in
a temporary folder unless `--world` names one) and the SFT config of configs/sft_world.py
(tiny model, batch 32, seq_len 128). For each file it reads `--steps` batches once and runs
them through the compiled step twice: padded to the length buckets (`data.length_buckets`,
each batch to the shortest that holds its longest row) and packed (`data.packing=True`:
rows of 128 tokens, data/packing.py). It prints the tokens each layout computes per example,
ms/step (median, after every shape was compiled and run once) and the packed/padded ratios,
measured in this run; and the loss of the first batch both ways, which must agree.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import jax
import numpy as np

from realign_jax.data import batching, loader
from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.world import ensure_world
from realign_jax.settings import runs as run_settings
from realign_jax.data.batching import to_bucket, to_packed
from realign_jax.train.batches import make_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import common  # noqa: E402  (configs/common.py: the world's SFT recipe)
from realign_jax.train.trainer import Trainer


def median_step_ms(trainer: Trainer, state, batches: list) -> tuple[float, object]:
    """Median step time; every distinct shape is compiled and run once before timing."""
    seen = set()
    for batch in batches:
        shape = Trainer._shapes(batch)
        if shape not in seen:
            seen.add(shape)
            state, metrics = trainer.step(state, batch)
    jax.block_until_ready(state)
    times = []
    for batch in batches:
        began = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(times)), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="batches per record file")
    parser.add_argument("--world", default="", help="an existing world folder; empty = a small one in /tmp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        world = args.world or ensure_world(WorldConfig(num_train_images=600, num_eval_images=20),
                                           os.path.join(scratch, "world"))
        print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, world {world}")
        print(f"{'records':<10} {'layout':<8} {'tokens/example':>15} {'ms/step':>8} {'first loss':>11}")
        for records in ("captions", "grounding"):
            config = common.to_config(common.world_sft(records))
            config.data.path = os.path.join(world, "train", f"{records}.jsonl")
            config.data.tokenizer = os.path.join(world, "tokenizer")
            settings = run_settings.load(config)
            trainer = Trainer(settings)
            state = trainer.init_state()
            raw = [loader.take_bad_records(b, loader.BadRecordCounter())
                   for b in itertools.islice(make_dataset(settings, trainer.model_config), args.steps)]
            buckets = batching.parse_buckets(config.data.length_buckets, config.data.seq_len)
            layouts = {
                "padded": [to_bucket(b, buckets) for b in raw],
                "packed": [to_packed(b, settings.layout, trainer.model_config, trainer.packed_row_multiple())
                           for b in raw],
            }
            results = {}
            for name, host_batches in layouts.items():
                tokens = np.mean([b["input_ids"].size for b in host_batches]) / config.train.batch_size
                _, first = trainer.step(trainer.init_state(), trainer.device_batch(host_batches[0]))
                ms, state = median_step_ms(trainer, state, [trainer.device_batch(b) for b in host_batches])
                results[name] = (tokens, ms)
                print(f"{records:<10} {name:<8} {tokens:>15.1f} {ms:>8.1f} {float(first['loss']):>11.5f}")
            real = np.mean([b["attention_mask"].sum() for b in raw]) / config.train.batch_size
            (pad_tokens, pad_ms), (pack_tokens, pack_ms) = results["padded"], results["packed"]
            print(f"{records:<10} real tokens/example {real:.1f}; packed/padded: tokens "
                  f"{pack_tokens / pad_tokens:.2f}, step time {pack_ms / pad_ms:.2f} ({pad_ms / pack_ms:.2f}x faster)")


if __name__ == "__main__":
    main()
