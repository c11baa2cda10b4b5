"""Throughput, utilisation and memory of the compiled preference step on random weights and
random-token pairs, each speed option on and off in one run, on whatever backend JAX finds.

    python benchmarks/step_throughput.py                        # tiny shape, any CPU (~2 min)
    python benchmarks/step_throughput.py --preset small --batch 4 --seq-len 160
    python benchmarks/step_throughput.py --preset llava-1.5-7b --loss rdpo --batch 8 --seq-len 768 \\
        --lora-rank 128 --dtype bfloat16 --remat full --attention cudnn  # one H100

The same batches run through the step in each variant:

    padded              rows padded to the batch's length bucket (`data.length_buckets=auto`)
    packed              rows packed end to end (`data.packing=True`, data/packing.py)
    shared_prefix       packed, chosen and rejected sharing the image + prompt (`data.share_prefix=True`)
    precomputed_ref     shared_prefix with the reference log-probs read from the batch
                        (`reference='precomputed'`): the step without its reference forward;
                        the pass computing them once is timed too, so epochs-to-break-even shows

It prints per variant ms/step (median; each shape compiled and run once first, then the variants
take turns batch by batch, so a shared machine's load hits them alike), pairs/s,
tokens computed per step, the ratio to the first variant, and utilisation against a matmul
peak measured in the same run. Random pairs: [BOS, image tokens, 4 prompt tokens] and answers
of 2 up to what `--seq-len` leaves (for LLaVA-1.5 at 768: 581 + up to 187, the image prefix
dominates, as in real data).

FLOP accounting (`models/accounting.step_flops`: matmul FLOPs, 2 per multiply-add; its
docstring says what each term counts) of the work the step really needs, the same for every
variant but precomputed_ref (no reference forward): per example, each distinct image runs the
frozen vision tower once and the projector for the policy and the reference, with its backward
where it trains; the decoder runs over the shared layout's real tokens (image + prompt once per
image, each answer once, no padding) forward for the policy, backward for the policy (1x forward
when the base is frozen under LoRA: activation gradients only; 2x under full fine-tuning:
activation and weight gradients), LoRA's own matmuls, and forward for the reference. A variant
computing padding or a prefix twice does more work than this. The matmul peak is
benchmarks/peak.py's (best of a few bursts).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import train_llava  # noqa: E402
from realign_jax.data import batching, packing  # noqa: E402
from peak import matmul_peak  # noqa: E402  (benchmarks/peak.py)
from realign_jax.models.accounting import step_flops  # noqa: E402
from realign_jax.settings import runs as run_settings  # noqa: E402
from realign_jax.data.batching import to_bucket, to_packed  # noqa: E402
from realign_jax.train.batches import make_dataset  # noqa: E402
from realign_jax.train.trainer import Trainer, trained_parts  # noqa: E402

VARIANTS = ("padded", "packed", "shared_prefix", "precomputed_ref")
PROMPT_TEXT = 4  # random pairs' prompt tokens after the image (data/random_pairs.py)


def needed_flops(trainer: Trainer, state: Any, batch: dict[str, np.ndarray]) -> float:
    """The FLOPs one step needs for this host batch, as the module docstring counts them."""
    s = trainer.settings
    units = packing.units(batch, s.layout.image_slots, share_prefix=True, pack_len=10**9)
    trains, adapted = trained_parts(state.trainable)
    return step_flops(trainer.model_config, [u.length for u in units],
                      batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1], trains=trains,
                      lora_rank=s.lora.rank, lora_targets=adapted, reference=s.reference).needed


def build(config: Any, reference: str) -> Trainer:
    config = config.copy_and_resolve_references()
    config.reference = reference
    return Trainer(run_settings.load(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--loss", default="rdpo")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64, help="longest row, the image's tokens included")
    parser.add_argument("--pack-len", type=int, default=0, help="packed row length; 0 = one that holds a "
                        "[prompt | chosen | rejected] unit of the longest answers")
    parser.add_argument("--lora-rank", type=int, default=8, help="0 = full fine-tuning with a frozen copy")
    parser.add_argument("--dtype", default="float32", help="compute and weight dtype")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--attention", default="xla", choices=("xla", "cudnn"))
    parser.add_argument("--steps", type=int, default=6, help="batches timed per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a comma list of {VARIANTS}")
    parser.add_argument("--peak-size", type=int, default=0, help="matmul size for the peak; 0 = by backend")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")

    config = train_llava.get_config(f"loss={args.loss}")
    config.model.preset, config.model.remat, config.model.attention_impl = args.preset, args.remat, args.attention
    config.model.dtype = config.model.param_dtype = args.dtype
    config.train.batch_size, config.train.steps = args.batch, args.steps
    config.lora.rank, config.lora.alpha = args.lora_rank, 2.0 * args.lora_rank
    if args.lora_rank == 0:
        config.reference, config.train.trainable = "frozen_copy", r"^(projector|decoder)\."
    config.data.seq_len, config.data.num_examples = args.seq_len, args.batch * args.steps
    fused = build(config, config.reference)
    fused.init_state()  # (sets fused.model_config)
    prompt = 1 + fused.model_config.num_image_tokens + PROMPT_TEXT
    raw = list(itertools.islice(make_dataset(fused.settings, fused.model_config), args.steps))
    pack_len = args.pack_len or -(-(2 * args.seq_len - prompt + 1) // 64) * 64
    buckets = batching.parse_buckets("auto", args.seq_len)
    row_multiple = fused.packed_row_multiple()
    layouts = {
        "padded": lambda b: to_bucket(b, buckets),
        "packed": lambda b: to_packed(b, fused.settings.layout, fused.model_config, row_multiple, False, pack_len),
        "shared_prefix": lambda b: to_packed(b, fused.settings.layout, fused.model_config, row_multiple, True,
                                             pack_len),
    }
    device = jax.devices()[0]
    size = args.peak_size or (8192 if jax.default_backend() == "gpu" else 1024)
    peak = matmul_peak(lambda n: jax.random.normal(jax.random.key(n), (size, size), jnp.dtype(args.dtype)),
                       jax.jit(jnp.matmul), jax.block_until_ready, size)
    rows = len(fused.settings.layout.kinds)
    print(f"device: {device.device_kind} x {jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"shape: {args.preset}, loss {args.loss} ({rows} rows/example, {fused.settings.layout.num_images} "
          f"image(s)), batch {args.batch}, seq_len {args.seq_len} (prompt {prompt}, answers 2..{args.seq_len - prompt}), "
          f"pack_len {pack_len}, {args.dtype}, remat {args.remat}, "
          f"{'LoRA r=' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}, reference {config.reference}")
    print(f"measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s; real tokens/step "
          f"{np.mean([b['attention_mask'].sum() for b in raw]):,.0f} (unshared)")
    print(f"{'variant':<16} {'ms/step':>9} {'pairs/s':>8} {'tokens/step':>12} {'util':>6} {'speed-up':>9}  loss")
    # Every variant's batches compiled and run once; then the timed steps interleave the variants
    # batch by batch, so load on a shared machine hits them alike.
    precomputed = build(config, "precomputed") if "precomputed_ref" in variants else None
    states = {"fused": fused.init_state(), "precomputed": precomputed.init_state() if precomputed else None}
    runs, first_loss, tokens, pass_batches = {}, {}, {}, []
    for variant in variants:
        host = [layouts["shared_prefix" if variant == "precomputed_ref" else variant](b) for b in raw]
        tokens[variant] = np.mean([b["input_ids"].size for b in host])
        if variant == "precomputed_ref":  # the pass: the fused trainer's reference over the same batches
            pass_batches = [fused.device_batch(h) for h in host]
            ref = [np.asarray(fused.reference_logps(states["fused"], b)) for b in pass_batches]
            runs[variant] = (precomputed, "precomputed", [precomputed.device_batch({**h, "ref_logps": r})
                                                          for h, r in zip(host, ref)])
        else:
            runs[variant] = (fused, "fused", [fused.device_batch(h) for h in host])
        trainer, key, batches = runs[variant]
        _, metrics = trainer.step(trainer.init_state(), batches[0])
        first_loss[variant] = float(metrics["loss"])
        for batch in {Trainer._shapes(b): b for b in batches}.values():
            states[key], _ = trainer.step(states[key], batch)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    pass_times = []
    for i in range(len(raw)):
        for variant in variants:
            trainer, key, batches = runs[variant]
            began = time.perf_counter()
            states[key], metrics = trainer.step(states[key], batches[i])
            jax.block_until_ready(metrics)
            times[variant].append(time.perf_counter() - began)
            if variant == "precomputed_ref":
                began = time.perf_counter()
                jax.block_until_ready(fused.reference_logps(states["fused"], pass_batches[i]))
                pass_times.append(time.perf_counter() - began)
    first_ms = None
    for variant in variants:
        ms = 1e3 * float(np.median(times[variant]))
        first_ms = first_ms or ms
        trainer, key, _ = runs[variant]
        flops = np.mean([needed_flops(trainer, states[key], b) for b in raw])
        extra = f"  (+ the precompute pass once: {1e3 * np.median(pass_times):.1f} ms/batch)" if pass_times and \
            variant == "precomputed_ref" else ""
        print(f"{variant:<16} {ms:>9.1f} {args.batch / ms * 1e3:>8.2f} {tokens[variant]:>12,.0f} "
              f"{flops / (ms / 1e3) / peak:>6.1%} {first_ms / ms:>8.2f}x  {first_loss[variant]:.5f}{extra}")
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"peak device memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB of "
              f"{stats.get('bytes_limit', 0) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
