"""Sequence packing (data/packing.py): the packed layout holds every row intact, and a packed
step gives the padded step's losses, gradients and update, on one device and sharded."""

import jax
import numpy as np
import pytest
from test_train import small_config

from realign_jax.data import packing
from realign_jax.models.llava import LlavaModel
from realign_jax.models.partitioning import axis_rules, make_mesh
from realign_jax.settings import runs as run_settings
from realign_jax.data.batching import to_packed
from realign_jax.train.batches import make_dataset
from realign_jax.train.step import train_step
from realign_jax.train.trainer import Trainer


def test_first_fit_decreasing_keeps_every_row_once_within_the_length():
    lengths = [60, 30, 60, 40, 40, 30, 100, 1]
    bins = packing.assign_rows(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 4  # [100], [60, 40], [60, 40], [30, 30, 1]
    with pytest.raises(ValueError, match="row 0 has 101 tokens"):
        packing.assign_rows([101], 100)


def _batch(loss, seq_len=128, **overrides):
    config = small_config(loss, **overrides)
    config.data.seq_len = seq_len
    settings = run_settings.load(config)
    return config, settings


@pytest.mark.parametrize("share_prefix", [False, True], ids=["rows", "shared-prefix"])
def test_packed_rows_hold_each_row_with_its_own_positions_and_images(share_prefix):
    config, settings = _batch("rdpo")
    trainer = Trainer(settings, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    trainer.init_state()
    host = next(iter(make_dataset(settings, trainer.model_config)))
    packed = to_packed(host, settings.layout, trainer.model_config, 1, share_prefix)
    b, k, _ = host["input_ids"].shape
    assert packed["input_ids"].shape[0] < b * k  # rows were shared
    n, image_id = trainer.model_config.num_image_tokens, trainer.model_config.image_token_id
    for i in range(b * k):
        example, kind = divmod(i, k)
        own = (packed["row_index"] == i) & (packed["branch_ids"] > 0)  # (a shared prefix counts as its unit's first row's)
        row, = set(np.nonzero(own)[0])  # one packed row holds it
        segment, = set(packed["segment_ids"][own])
        branch, = set(packed["branch_ids"][own])
        # what row i's tokens see: a shared prefix (branch 0 of its unit) and its own branch
        seen = (packed["segment_ids"][row] == segment) & (
            (packed["branch_ids"][row] == 0) | (packed["branch_ids"][row] == branch))
        length = int(host["attention_mask"][example, kind].sum())
        np.testing.assert_array_equal(packed["input_ids"][row, seen], host["input_ids"][example, kind, :length])
        np.testing.assert_array_equal(packed["position_ids"][row, seen], np.arange(length))
        np.testing.assert_array_equal(packed["loss_mask"][row, seen], host["loss_mask"][example, kind, :length])
        # its image tokens read its own image slot's features, in order
        first = np.nonzero(seen)[0][0]
        before = int(np.sum(packed["input_ids"][row, :first] == image_id))
        slot = settings.layout.image_slots[kind]
        expected = (example * host["pixel_values"].shape[1] + slot) * n + np.arange(n)
        np.testing.assert_array_equal(packed["image_index"][row, before:before + n], expected)
    if share_prefix:  # chosen and rejected share their prompt; the retrieved-image row has its own
        plain = to_packed(host, settings.layout, trainer.model_config, 1)
        prompt = int(np.argmax(host["loss_mask"][0, 0]))  # random pairs: one prompt length
        pair = host["attention_mask"][:, :2].sum(-1).sum(-1) - (prompt - 1)  # [prompt[:-1] | chosen | rejected]
        fits = pair <= host["input_ids"].shape[-1]  # a longer pair is split back into its rows
        assert 0 < fits.sum() < b
        assert packed["attention_mask"].sum() == plain["attention_mask"].sum() - fits.sum() * (prompt - 1)
        shared = int(np.argmax(fits)) * k
        rows_of = {kind: packed["row_index"] == shared + settings.layout.kinds.index(kind) for kind in ("rejected", "chosen_alt_image")}
        assert set(packed["branch_ids"][rows_of["rejected"]]) == {2}
        assert set(packed["branch_ids"][rows_of["chosen_alt_image"]]) == {1}


@pytest.mark.parametrize("loss,overrides,sharded,share_prefix,pack_len", [
    ("sft", {}, False, False, 0),
    ("rdpo", {"loss__rejected_scoring": "best_other"}, False, True, 0),
    ("rdpo", {}, True, False, 0),
    ("rdpo", {}, True, True, 256),
    ("dpo", {"train__grad_accum": 2, "train__batch_size": 16}, True, True, 256),
    ("dpo", {"loss__wpo": True}, False, True, 0),
], ids=["sft", "rdpo-best-other-shared-prefix", "rdpo-sharded", "rdpo-sharded-shared-prefix-long-rows",
        "dpo-sharded-shared-prefix-grad-accum", "dpo-wpo-shared-prefix"])
def test_packed_step_equals_the_padded_step(loss, overrides, sharded, share_prefix, pack_len):
    """With grad_accum, each micro-batch is packed on its own and the step's strided split
    finds its rows: the same micro-batches as the padded batch, so the same gradients."""
    config, settings = _batch(loss, **overrides)
    if sharded:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
        settings = run_settings.load(config)
    mesh = None if sharded else make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(settings, mesh=mesh)
    states = [trainer.init_state(), trainer.init_state()]  # each step donates its state
    host = next(iter(make_dataset(settings, trainer.model_config)))
    packed = to_packed(host, settings.layout, trainer.model_config, trainer.packed_row_multiple(), share_prefix,
                       pack_len, settings.train.grad_accum)
    assert packed["input_ids"].shape[0] < host["input_ids"].shape[0] * host["input_ids"].shape[1]
    results = []
    for batch, state in zip((host, packed), states):
        state, metrics = trainer.step(state, trainer.device_batch(batch))
        results.append((jax.device_get(metrics), jax.device_get(state.trainable)))
    (padded_metrics, padded_params), (packed_metrics, packed_params) = results
    # (accuracies left out: at the first step policy = reference, so margins are ~0 and their sign is noise)
    keys = [k for k in padded_metrics
            if k.startswith(("loss", "logps", "rewards", "visual", "wpo")) and "accuracies" not in k
            or k == "grad_norm"]
    assert "loss" in keys and "grad_norm" in keys
    assert ("wpo/weight" in keys) == bool(overrides.get("loss__wpo"))
    # Rewards are beta * (policy - reference) log-prob differences, ~0 at the first step: two layouts
    # sum the same log-probs in another order, and float32 keeps ~7 digits of a sum that size.
    logp_scale = max((float(np.max(np.abs(padded_metrics[k]))) for k in keys if k.startswith("logps")), default=0.0)
    for key in keys:
        floor = max(1e-6, 1e-6 * logp_scale) if "rewards" in key else 1e-6
        np.testing.assert_allclose(packed_metrics[key], padded_metrics[key], rtol=1e-4, atol=floor, err_msg=key)
    # Adam's first update is about lr * sign(gradient): near-zero gradients may differ by ~lr
    for a, b in zip(jax.tree.leaves(padded_params), jax.tree.leaves(packed_params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=3 * config.optim.lr)


def test_packing_refuses_what_it_cannot_do():
    config = small_config("povid")
    config.data.packing, config.loss.noisy_scoring = True, "argmax"
    with pytest.raises(ValueError, match="data.packing=True cannot go with loss.noisy_scoring='argmax'"):
        run_settings.load(config)
    config = small_config("dpo")
    config.data.share_prefix = True
    with pytest.raises(ValueError, match="data.share_prefix=True needs data.packing=True"):
        run_settings.load(config)
    config.data.packing, config.data.pack_len = True, config.data.seq_len - 1
    with pytest.raises(ValueError, match="data.pack_len=.* is shorter than data.seq_len"):
        run_settings.load(config)


@pytest.mark.parametrize("share_prefix,vision_trained,encodings", [
    (False, False, 1), (True, False, 1), (False, True, 2),
], ids=["padded", "shared-prefix", "trained-tower"])
def test_each_image_is_encoded_once_per_step(monkeypatch, share_prefix, vision_trained, encodings):
    """With a frozen tower the step runs it once over the batch's B x M images, for the policy,
    the reference and every row; a trained tower needs the reference's own pass."""
    calls = []
    encode = LlavaModel.vision_features
    monkeypatch.setattr(LlavaModel, "vision_features", lambda self, pixels: calls.append(pixels.shape[0])
                        or encode(self, pixels))
    config, settings = _batch("rdpo")
    if vision_trained:
        config.reference, config.lora.rank, config.train.trainable = "frozen_copy", 0, r"^vision_tower\."
        settings = run_settings.load(config)
    trainer = Trainer(settings, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state = trainer.init_state()
    host = next(iter(make_dataset(settings, trainer.model_config)))
    if share_prefix:
        host = to_packed(host, settings.layout, trainer.model_config, 1, share_prefix=True)
    with axis_rules(trainer.mesh, trainer.rules):  # traced, not compiled: the count is of the step's program
        jax.eval_shape(lambda st, b: train_step(trainer.statics, st, b), state, trainer.device_batch(host))
    assert calls == [config.train.batch_size * 2] * encodings  # each example's image and its retrieved one
