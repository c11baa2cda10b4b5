"""Ahead-of-time fit check: compile the full-size training step for a TPU slice or a GPU host on
any machine, with no weight allocated, and say whether it fits before anyone rents the hardware.

    python -m realign_jax.aot --config=configs/rdpo_llava_step.py:7b --topology=v5p-8
    python -m realign_jax.aot --config=configs/rdpo_llava_step.py:13b --topology=v5e-16 \\
        --config.model.remat=full --config.train.grad_accum=1
    python -m realign_jax.aot --config=configs/train_llava.py --topology=cpu:8     # any machine (CI)

TPU targets need libtpu and GPU targets the CUDA plugin, each in its own venv (next to the
CPU-only JAX they make every `import jax` print warnings); neither needs the hardware:

    python3 -m venv /work/tpuvenv && /work/tpuvenv/bin/pip install -e . "jax[tpu]==0.10.2"
    python3 -m venv /work/gpuvenv && /work/gpuvenv/bin/pip install -e . "jax[cuda12]==0.10.2"

The state is `jax.eval_shape` of the trainer's own initialisation (random-init shapes: the
preset's, or model.path's config.json; no checkpoint is read) and the batch is
ShapeDtypeStructs of one batch of random pairs at data.seq_len, padded or packed as the config
says (`data.packing`, `data.share_prefix`: the packed row count is that batch's). Both carry
the NamedShardings training gives them on the target's devices, and `Trainer.compile` lowers
and compiles the step as training does. Printed per device: XLA's memory analysis against the
chip's HBM, XLA's cost analysis, the step's FLOPs, a step-time lower bound with the utilisation
it implies, and FITS / DOES NOT FIT (exit status 1). With no
--topology it compiles for this process's own devices (a TPU VM's or GPU host's, or the CPU).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import topologies
from ml_collections import config_flags

from realign_jax.cli import config_value, parse_flags
from realign_jax.data import random_pairs
from realign_jax.data.loader import stack_examples
from realign_jax.models.accounting import StepFlops, step_flops
from realign_jax.models.partitioning import make_mesh
from realign_jax.data.batching import shape_batch
from realign_jax.train.batches import batch_shape, random_pairs_recipe
from realign_jax.settings.runs import TrainSettings, load
from realign_jax.train.trainer import Trainer, trained_parts

GiB = 2**30
TIGHT = 0.05  # a fit with less HBM free than this is flagged


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_flops: float  # dense bf16 matmul FLOP/s


# Per chip, from the vendors' spec tables: cloud.google.com/tpu/docs/v5p, .../v5e and .../v6e
# ("system architecture": peak bf16 compute, HBM capacity) and NVIDIA's H100 SXM datasheet
# (its bf16 Tensor Core 1,979 TFLOP/s is with 2:4 sparsity; dense is half). Keyed by jax's
# `device_kind`. The runtime keeps a little of the HBM for itself: treat a few % headroom as none.
CHIPS: dict[str, Chip] = {
    "TPU v5": Chip("v5p", 95 * GiB, 459e12),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12),
    "NVIDIA H100 80GB HBM3": Chip("H100", 80 * GiB, 989e12),
}

# --topology names -> (platform, the PJRT plugin's topology name); jax.experimental.topologies
# builds compile-only devices from these. Cloud TPU slices: v5p counts TensorCores (2 per chip),
# v5e and v6e count chips. GPUs: one host of N H100s, described by H100_TARGET_CONFIG.
TOPOLOGIES: dict[str, tuple[str, str]] = {
    "v5p-8": ("tpu", "v5:2x2x1"), "v5p-16": ("tpu", "v5:2x2x2"), "v5p-32": ("tpu", "v5:2x2x4"),
    "v5e-4": ("tpu", "v5e:2x2"), "v5e-8": ("tpu", "v5e:2x4"), "v5e-16": ("tpu", "v5e:4x4"),
    "v5e-32": ("tpu", "v5e:4x8"), "v6e-4": ("tpu", "v6e:2x2"), "v6e-8": ("tpu", "v6e:2x4"),
    "v6e-16": ("tpu", "v6e:4x4"), "v6e-32": ("tpu", "v6e:4x8"),
    "h100-1": ("cuda", "1x1x1"), "h100-8": ("cuda", "1x1x8"),
}

# The H100 SXM as XLA's GPU compiler needs to know it with no GPU attached
# (stream_executor.GpuTargetConfigProto): compute capability 9.0's limits from the CUDA C++
# Programming Guide ("Compute Capabilities") and the H100 SXM datasheet (132 SMs, 50 MB L2,
# 3.35 TB/s, 80 GB); cuDNN 9 as jax[cuda12] installs it.
H100_TARGET_CONFIG = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  core_count: 132 fpus_per_core: 128 clock_rate_ghz: 1.98
  threads_per_block_limit: 1024 threads_per_warp: 32 threads_per_core_limit: 2048
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  shared_memory_per_block: 49152 shared_memory_per_block_optin: 232448 shared_memory_per_core: 233472
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  memory_bandwidth: 3350000000000 l2_cache_size: 52428800 device_memory_size: 85899345920
}
platform_name: "CUDA"
dnn_version_info { major: 9 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def define_flags() -> None:
    """The command's flags; defined when it runs, not on import, since realign_jax.main (which
    tests import beside this module) defines its own `--config`."""
    config_flags.DEFINE_config_file("config", None, "A training config (configs/*.py, mode=train or sft).")
    flags.DEFINE_string(
        "topology", "", f"What to compile for: {', '.join(TOPOLOGIES)} (TPU slices need libtpu, H100s the CUDA "
        "plugin: jax[tpu] / jax[cuda12], each in its own venv), 'cpu:N' (N CPU devices of this machine), or '' = "
        "this process's own devices.")


def topology_devices(topology: str) -> list[Any]:
    """The devices `--topology` names: compile-only TPU or GPU devices, or real local ones."""
    if not topology:
        return jax.devices()
    if topology == "cpu" or topology.startswith("cpu:"):
        devices = jax.devices("cpu")
        count = topology.partition(":")[2]
        if not count.isdigit() or not 1 <= int(count) <= len(devices):
            raise ValueError(f"--topology={topology}: this process has {len(devices)} CPU devices; ask for 1 to "
                             f"{len(devices)} (more: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        return devices[:int(count)]
    if topology not in TOPOLOGIES:
        raise ValueError(f"--topology={topology!r} is unknown; choose one of {sorted(TOPOLOGIES)}, 'cpu:N' or ''")
    platform, name = TOPOLOGIES[topology]
    if platform == "tpu":
        # libtpu looks for a TPU VM's metadata when it loads; naming the slice and this host
        # instead keeps its warnings off a machine without TPUs (a TPU VM's own settings stay).
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        options, extra = {}, "tpu"
    else:
        # No GPU to ask: the target is described (main() has already loaded the plugin without its
        # driver check and turned autotuning off, _prepare_backends).
        options, extra, name = {"target_config": H100_TARGET_CONFIG, "topology": name}, "cuda12", ""
    try:
        return list(topologies.get_topology_desc(name, platform, **options).devices)
    except (RuntimeError, NotImplementedError) as error:  # NotImplementedError: no CUDA plugin
        missing = isinstance(error, NotImplementedError) or "not installed" in str(error)
        hint = f"; it needs jax[{extra}] in its own venv: pip install -e . 'jax[{extra}]=={jax.__version__}'"
        raise ValueError(f"--topology={topology} could not be built: {error}{hint if missing else ''}") from None


def chip_of(device: Any) -> Chip:
    """The device's chip figures: from CHIPS, the host's RAM shared by the process's devices for a
    CPU, or what an attached accelerator of another kind reports (no peak: no time estimate)."""
    if device.device_kind in CHIPS:
        return CHIPS[device.device_kind]
    if device.platform == "cpu":
        return Chip("cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / len(jax.devices("cpu")), 0.0)
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if not limit:
        raise ValueError(f"--topology: no memory size known for {device.device_kind!r}; add it to aot.CHIPS")
    return Chip(device.device_kind, limit, 0.0)


def host_batch(settings: TrainSettings, trainer: Trainer) -> dict[str, np.ndarray]:
    """One global batch of the random source's pairs (the layout the encoder writes: answers of 2
    up to what data.seq_len leaves after the image and prompt) shaped as training shapes it:
    padded at data.seq_len, or packed (`data.packing`, `share_prefix`, `pack_len`)."""
    recipe = random_pairs_recipe(settings, trainer.model_config, settings.train.batch_size)
    batch = stack_examples([random_pairs.make_example(i, recipe) for i in range(settings.train.batch_size)])
    if settings.reference == "precomputed":
        batch["ref_logps"] = np.zeros((settings.train.batch_size, len(settings.layout.kinds)), np.float32)
    # (padded: kept at seq_len, an upper bound, rather than trimmed to this batch's bucket)
    shape = batch_shape(settings, trainer.model_config, trainer.packed_row_multiple())
    return shape_batch(batch, shape) if settings.data.packing else batch


def row_shape(batch: dict[str, np.ndarray]) -> tuple[int, int]:
    """(rows, tokens per row) the step computes: B * K padded rows, or the packed rows."""
    row_len = batch["input_ids"].shape[-1]
    return batch["input_ids"].size // row_len, row_len


def abstract_batch(batch: dict[str, np.ndarray], trainer: Trainer) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch as the sharded ShapeDtypeStructs the step is compiled for."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding(v.ndim)) for k, v in batch.items()}


def batch_flops(settings: TrainSettings, trainer: Trainer, state: Any, batch: dict[str, np.ndarray]) -> StepFlops:
    """Matmul FLOPs of one step over all devices (models/accounting.step_flops says what is
    counted) over the rows the step computes (padded rows, or packed rows with their padding),
    the frozen tower and the projector once per image, with what the state trains, the
    reference kind and model.remat. Executed (`.executed`) adds what remat recomputes in the
    policy's decoder layers; on an unrolled 3-layer model this is within 3% of XLA's own count."""
    config = trainer.model_config
    rows, row_len = row_shape(batch)
    trains, adapted = trained_parts(state.trainable)
    return step_flops(config, [row_len] * rows, batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1],
                      trains=trains, lora_rank=settings.lora.rank, lora_targets=adapted,
                      reference=settings.reference, remat=config.remat)


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-device figures of one compiled step (bytes, FLOPs); `out_of_memory` holds XLA's
    refusal when the program's buffers exceed the chip (the TPU compiler checks this itself)."""

    topology: str
    devices: int
    mesh: dict[str, int]
    chip: Chip
    layout: str  # the batch's rows as compiled, e.g. "96 padded rows x 1024"
    needed_flops: float  # per device, from models/accounting.py (step_flops, via batch_flops)
    executed_flops: float
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    xla_cost: dict[str, float] = dataclasses.field(default_factory=dict)  # empty where the backend gives none
    out_of_memory: str = ""

    @property
    def total_bytes(self) -> int:
        """What the step holds at its peak: donated outputs reuse their arguments' buffers."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return not self.out_of_memory and self.total_bytes <= self.chip.hbm_bytes

    @property
    def step_seconds(self) -> float | None:
        """Lower bound: the executed FLOPs at the chip's peak (memory-bound ops, collectives and
        imperfect overlap only add to it). Not from XLA's cost analysis, which counts a while
        loop's body once: a scanned 32-layer decoder would look 32x cheaper."""
        return self.executed_flops / self.chip.peak_flops if self.chip.peak_flops else None


def check(config: TrainSettings | Any, topology: str = "") -> Report:
    """Compile the config's training step for `topology` and measure it, allocating no weight."""
    devices = topology_devices(topology)
    settings = load(config)
    ms = settings.mesh
    trainer = Trainer(settings, mesh=make_mesh(ms.data, ms.fsdp, ms.tensor, devices=devices))
    state = trainer.abstract_state()
    host = host_batch(settings, trainer)
    batch = abstract_batch(host, trainer)
    flops = batch_flops(settings, trainer, state, host)
    rows, row_len = row_shape(host)
    kind = ("packed, shared prefixes" if settings.data.share_prefix else "packed") if settings.data.packing \
        else "padded"
    common = dict(topology=topology or f"{devices[0].platform} (this process)", devices=len(devices),
                  layout=f"{rows} {kind} rows x {row_len}",
                  mesh=dict(trainer.mesh.shape), chip=chip_of(devices[0]), needed_flops=flops.needed / len(devices),
                  executed_flops=flops.executed / len(devices))
    try:
        compiled = trainer.compile_step(state, batch)
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        return Report(**common, out_of_memory=str(error).splitlines()[0].rstrip("."))
    memory = compiled.memory_analysis()
    return Report(
        **common, argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes, xla_cost=dict(compiled.cost_analysis() or {}))


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.2f} MiB"


def tflop(n: float) -> str:
    return f"{n / 1e12:.2f} TFLOP" if n >= 1e11 else f"{n / 1e9:.3f} GFLOP"


def describe(report: Report, config: Any) -> str:
    """The printed summary; every figure is per device."""
    r, model = report, config.model
    lines = [
        f"topology {r.topology}: {r.devices} x {r.chip.name}, mesh {r.mesh}",
        f"model {model.path or model.preset}, {config.loss.name}, batch {config.train.batch_size} "
        f"(grad_accum {config.train.grad_accum}), seq_len {config.data.seq_len}, {model.dtype} compute, "
        f"{model.param_dtype} weights, remat {model.remat}, attention {model.attention_impl}, "
        f"LoRA r={config.lora.rank}; the batch as {r.layout} tokens",
    ]
    if not r.out_of_memory:
        capacity = " HBM" if r.chip.peak_flops else " (host RAM / devices)"
        lines += [
            "memory per device:",
            f"  arguments   {gib(r.argument_bytes)}  (state + batch)",
            f"  outputs     {gib(r.output_bytes)}  ({gib(r.alias_bytes)} of it in donated argument buffers)",
            f"  temporaries {gib(r.temp_bytes)}",
            f"  code        {gib(r.code_bytes)}",
            f"  total       {gib(r.total_bytes)} of {gib(r.chip.hbm_bytes)}{capacity}",
            f"XLA cost per device: {tflop(r.xla_cost.get('flops', 0))}, "
            f"{r.xla_cost.get('bytes accessed', 0) / 1e9:.1f} GB accessed (each loop body counted once: scanned "
            "layers, vocabulary chunks)" if r.xla_cost else "XLA cost: none from this backend",
        ]
    lines.append(f"step FLOPs per device: {tflop(r.needed_flops)} needed, {tflop(r.executed_flops)} executed with "
                 f"remat {model.remat}")
    seconds = r.step_seconds
    if seconds is None:
        lines.append(f"no peak FLOP/s known for {r.chip.name}: no step time estimate")
    else:
        lines.append(f"estimated step >= {seconds:.2f} s (executed FLOPs at {r.chip.peak_flops / 1e12:.0f} TFLOP/s "
                     f"bf16 peak): utilisation <= {r.needed_flops / (seconds * r.chip.peak_flops):.0%}, "
                     f"<= {config.train.batch_size / seconds:.1f} examples/s")
    advice = "raise --config.train.grad_accum or --config.mesh.fsdp" + (
        ", or set --config.model.remat=full" if model.remat != "full" else "")
    if r.out_of_memory:
        lines.append(f"DOES NOT FIT: XLA refused the program: {r.out_of_memory}; {advice}")
    elif r.fits:
        free = 1 - r.total_bytes / r.chip.hbm_bytes
        tight = "" if free >= TIGHT else f"; under {TIGHT:.0%} free is tight: the runtime keeps some HBM for itself"
        lines.append(f"FITS: {gib(r.total_bytes)} of {gib(r.chip.hbm_bytes)} per device ({free:.0%} free{tight})")
    else:
        lines.append(f"DOES NOT FIT: {gib(r.total_bytes)} > {gib(r.chip.hbm_bytes)} per device; {advice}")
    return "\n".join(lines)


def _prepare_backends(topology: str) -> None:
    """What XLA reads when JAX starts its backends: N host devices for `cpu:N`; for a GPU target
    on a machine without one, the CUDA plugin loaded without its driver check, and gemms that
    need no autotuning (Triton's tile search runs on the device)."""
    flags_now = os.environ.get("XLA_FLAGS", "")
    count = topology.partition(":")[2]
    if topology.startswith("cpu:") and count.isdigit() and "device_count" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()
    if TOPOLOGIES.get(topology, ("",))[0] == "cuda":
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        os.environ["XLA_FLAGS"] = f"{flags_now} --xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0".strip()


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing out of the report
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, topology = config_value(lambda: flags.FLAGS.config), flags.FLAGS.topology
    if config is None:
        raise SystemExit("--config is required, e.g. --config=configs/rdpo_llava_step.py:7b")
    _prepare_backends(topology)
    try:
        report = check(config, topology)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(describe(report, config))
    if not report.fits:
        raise SystemExit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
