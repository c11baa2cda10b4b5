"""Throughput, utilisation and memory of one compiled preference step on random weights and
random-token pairs, on whatever backend JAX finds.

    python benchmarks/step_throughput.py --preset llava-1.5-7b --loss rdpo --batch 8 --seq-len 768 \\
        --lora-rank 128 --dtype bfloat16 --remat full          # one H100/H200
    python benchmarks/step_throughput.py                        # tiny shape, any CPU

Prints pairs/s and tokens/s (tokens = every row's padded length, the work the step does),
peak device memory, and utilisation against a bf16 matmul peak measured in the same run.

FLOP accounting (matmul FLOPs from `models/accounting.py`, 2 per multiply-add): per example,
each of the loss's K rows costs one decoder + projector forward for the policy, a backward for
the policy (1x forward when the base is frozen under LoRA: only activation gradients; 2x for
full fine-tuning: activation and weight gradients) and one forward for the reference (none
when the reference is precomputed). The frozen vision tower runs forward once per distinct
image of an example (1, or 2 with a retrieved / noised image). LoRA's own matmuls are left
out (under 1% at rank 128 on 7B), so utilisation is of the FLOPs the step really needs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import train_llava  # noqa: E402

from realign_jax.models.accounting import forward_flops  # noqa: E402
from realign_jax.train import settings as train_settings  # noqa: E402
from realign_jax.train.inputs import make_dataset  # noqa: E402
from realign_jax.train.trainer import Trainer  # noqa: E402


def matmul_peak(size: int, repeats: int = 10) -> float:
    """Measured bf16 matmul FLOP/s of this device: the ceiling utilisation is reported against."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        f(a, b).block_until_ready()
    began = time.perf_counter()
    for _ in range(repeats):
        out = f(a, b)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - began)


def step_flops(trainer: Trainer, seq_len: int, batch: int) -> float:
    """The FLOPs one step needs, as the module docstring counts them."""
    s, config = trainer.settings, trainer.model_config
    per_row = forward_flops(config, seq_len - config.num_image_tokens)
    rows = len(s.layout.kinds)
    backward = 1 if s.lora.rank and not s.trainable.startswith("^(projector|decoder)") else 2
    reference = 0 if s.reference in ("precomputed", "none") else 1
    text = (per_row.decoder + per_row.projector) * rows * (1 + backward + reference)
    return batch * (text + per_row.vision * s.layout.num_images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--loss", default="rdpo")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per row, the image's included")
    parser.add_argument("--lora-rank", type=int, default=8, help="0 = full fine-tuning with a frozen copy")
    parser.add_argument("--dtype", default="float32", help="compute and weight dtype")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--attention", default="xla", choices=("xla", "cudnn"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after 2 untimed")
    parser.add_argument("--peak-size", type=int, default=0, help="matmul size for the peak; 0 = by backend")
    args = parser.parse_args()

    config = train_llava.get_config(f"loss={args.loss}")
    config.model.preset, config.model.remat, config.model.attention_impl = args.preset, args.remat, args.attention
    config.model.dtype = config.model.param_dtype = args.dtype
    config.data.seq_len, config.data.num_examples = args.seq_len, args.batch * (args.steps + 2)
    config.train.batch_size, config.train.steps = args.batch, args.steps + 2
    config.lora.rank = args.lora_rank
    config.lora.alpha = 2.0 * args.lora_rank
    if args.lora_rank == 0:
        config.reference, config.train.trainable = "frozen_copy", r"^(projector|decoder)\."
    settings = train_settings.parse(config)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x {jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")

    began = time.perf_counter()
    trainer = Trainer(settings)
    state = trainer.init_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - began
    dataset = make_dataset(config.data, settings, trainer.model_config)
    batches = [trainer.device_batch(b) for b in itertools.islice(dataset, args.steps + 2)]
    began = time.perf_counter()
    compiled = trainer.compile(state, batches[0])
    compile_s = time.perf_counter() - began
    memory = compiled.memory_analysis()

    for batch in batches[:2]:
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for batch in batches[2:2 + args.steps]:
        began = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - began)
    step_s = float(np.median(times))

    peak = matmul_peak(args.peak_size or (8192 if jax.default_backend() == "gpu" else 1024))
    flops = step_flops(trainer, args.seq_len, args.batch)
    rows = len(settings.layout.kinds)
    print(f"shape: {args.preset}, loss {args.loss} ({rows} rows/example, {settings.layout.num_images} image(s)), "
          f"batch {args.batch}, seq_len {args.seq_len}, {args.dtype}, remat {args.remat}, "
          f"{'LoRA r=' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}, reference {settings.reference}")
    print(f"init {init_s:.1f} s, compile {compile_s:.1f} s; loss {float(metrics['loss']):.4f} (finite: "
          f"{bool(np.isfinite(float(metrics['loss'])))})")
    print(f"step {step_s * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
    print(f"pairs/s {args.batch / step_s:.2f}, tokens/s {args.batch * rows * args.seq_len / step_s:,.0f}")
    print(f"step FLOPs {flops / 1e12:.2f} T -> {flops / step_s / 1e12:.1f} TFLOP/s; measured bf16 matmul peak "
          f"{peak / 1e12:.1f} TFLOP/s; utilisation {flops / step_s / peak:.1%}")
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"peak device memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB of "
              f"{stats.get('bytes_limit', 0) / 2**30:.1f} GiB")
    if memory is not None:
        print(f"compiled step: arguments {memory.argument_size_in_bytes / 2**30:.2f} GiB, temporaries "
              f"{memory.temp_size_in_bytes / 2**30:.2f} GiB, outputs {memory.output_size_in_bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
