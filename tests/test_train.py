"""The trainer on a tiny random LLaVA: learning happens, sharding and resuming change nothing,
and LoRA keeps one copy of the base weights."""

import dataclasses
import os
import sys

import jax
import numpy as np
import pytest

from realign_jax.models.partitioning import make_mesh
from realign_jax.settings import runs as run_settings
from realign_jax.train.batches import make_dataset
from realign_jax.train.loop import train
from realign_jax.train.metrics_log import read
from realign_jax.train.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import train_llava  # noqa: E402
import sft_llava  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from lora_memory import measure as _memory  # noqa: E402  (the benchmark's measurement, asserted here)


def small_config(loss="dpo", **train_overrides):
    config = train_llava.get_config(f"loss={loss}") if loss != "sft" else sft_llava.get_config()
    config.data.seq_len = 32
    config.data.num_examples = 16
    config.train.steps = 30
    for key, value in train_overrides.items():
        section, _, name = key.rpartition("__")
        (config[section] if section else config)[name] = value
    return config


def run_steps(config, steps, mesh=None, trainer=None):
    """Metrics of the first `steps` steps (host floats), and the trainer and final state."""
    settings = run_settings.load(config)
    trainer = trainer or Trainer(settings, mesh=mesh)
    state = trainer.init_state()
    batches = iter(make_dataset(settings, trainer.model_config))
    history = []
    for _ in range(steps):
        state, metrics = trainer.step(state, trainer.device_batch(next(batches)))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, trainer, state


@pytest.mark.parametrize("loss", ["dpo", "rdpo", "mdpo", "povid", "dpo_combined"])
def test_loss_falls_and_accuracy_rises(loss):
    history, _, _ = run_steps(small_config(loss), 30)
    first, last = history[:5], history[-5:]
    mean = lambda rows, key: np.mean([r[key] for r in rows])  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.02, [r["loss"] for r in history]
    assert mean(last, "rewards/accuracies") > mean(first, "rewards/accuracies") + 0.3
    assert mean(last, "rewards/margins") > 0
    if loss in ("rdpo", "mdpo"):
        assert "visual/rewards/margins" in history[-1]
    if loss == "povid":
        assert "noisy/rewards/margins" in history[-1]
    if loss == "dpo_combined":
        assert mean(last, "sampled/rewards/margins") > 0


def test_sft_loss_falls():
    history, _, _ = run_steps(small_config("sft"), 30)
    assert history[0]["loss"] == pytest.approx(np.log(256), abs=0.3)  # a random model is near uniform
    assert history[-1]["loss"] < history[0]["loss"] - 0.5


@pytest.mark.parametrize("loss,lora_rank", [("rdpo", 8), ("sft", 0)], ids=["rdpo-lora", "sft-full"])
def test_sharded_run_logs_the_same_losses(loss, lora_rank):
    """data 2 x fsdp 2 x tensor 2 on 8 CPU devices against one device, step by step."""
    config = small_config(loss, lora__rank=lora_rank)
    if not lora_rank and loss != "sft":
        config.reference = "frozen_copy"
    single, _, _ = run_steps(config, 4, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    sharded, trainer, state = run_steps(config, 4)
    assert trainer.mesh.devices.size == 8
    embed = state.frozen["decoder"]["embed_tokens"]["embedding"] if lora_rank else \
        state.trainable["decoder"]["embed_tokens"]["embedding"]
    assert len(embed.get_raw_value().sharding.device_set) == 8  # really spread out
    for a, b in zip(single, sharded):
        for key in ("loss", "grad_norm") + (("rewards/margins",) if loss != "sft" else ()):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-4, atol=2e-6, err_msg=key)


def test_gradient_accumulation_matches_one_big_batch():
    one_device = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    plain, _, state_a = run_steps(small_config("dpo"), 2, mesh=one_device)
    accumulated, _, state_b = run_steps(small_config("dpo", train__grad_accum=4), 2, mesh=one_device)
    for a, b in zip(plain, accumulated):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-4)
    for x, y in zip(jax.tree.leaves(state_a.trainable), jax.tree.leaves(state_b.trainable)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)


def test_precomputed_reference_gives_the_same_step():
    config = small_config("rdpo")
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    state = trainer.init_state()
    host = next(iter(make_dataset(settings, trainer.model_config)))
    batch = trainer.device_batch(host)
    ref = np.asarray(trainer.reference_logps(state, batch))
    assert ref.shape == (8, 3) and np.all(ref < 0)
    _, in_step = trainer.step(state, batch)

    config.reference = "precomputed"
    precomputed = Trainer(run_settings.load(config))
    state = precomputed.init_state()
    assert not jax.tree.leaves(state.base_start)  # nothing kept for the reference
    _, metrics = precomputed.step(state, precomputed.device_batch({**host, "ref_logps": ref}))
    for key in ("loss", "rewards/margins", "visual/rewards/margins", "grad_norm"):
        np.testing.assert_allclose(float(metrics[key]), float(in_step[key]), rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.fixture
def wide_preset(monkeypatch):
    """A tiny LLaVA with a wide decoder, so weights (27 MB) dwarf a 2-example batch's activations."""
    from realign_jax.models import config as model_config

    tiny = model_config.PRESETS["tiny"]
    text = dataclasses.replace(tiny.text, hidden_size=512, intermediate_size=1536, num_heads=8, num_kv_heads=8)
    monkeypatch.setitem(model_config.PRESETS, "wide", dataclasses.replace(tiny, text=text))
    return "wide"


def test_lora_step_holds_one_copy_of_the_base_weights(wide_preset):
    """The compiled step's memory analysis. With LoRA and reference = adapters off, the step's
    inputs are the base weights once plus adapters and their Adam moments, and running the
    reference costs no scratch memory over a step that runs no reference at all (precomputed
    log-probs), so no second copy of the weights is made. Full fine-tuning with a frozen
    reference copy holds base + copy + two Adam moments."""
    def config(**overrides):
        c = small_config("dpo", train__batch_size=2, **overrides)
        c.model.preset = wide_preset
        return c

    lora, base_bytes, adapter_bytes = _memory(config(train__trainable=""))
    no_reference, _, _ = _memory(config(train__trainable="", reference="precomputed"))
    assert base_bytes > 25e6 and adapter_bytes < 0.05 * base_bytes
    assert lora.argument_size_in_bytes < base_bytes + 3 * adapter_bytes + 100_000  # + batch and step/rng
    assert lora.temp_size_in_bytes - no_reference.temp_size_in_bytes < 0.05 * base_bytes
    full, _, trained_bytes = _memory(config(lora__rank=0, reference="frozen_copy",
                                            train__trainable=r"^(projector|decoder)\."))
    assert trained_bytes > 0.9 * base_bytes
    assert full.argument_size_in_bytes > base_bytes + 2.9 * trained_bytes  # copy + Adam mu and nu


def test_resume_reproduces_the_following_steps_exactly(tmp_path):
    # LoRA dropout makes the steps depend on the RNG, so the restored RNG is checked too.
    config = small_config("rdpo", train__steps=6, train__checkpoint_every=2, train__export=False, lora__dropout=0.1)
    straight = train(config, str(tmp_path / "straight"))
    assert straight["step"] == 6

    interrupted = str(tmp_path / "interrupted")
    first = train(config, interrupted, stop_after=3)
    assert first["stopped_at"] == 3
    assert sorted(os.listdir(os.path.join(interrupted, "checkpoints"))) == ["2", "3"]
    resumed = train(config, interrupted)
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6

    expected = read(str(tmp_path / "straight" / "metrics.jsonl"))
    got = read(os.path.join(interrupted, "metrics.jsonl"))
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(expected, got):
        a.pop("tokens_per_sec"), b.pop("tokens_per_sec")
        assert a == b, (a["step"], a, b)


def test_export_is_the_merged_policy(tmp_path):
    """The exported HF folder loads back to the trained policy (adapters folded in), which is
    no longer the starting model."""
    from realign_jax.models import hf
    from realign_jax.train.checkpoint import Checkpointer

    config = small_config("dpo", train__steps=3, train__checkpoint_every=0)
    outputs = train(config, str(tmp_path))
    exported = hf.load_pretrained(outputs["export"])
    trainer = Trainer(run_settings.load(config))
    start = trainer.init_state()
    ids = np.arange(3, 23, dtype=np.int32).reshape(2, 10)
    initial = np.asarray(trainer.policy(start)(ids))
    state, _ = Checkpointer(str(tmp_path / "checkpoints"), 0, 1).restore(start)
    adapted = np.asarray(trainer.policy(state)(ids))  # LoRA applied on the fly
    np.testing.assert_allclose(np.asarray(exported(ids)), adapted, rtol=1e-4, atol=1e-5)
    assert np.abs(adapted - initial).max() > 1e-4


@pytest.mark.parametrize("reference,lora_rank", [("lora_off", 8), ("frozen_copy", 0)])
def test_reference_stays_at_the_starting_weights(reference, lora_rank):
    """Policy and reference agree at step 1 (rewards 0) and drift apart after updates; a reference
    that followed the policy would keep rewards at 0. Under LoRA the adapters barely move
    (lr 1e-12) and only the projector trains, so the drift must come from the reference keeping
    the projector's start values."""
    config = small_config("dpo", reference=reference, lora__rank=lora_rank,
                          optim__lr=1e-12 if lora_rank else 1e-2, optim__lr_groups=r"^projector\.=1e-2",
                          train__trainable=r"^projector\." if lora_rank else r"^(projector|decoder)\.")
    history, _, _ = run_steps(config, 4, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert abs(history[0]["rewards/chosen"]) < 1e-4 and abs(history[0]["rewards/rejected"]) < 1e-4
    assert abs(history[-1]["rewards/chosen"]) > 1e-3


def test_epochs_set_the_steps_and_the_schedule(tmp_path, capsys):
    """train.epochs=2 over 16 records at batch 8 is 4 steps, whatever train.steps says, and the
    learning-rate schedule ends with them (cosine to 0 at the last step)."""
    config = small_config("dpo", train__epochs=2.0, train__batch_size=8, train__export=False,
                          train__checkpoint_every=0, optim__warmup_ratio=0.0)
    outputs = train(config, str(tmp_path))
    assert outputs["step"] == 4 and "train.epochs=2 over 16 records at train.batch_size=8: 4 steps" in \
        capsys.readouterr().out
    lrs = [r["lr"] for r in read(str(tmp_path / "metrics.jsonl"))]
    assert len(lrs) == 4 and lrs[0] > lrs[-1] > 0 and lrs[-1] < 0.2 * lrs[0], lrs


def _step_flops(config):
    settings = run_settings.load(config)
    trainer = Trainer(settings, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state = trainer.init_state()
    batch = trainer.device_batch(next(iter(make_dataset(settings, trainer.model_config))))
    return trainer.compile_step(state, batch).cost_analysis()["flops"]


def test_a_reference_free_loss_compiles_no_reference_forward():
    """SimPO's step is DPO's minus the reference forward. With LoRA the policy's forward and
    backward cost about 2 forwards (no base-weight gradients), the reference one more: XLA's cost
    analysis of the compiled steps shows SimPO at about 2/3 of DPO, where a program that still ran
    the reference (and dropped its result late) would be at 1."""
    dpo = _step_flops(small_config("dpo", train__batch_size=2))
    simpo = _step_flops(small_config("simpo", train__batch_size=2))
    assert 0.55 * dpo < simpo < 0.8 * dpo, simpo / dpo


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_learn(loss):
    config = small_config(loss)
    config.loss.beta = 2.0 if loss == "simpo" else 0.1  # SimPO's recipe scale (its margins are per-token means)
    history, trainer, _ = run_steps(config, 30)
    assert trainer.statics.reference == "none"
    first, last = history[:5], history[-5:]
    mean = lambda rows, key: np.mean([r[key] for r in rows])  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.02, [r["loss"] for r in history]
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins")
