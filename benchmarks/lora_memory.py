"""Memory of the compiled train step: LoRA (reference = adapters off) against a step without
any reference forward (precomputed log-probs) and against full fine-tuning with a frozen copy.

    python benchmarks/lora_memory.py [--hidden 512] [--layers 2] [--batch 2]

Prints XLA's memory analysis of each compiled step (arguments, scratch, outputs aliased to
donated inputs) next to the weight bytes, on whatever backend JAX finds (CPU by default).
What to look for: LoRA's arguments ~ weights x 1.0, and its scratch equal to the
no-reference step's (the reference forward reuses the base weights); full fine-tuning's
arguments ~ weights x 4 (weights, reference copy, two Adam moments).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import train_llava  # noqa: E402

from realign_jax.models import config as model_config  # noqa: E402
from realign_jax.models.partitioning import make_mesh  # noqa: E402
from realign_jax.settings import runs as run_settings  # noqa: E402
from realign_jax.train.batches import make_dataset  # noqa: E402
from realign_jax.train.trainer import Trainer  # noqa: E402


def measure(config) -> tuple[object, int, int]:
    """XLA's memory analysis of the compiled step, all weight bytes, and trained bytes."""
    settings = run_settings.load(config)
    trainer = Trainer(settings, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state = trainer.init_state()
    host = next(iter(make_dataset(settings, trainer.model_config)))
    if settings.reference == "precomputed":
        host["ref_logps"] = np.zeros((settings.train.batch_size, len(settings.layout.kinds)), np.float32)
    compiled = trainer.compile_step(state, trainer.device_batch(host))
    weights = sum(x.nbytes for x in jax.tree.leaves((state.trainable, state.frozen)))
    return compiled.memory_analysis(), weights, sum(x.nbytes for x in jax.tree.leaves(state.trainable))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    tiny = model_config.PRESETS["tiny"]
    text = dataclasses.replace(tiny.text, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                               num_heads=args.hidden // 64, num_kv_heads=args.hidden // 64, num_layers=args.layers)
    model_config.PRESETS["bench"] = dataclasses.replace(tiny, text=text)

    def config(**changes):
        c = train_llava.get_config()
        c.model.preset, c.train.batch_size, c.data.seq_len = "bench", args.batch, 32
        for key, value in changes.items():
            section, _, name = key.rpartition(".")
            (c[section] if section else c)[name] = value
        return c

    runs = {
        "lora, reference = adapters off": config(**{"train.trainable": ""}),
        "lora, no reference (precomputed)": config(**{"train.trainable": "", "reference": "precomputed"}),
        "full fine-tuning, frozen copy": config(**{"lora.rank": 0, "reference": "frozen_copy",
                                                   "train.trainable": r"^(projector|decoder)\."}),
    }
    print(f"backend {jax.default_backend()}, decoder hidden {args.hidden}, {args.layers} layers, batch {args.batch}")
    print(f"{'step':36s} {'weights MB':>10s} {'args MB':>8s} {'args/w':>7s} {'temp MB':>8s} {'aliased MB':>10s}")
    for name, c in runs.items():
        memory, weights, _ = measure(c)
        print(f"{name:36s} {weights / 1e6:10.1f} {memory.argument_size_in_bytes / 1e6:8.1f} "
              f"{memory.argument_size_in_bytes / weights:7.2f} {memory.temp_size_in_bytes / 1e6:8.1f} "
              f"{memory.alias_size_in_bytes / 1e6:10.1f}")


if __name__ == "__main__":
    main()
