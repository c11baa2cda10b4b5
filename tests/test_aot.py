"""The ahead-of-time fit check (realign_jax/aot.py) on the tiny model over the 8 CPU devices:
real compiles, nothing mocked; the TPU topologies need libtpu and are measured by hand (docs/benchmarks.md)."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from realign_jax import aot
from realign_jax.settings import runs as run_settings
from realign_jax.train.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import rdpo_llava  # noqa: E402
import rdpo_llava_step  # noqa: E402
import train_llava  # noqa: E402


def tiny_config(batch_size: int):
    """rDPO (3 rows, 2 images) on the tiny model, data 2 x fsdp 4."""
    config = train_llava.get_config("loss=rdpo")
    config.mesh.data, config.mesh.fsdp = 2, 4
    config.data.seq_len = 24  # the tiny model's 16 image tokens, a prompt and an answer
    config.train.batch_size = batch_size
    return config


def test_memory_is_measured_and_grows_with_the_batch():
    small, big = aot.check(tiny_config(8), "cpu:8"), aot.check(tiny_config(32), "cpu:8")
    assert small.devices == 8 and small.mesh == {"data": 2, "fsdp": 4, "tensor": 1}
    assert small.argument_bytes > 0 and small.temp_bytes > 0 and small.total_bytes > small.argument_bytes
    assert big.temp_bytes > 2 * small.temp_bytes  # 4x the rows per device
    assert small.argument_bytes < big.argument_bytes < 2 * small.argument_bytes  # the state dominates: same state
    assert small.fits and small.step_seconds is None  # CPU: host RAM, no peak to estimate a time from
    assert big.needed_flops == pytest.approx(4 * small.needed_flops)
    assert small.executed_flops == small.needed_flops  # remat none: nothing recomputed
    text = aot.describe(small, tiny_config(8))
    assert "temporaries" in text and "\nFITS" in text and "cpu:8" in text
    refused = dataclasses.replace(small, out_of_memory="RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    assert not refused.fits and "DOES NOT FIT: XLA refused" in aot.describe(refused, tiny_config(8))


def test_packed_shared_prefix_batch_is_compiled_as_training_packs_it():
    """With data.packing + share_prefix (and grad_accum) the step is compiled for the packed rows
    of a random batch: fewer rows and FLOPs than the padded layout, as training would run it."""
    padded_config, packed_config = tiny_config(64), tiny_config(64)
    for config in (padded_config, packed_config):
        config.train.grad_accum, config.data.seq_len = 2, 48
    packed_config.data.packing, packed_config.data.share_prefix, packed_config.data.pack_len = True, True, 96
    padded, packed = aot.check(padded_config, "cpu:8"), aot.check(packed_config, "cpu:8")
    assert padded.layout == "192 padded rows x 48"
    rows = int(packed.layout.split()[0])
    assert packed.layout.endswith("packed, shared prefixes rows x 96") and rows % 2 == 0 and rows * 96 < 192 * 48
    assert packed.needed_flops < padded.needed_flops and packed.fits
    assert "the batch as" in aot.describe(packed, packed_config)


def test_abstract_state_matches_the_real_one():
    """What aot.py compiles against is what training builds: same shapes, dtypes and shardings."""
    config = tiny_config(8)
    trainer = Trainer(run_settings.load(config))
    abstract, real = trainer.abstract_state(), trainer.init_state()
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
        assert (a.shape, a.dtype) == (r.shape, r.dtype)
        assert a.sharding.is_equivalent_to(r.sharding, r.ndim), (a.sharding, r.sharding)


def test_bad_topology_names_the_flag():
    with pytest.raises(ValueError, match="--topology='v9z-8' is unknown.*v5p-8"):
        aot.topology_devices("v9z-8")
    with pytest.raises(ValueError, match="--topology=cpu:64: this process has 8 CPU devices"):
        aot.topology_devices("cpu:64")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_tpu_topology_without_libtpu_says_what_to_install():
    with pytest.raises(ValueError, match=r"--topology=v5p-8 could not be built: .*not installed.*"
                                         r"pip install -e . 'jax\[tpu\]=="):
        aot.topology_devices("v5p-8")


def test_config_sizes():
    config = rdpo_llava_step.get_config("13b")
    assert (config.mode, config.loss.name, config.model.preset) == ("train", "rdpo", "llava-1.5-13b")
    assert (config.lora.rank, config.lora.alpha, config.model.dtype) == (128, 256.0, "bfloat16")
    assert config.model.param_dtype == "float32"  # trained adapters and projector keep float32 masters
    assert not config.data.packing  # 8 pairs per micro-batch on 4 chips pack no tighter than they pad
    seven = rdpo_llava_step.get_config("7b")
    assert (seven.data.packing, seven.data.share_prefix, seven.data.pack_len) == (True, True, 3072)
    assert rdpo_llava.get_config("").mode == "pipeline"
    with pytest.raises(ValueError, match="rdpo_llava.py:70b.*'13b', '7b'"):
        rdpo_llava.get_config("70b")


def test_command_line_errors_name_the_flag_or_key():
    """`--config.key` overrides reach the check (a mesh that does not divide the devices stops
    it), and a bad topology ends in one line naming the flag; neither compiles anything."""
    command = [sys.executable, "-m", "realign_jax.aot", "--config=configs/rdpo_llava_step.py:7b", "--topology=cpu:8"]
    mesh = subprocess.run(command + ["--config.mesh.data=-1", "--config.mesh.fsdp=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert mesh.returncode == 2 and "does not divide the 8 devices" in mesh.stderr, mesh.stderr[-2000:]
    bad = subprocess.run(command[:4] + ["--topology=v5x-8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--topology='v5x-8' is unknown" in bad.stderr, bad.stderr[-2000:]
