"""`step(state, batch) -> (state, metrics)`: one jitted policy + reference update.

Inside one XLA program: the policy forward over all stacked rows and its backward, the
reference log-probs under `stop_gradient` (the same parameters with LoRA switched off and
the trainable base parameters at their start values, or read from the batch when they were
precomputed), the loss, gradient accumulation over micro-batches, clipping and the
optimiser update, which is skipped when the loss or a gradient is not finite. The state is
donated, so parameters and optimiser moments are updated in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from realign_jax.models.llava import LlavaModel
from realign_jax.objectives.losses import LossConfig, loss_spec
from realign_jax.train.lora import set_lora_enabled
from realign_jax.train.rows import RowLayout, image_states, row_logps

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser updates done
    trainable: nnx.State  # what the optimiser updates: LoRA adapters and/or base groups
    opt_state: Any
    rng: jax.Array  # uint32[2], split once per step
    frozen: nnx.State  # every other parameter (the base under LoRA, the vision tower)
    base_start: nnx.State  # start values of the trained *base* parameters, for the reference (empty when unused)

    def checkpointed(self) -> dict[str, Any]:
        """What a checkpoint holds: the frozen parts come back from the base checkpoint."""
        return {"step": self.step, "trainable": self.trainable, "opt_state": self.opt_state, "rng": self.rng}


@dataclasses.dataclass(frozen=True)
class StepStatics:
    """Everything static about the step (hashable pieces and the model graph)."""

    graphdef: Any
    objective: str  # "sft" or a loss name
    loss: LossConfig
    layout: RowLayout
    reference: str
    grad_accum: int
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]
    vision_trainable: bool
    dropout_keys: nnx.State  # template (shapes) of LoRA dropout keys; empty without dropout


def _fresh_dropout_keys(template: nnx.State, key: jax.Array) -> nnx.State:
    leaves, treedef = jax.tree.flatten(template)
    keys = [jax.random.bits(jax.random.fold_in(key, i), leaf.shape, jnp.uint32) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, keys)


def _models(statics: StepStatics, state: TrainState, trainable: nnx.State,
            key: jax.Array) -> tuple[LlavaModel, LlavaModel]:
    keys = _fresh_dropout_keys(statics.dropout_keys, key)
    policy = nnx.merge(statics.graphdef, trainable, keys, state.frozen)
    reference = nnx.merge(statics.graphdef, jax.lax.stop_gradient(trainable), keys, state.frozen)
    if len(jax.tree.leaves(state.base_start)):  # trained base groups: the reference keeps their start values
        nnx.update(reference, state.base_start)
    set_lora_enabled(reference, False)
    return policy, reference


def _loss(statics: StepStatics, state: TrainState, trainable: nnx.State, batch: Batch,
          key: jax.Array) -> tuple[jax.Array, Metrics]:
    policy, reference = _models(statics, state, trainable, key)
    states = image_states(policy, batch["pixel_values"])
    if not statics.vision_trainable:
        states = jax.lax.stop_gradient(states)  # a frozen tower's features serve the reference too
    policy_rows = row_logps(policy, states, batch, statics.layout)
    if statics.objective == "sft":
        chosen = policy_rows["chosen"]
        tokens = jnp.sum(policy_rows["length_chosen"])
        loss = -jnp.sum(chosen) / jnp.maximum(tokens, 1)
        return loss, {"loss": loss, "logps/chosen": jnp.mean(chosen)}
    spec = loss_spec(statics.objective)
    if not spec.needs_reference:  # SimPO, CPO, ORPO: no reference forward in the program at all
        return spec.fn(policy_rows, {}, statics.loss)
    if statics.reference == "precomputed":
        ref_rows = {kind: batch["ref_logps"][:, i] for i, kind in enumerate(statics.layout.kinds)}
    else:
        ref_states = image_states(reference, batch["pixel_values"]) if statics.vision_trainable else states
        ref_rows = jax.lax.stop_gradient(row_logps(reference, ref_states, batch, statics.layout.for_reference()))
    return spec.fn(policy_rows, ref_rows, statics.loss)


def reference_logps(statics: StepStatics, state: TrainState, batch: Batch) -> jax.Array:
    """The reference's summed log-probs [B, K] for a batch: what `reference='precomputed'` reads
    from `batch['ref_logps']` (a precompute pass runs this once over the data)."""
    _, reference = _models(statics, state, state.trainable, state.rng)
    rows = row_logps(reference, image_states(reference, batch["pixel_values"]), batch, statics.layout.for_reference())
    return jnp.stack([rows[kind] for kind in statics.layout.kinds], axis=1)


def _micro_batches(batch: Batch, count: int) -> Batch:
    """[B, ...] -> [count, B/count, ...] taking every count-th example, so each micro-batch is
    spread over all data shards instead of living on a few of them."""
    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x.reshape((x.shape[0] // count, count) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def train_step(statics: StepStatics, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng, key = jax.random.split(state.rng)
    grad_fn = jax.value_and_grad(lambda t, b, k: _loss(statics, state, t, b, k), has_aux=True)
    if statics.grad_accum == 1:
        (_, metrics), grads = grad_fn(state.trainable, batch, key)
    else:
        def accumulate(carry: Any, xs: tuple[Batch, jax.Array]) -> tuple[Any, None]:
            micro, index = xs
            (_, micro_metrics), micro_grads = grad_fn(state.trainable, micro, jax.random.fold_in(key, index))
            return jax.tree.map(jnp.add, carry, (micro_grads, micro_metrics)), None

        first = _first(batch, statics.grad_accum)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.trainable, first, key))
        init = (zeros[1], zeros[0][1])
        (grads, metrics), _ = jax.lax.scan(accumulate, init,
                                           (_micro_batches(batch, statics.grad_accum), jnp.arange(statics.grad_accum)))
        grads, metrics = jax.tree.map(lambda x: x / statics.grad_accum, (grads, metrics))
    # A non-finite loss or gradient leaves the parameters and optimiser moments as they were;
    # the loop reads `nonfinite` and skips or stops (train.on_nonfinite).
    finite = jnp.isfinite(metrics["loss"]) & all_finite(grads)

    def update(_: None) -> tuple[nnx.State, Any]:
        updates, opt_state = statics.tx.update(grads, state.opt_state, state.trainable)
        return optax.apply_updates(state.trainable, updates), opt_state

    trainable, opt_state = jax.lax.cond(finite, update, lambda _: (state.trainable, state.opt_state), None)
    metrics = dict(metrics)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = statics.schedules["default"](state.step)
    for name, schedule in statics.schedules.items():
        if name != "default":
            metrics[f"lr/{name}"] = schedule(state.step)
    metrics["tokens"] = jnp.sum(batch["attention_mask"])
    new_state = dataclasses.replace(state, step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=rng)
    return new_state, metrics


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every array in `tree` is finite (a bool scalar)."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _first(batch: Batch, count: int) -> Batch:
    return jax.tree.map(lambda x: x[: x.shape[0] // count], batch)
