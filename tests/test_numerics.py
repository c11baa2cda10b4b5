"""Non-finite steps never reach the parameters or a checkpoint, the run skips or stops as
configured, and bfloat16 training and the losses stay finite at extreme inputs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realign_jax.objectives.losses import TERMS, LossConfig, get_loss
from realign_jax.settings import runs as run_settings
from realign_jax.train.checkpoint import Checkpointer
from realign_jax.train.batches import make_dataset
from realign_jax.train.loop import train
from realign_jax.train.metrics_log import read
from realign_jax.train.trainer import Trainer
from test_train import run_steps, small_config


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.trainable))]


def test_a_nan_batch_leaves_parameters_and_moments_as_they_were():
    config = small_config("rdpo")
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    state = trainer.init_state()
    batches = iter(make_dataset(settings, trainer.model_config))
    state, _ = trainer.step(state, trainer.device_batch(next(batches)))
    before, moments = _leaves(state), jax.tree.leaves(jax.device_get(state.opt_state))
    poisoned = dict(next(batches))
    poisoned["pixel_values"] = np.full_like(poisoned["pixel_values"], np.nan)
    state, metrics = trainer.step(state, trainer.device_batch(poisoned))
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2  # the step is counted (the data was consumed), the update is not
    for a, b in zip(before, _leaves(state)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(moments, jax.tree.leaves(jax.device_get(state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state, metrics = trainer.step(state, trainer.device_batch(next(batches)))
    assert float(metrics["nonfinite"]) == 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(before, _leaves(state)))


def _diverging(**overrides):
    """A run whose first update throws the weights to ~1e30: every later step's loss is NaN."""
    config = small_config("dpo", optim__lr=1e30, optim__clip_norm=0.0, train__checkpoint_every=1, **overrides)
    config.optim.lr_groups = ""
    config.train.export = False
    return config


def test_stop_policy_names_the_step_and_keeps_only_finite_checkpoints(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 2: loss=nan.*on_nonfinite='stop'"):
        train(_diverging(train__on_nonfinite="stop"), str(tmp_path))
    checkpoints = Checkpointer(str(tmp_path / "checkpoints"), every=1, keep=2)
    assert checkpoints.manager.all_steps() == [1]  # step 2 was never saved


def test_skip_policy_counts_skips_and_stops_after_too_many_in_a_row(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 5: .*4 non-finite steps in a row"):
        train(_diverging(train__max_consecutive_skips=3, train__log_every=1), str(tmp_path))
    logged = read(str(tmp_path / "metrics.jsonl"))
    assert [r["train/skipped_nonfinite"] for r in logged] == [0, 1, 2, 3]
    # Every saved step holds the parameters of step 1: the skipped updates never landed.
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [3, 4]


def test_a_nonfinite_parameter_is_never_checkpointed(tmp_path):
    config = small_config("dpo", train__steps=2)
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    state = trainer.init_state()
    trainer.check_finite(state, 0)
    leaves, treedef = jax.tree.flatten(state.trainable)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.inf)
    broken = state.__class__(**{**vars(state), "trainable": jax.tree.unflatten(treedef, leaves)})
    with pytest.raises(FloatingPointError, match="step 7: the trained parameters"):
        trainer.check_finite(broken, 7)


@pytest.mark.parametrize("loss", ["sft", "dpo", "rdpo"])
def test_bfloat16_training_stays_finite(loss):
    config = small_config(loss)
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "bfloat16"
    history, _, state = run_steps(config, 6)
    assert all(r["nonfinite"] == 0.0 and np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in history)
    assert all(np.isfinite(x).all() for x in _leaves(state))


@pytest.mark.parametrize("loss", sorted(TERMS))
def test_losses_and_gradients_stay_finite_at_extreme_log_probs(loss):
    """Summed log-probs of long answers reach -1e4 and margins of thousands: log-sigmoid must
    not overflow in either direction."""
    kinds = ("chosen", "rejected", "rejected_image", "rejected_noisy", "chosen_alt_image", "rejected_sampled")
    extreme = jnp.array([-1e4, -1.0, -5e3, -3e4])

    def total(scale):
        policy = {k: extreme * scale * (i + 1) for i, k in enumerate(kinds)}
        policy.update({f"length_{k}": jnp.full(4, 300.0) for k in kinds})
        policy["nll_chosen"] = -policy["chosen"] / 300.0
        reference = {k: -extreme * (i + 2) for i, k in enumerate(kinds)}
        reference.update({f"length_{k}": jnp.full(4, 300.0) for k in kinds})
        smoothing = 1e-3 if loss == "exo_pair" else 0.0  # EXO's KL needs eps > 0
        config = LossConfig(beta=0.1, sft_weight=0.5, label_smoothing=smoothing)
        loss_value, _ = get_loss(loss)(policy, reference, config)
        return loss_value

    value, grad = jax.value_and_grad(total)(1.0)
    assert np.isfinite(float(value)) and np.isfinite(float(grad)), (loss, value, grad)
