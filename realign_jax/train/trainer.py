"""Builds the sharded train state and the compiled step from TrainSettings.

Nothing full-size is built on one host: a checkpoint is read straight into sharded arrays
(`hf.load_pretrained(mesh=...)`), a random model is initialised inside `jax.jit` with its
output shardings, and the optimiser state is created the same way.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from realign_jax.data.batching import packed_row_multiple
from realign_jax.models import hf
from realign_jax.models.config import LlavaConfig, preset
from realign_jax.models.llava import LlavaModel, abstract_model
from realign_jax.models.partitioning import DEFAULT_RULES, axis_rules, logical_to_spec, make_mesh, state_shardings
from realign_jax.train.batches import image_processing
from realign_jax.train.lora import LoraDropoutKey, LoraParam, add_lora, merged_base_state
from realign_jax.train.optimizer import dotted, make_optimizer
from realign_jax.settings.runs import TrainSettings
from realign_jax.train.step import Batch, Metrics, StepStatics, TrainState, all_finite, reference_logps, train_step


def model_config(settings: TrainSettings) -> LlavaConfig:
    """The model's config without its weights (what the data side needs: image tokens, size)."""
    model = settings.model
    if model.path:
        return hf.config_from_hf(model.path, **model.runtime)
    return preset(model.preset, **model.runtime)


def _base_model(settings: TrainSettings, mesh: Mesh, rules: Any, load: bool = True) -> LlavaModel:
    """The starting weights, created or read directly into their shards (`load=False`: random
    weights of the checkpoint's shapes, for tracing the state abstractly)."""
    model_settings = settings.model
    if load and model_settings.path:
        return hf.load_pretrained(model_settings.path, mesh=mesh, rules=rules, **model_settings.runtime)
    config = model_config(settings)
    graphdef, abstract = nnx.split(abstract_model(config))
    shardings = state_shardings(abstract, mesh, rules)
    seed = model_settings.seed
    state = jax.jit(lambda: nnx.state(LlavaModel(config, rngs=nnx.Rngs(seed))), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


class Trainer:
    """Owns the mesh, the step's static parts and the compiled step; the state is passed around."""

    def __init__(self, settings: TrainSettings, mesh: Mesh | None = None):
        self.settings = settings
        defaults = dict(DEFAULT_RULES)
        defaults.update(dict(settings.mesh.rule_pairs))
        self.rules = tuple(defaults.items())
        self.mesh = mesh if mesh is not None else make_mesh(settings.mesh.data, settings.mesh.fsdp,
                                                             settings.mesh.tensor)
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        micro = settings.train.batch_size // settings.train.grad_accum
        if micro % shards:
            raise ValueError(f"train.batch_size / train.grad_accum = {micro} is not divisible by the "
                             f"{shards} data-parallel shards (mesh.data x mesh.fsdp)")
        on_cpu = {d.platform for d in self.mesh.devices.flat} == {"cpu"}
        for key in ("dtype", "param_dtype"):
            if on_cpu and getattr(settings.model, key) == "float16":
                raise ValueError(f"model.{key}='float16': XLA on CPU has no float16 matmul; use 'float32' (or "
                                 "'bfloat16') here, float16 on a GPU")
        self._compiled: dict[tuple, Any] = {}  # batch shapes -> executable (one per length bucket)
        self._reference_fn: Any = None
        self._all_finite: Any = None
        # The model's config before its weights: the data side (tokens per image, image size)
        # can be built before the train state.
        self.model_config = model_config(settings)
        # Read now, not at the export: a processor config it cannot reproduce fails before training.
        self.image_processing = image_processing(settings, self.model_config)

    def init_state(self, load: bool = True) -> TrainState:
        """Base weights (+ LoRA), optimiser state and RNG, all laid out on the mesh."""
        s = self.settings
        model = _base_model(s, self.mesh, self.rules, load)
        self.plain_graphdef = nnx.graphdef(model)
        if s.lora.rank:
            add_lora(model, s.lora, nnx.Rngs(s.seed + 1))
        regex = re.compile(s.train.trainable) if s.train.trainable else None

        def is_trainable(path: tuple[Any, ...], variable: Any) -> bool:
            if isinstance(variable, LoraParam):
                return True
            return isinstance(variable, nnx.Param) and regex is not None and bool(regex.search(dotted(path)))

        graphdef, trainable, keys, frozen = nnx.split(model, is_trainable, LoraDropoutKey, ...)
        if not jax.tree.leaves(trainable):
            raise ValueError(f"train.trainable={s.train.trainable!r} matches no parameter and LoRA is off")
        trainable = jax.device_put(trainable, state_shardings(trainable, self.mesh, self.rules))
        base_trainable = nnx.filter_state(trainable, nnx.Not(LoraParam))
        base_start = base_trainable if s.reference in ("lora_off", "frozen_copy") else nnx.State({})
        base_start = jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                             out_shardings=state_shardings(base_start, self.mesh, self.rules))(base_start)
        tx, schedules = make_optimizer(s.optim, s.train.steps, trainable)
        opt_shardings = state_shardings(jax.eval_shape(tx.init, trainable), self.mesh, self.rules)
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(trainable)
        vision_trainable = any(dotted(path).startswith("vision_tower.")
                               for path, _ in jax.tree_util.tree_leaves_with_path(trainable))
        self.statics = StepStatics(
            graphdef=graphdef, objective=s.objective, loss=s.loss, layout=s.layout, reference=s.reference,
            grad_accum=s.train.grad_accum, tx=tx, schedules=schedules, vision_trainable=vision_trainable,
            dropout_keys=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), keys),
        )
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return TrainState(
            step=jax.device_put(jnp.zeros((), jnp.int32), replicated), trainable=trainable, opt_state=opt_state,
            rng=jax.device_put(jax.random.PRNGKey(s.seed), replicated), frozen=frozen, base_start=base_start,
        )

    def abstract_state(self) -> TrainState:
        """The state's shapes, dtypes and shardings, with no weight allocated or read: what
        compiling the step ahead of time for another machine's devices needs (realign_jax/aot.py)."""
        state = jax.eval_shape(lambda: self.init_state(load=False))
        # One sharding per variable (or bare leaf); the variables stay, their logical axes name the layout.
        return jax.tree.map(lambda sharding, node: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), node), self.state_shardings(state), state)

    # -- sharding of inputs and outputs ---------------------------------------------------
    def state_shardings(self, state: TrainState) -> Any:
        return state_shardings(state, self.mesh, self.rules)

    def batch_sharding(self, ndim: int) -> NamedSharding:
        spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), self.rules)
        return NamedSharding(self.mesh, spec)

    def packed_row_multiple(self) -> int:
        """data/batching.py `packed_row_multiple` for this mesh's data shards."""
        shards = self.mesh.size // self.batch_sharding(1).shard_shape((self.mesh.size,))[0]
        return packed_row_multiple(self.settings.train.batch_size, shards)

    def device_batch(self, host_batch: dict[str, np.ndarray]) -> Batch:
        """This process's rows -> global arrays sharded over the data axes."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding(v.ndim), v)
                for k, v in host_batch.items()}

    # -- the step ---------------------------------------------------------------------------
    @staticmethod
    def _shapes(batch: Batch) -> tuple:
        return tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))

    def compile_step(self, state: TrainState, batch: Batch) -> Any:
        """Lower and compile the step for these batch shapes once (AOT: memory analysis, HLO
        text); each length bucket gets its own executable."""
        state_sh = self.state_shardings(state)
        batch_sh = {k: self.batch_sharding(v.ndim) for k, v in batch.items()}
        replicated = NamedSharding(self.mesh, PartitionSpec())
        jitted = jax.jit(lambda st, b: train_step(self.statics, st, b), in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, replicated), donate_argnums=0)
        with axis_rules(self.mesh, self.rules):
            compiled = jitted.lower(state, batch).compile()
        self._compiled[self._shapes(batch)] = compiled
        return compiled

    def is_compiled(self, batch: Batch) -> bool:
        """Whether a step for this batch's shapes is compiled already (else the next step compiles)."""
        return self._shapes(batch) in self._compiled

    def executable(self, state: TrainState, batch: Batch) -> Any:
        """The step's executable for this batch's shapes, compiling it on first use."""
        executable = self._compiled.get(self._shapes(batch))
        return executable if executable is not None else self.compile_step(state, batch)

    def step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return self.executable(state, batch)(state, batch)

    def bytes_written(self, state: TrainState, keep_checkpoints: int, export: bool) -> int:
        """About what the run puts on disk: `keep + 1` checkpoints (one is written while the
        kept ones still exist) and the merged export."""
        def size(tree: Any) -> int:
            return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

        checkpoint = size(state.checkpointed())
        model = size((state.trainable, state.frozen)) if export else 0
        return (keep_checkpoints + 1) * checkpoint + model

    def check_finite(self, state: TrainState, step: int) -> None:
        """Refuse to checkpoint parameters or optimiser moments holding NaN or inf."""
        if self._all_finite is None:
            self._all_finite = jax.jit(lambda s: all_finite((s.trainable, s.opt_state)))
        if not bool(self._all_finite(state)):
            raise FloatingPointError(f"step {step}: the trained parameters or optimiser moments are not finite; no "
                                     "checkpoint was written (the last complete one is kept): lower optim.lr")

    def reference_logps(self, state: TrainState, batch: Batch) -> jax.Array:
        """[B, K] reference log-probs of a batch, for precomputing them once."""
        if self._reference_fn is None:
            self._reference_fn = jax.jit(lambda st, b: reference_logps(self.statics, st, b))
        with axis_rules(self.mesh, self.rules):
            return self._reference_fn(state, batch)

    # -- views and export ---------------------------------------------------------------------
    def policy(self, state: TrainState) -> LlavaModel:
        """The current policy as a model (LoRA still separate)."""
        keys = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), self.statics.dropout_keys)
        return nnx.merge(self.statics.graphdef, state.trainable, keys, state.frozen)

    def merged_policy(self, state: TrainState) -> LlavaModel:
        """The policy with adapters folded in: a plain LlavaModel."""
        return nnx.merge(self.plain_graphdef, merged_base_state(self.policy(state)))

    def export(self, state: TrainState, path: str, **kwargs: Any) -> None:
        """The merged policy as a Hugging Face folder, with processor files describing the run's
        preprocessing wherever the side-file source has none, or where the run set its own
        (`AutoProcessor` loads it)."""
        # A padding set by data.pad_to_square is the run's, not the source's: its file is written.
        hf.save_pretrained(self.merged_policy(state), path, image_processing=self.image_processing,
                           image_processing_is_the_runs=self.settings.data.pad_to_square != "auto", **kwargs)



def trained_parts(trainable: nnx.State) -> tuple[frozenset[str], frozenset[str]]:
    """What a state's `trainable` holds, as `models.accounting.step_flops` takes it: the model's
    top-level parts (vision_tower, projector, decoder) with base parameters trained in full, and
    the decoder layers' projections holding LoRA adapters (adapters elsewhere are not counted)."""
    full, adapted = set(), set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(trainable, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        name = dotted(path).split(".")
        if not isinstance(leaf, LoraParam):
            full.add(name[0])
        elif name[:2] == ["decoder", "layers"] and len(name) == 4:
            adapted.add(name[2])
    return frozenset(full), frozenset(adapted)
