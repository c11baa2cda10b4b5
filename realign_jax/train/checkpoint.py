"""Orbax checkpoints of the train state and the data iterator.

A checkpoint holds the step, the trainable parameters (only the adapters and trained groups
under LoRA), the optimiser state, the RNG and the Grain iterator state. The frozen base
and the reference come back from the base checkpoint, so they are never saved twice.
Saves are asynchronous: training continues while the files are written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from realign_jax.train.step import TrainState
from realign_jax.train.workdir import check_room


def _unwrap(tree: Any) -> Any:
    """nnx Variables -> their values, so Orbax sees plain arrays (leaf order is unchanged)."""
    return jax.tree.map(lambda v: v.get_raw_value() if isinstance(v, nnx.Variable) else v, tree,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


class Checkpointer:
    def __init__(self, directory: str, every: int, keep: int, checkpoint_bytes: int = 0):
        self.directory = os.path.abspath(directory)
        self.every = every  # 0 = only forced saves (the end, preemption)
        # A save does not start without room for it: a disk that filled since the last one is
        # reported before Orbax's writer threads each fail on it.
        self.checkpoint_bytes = checkpoint_bytes
        # A save cut by a kill leaves `<step>.orbax-checkpoint-tmp`: never restored, removed on start.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether `step` is a periodic save step."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: TrainState, data_state: dict[str, Any]) -> None:
        """Start an async save of `state` (after `step` updates) and the data iterator state,
        unless that step is saved already. The caller passes the step it already knows, so
        deciding whether to save never waits on the device."""
        if step in self.manager.all_steps():
            return
        check_room(os.path.dirname(self.directory), self.checkpoint_bytes, f"the checkpoint of step {step}")
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_unwrap(state.checkpointed())), data=ocp.args.JsonSave(data_state)),
            force=True)

    def restore(self, state: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Load into `state`'s layout (shapes, dtypes, shardings); returns it with the data state."""
        step = self.latest_step() if step is None else step
        template = state.checkpointed()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                _unwrap(template))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        leaves = jax.tree.leaves(restored.state)
        loaded = jax.tree.unflatten(jax.tree.structure(template), leaves)
        return dataclasses.replace(state, **loaded), restored.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
