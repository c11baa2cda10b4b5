"""Logical axis names -> mesh axes.

Models name the axes of every parameter and main activation with logical names
(`batch`, `length`, `embed`, `mlp`, `heads`, ...). Which mesh axis (`data`, `fsdp`,
`tensor`) each maps to is a rule table chosen by the caller, so changing the mesh is a
configuration change and never a model edit. Outside an `axis_rules` context every
constraint is a no-op, which keeps single-device code free of sharding concerns.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = tuple[str | None, ...]
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP shards the embedding dimension of weights; tensor parallelism shards heads, MLP and
# vocabulary; the batch is split over both data-parallel axes.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("act_embed", None),
    ("length", None),
    ("head_dim", None),
    ("layers", None),
    ("patch", None),
)


@dataclasses.dataclass(frozen=True)
class _Context:
    mesh: Mesh
    rules: Rules


_CONTEXT: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Activate a mesh and rule table for `constrain` calls traced inside the block."""
    token = _CONTEXT.set(_Context(mesh, tuple(rules)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def logical_to_spec(
    axes: LogicalAxes, rules: Rules, shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Map logical names to a PartitionSpec.

    A mesh axis is used at most once per array, and when `shape` and `mesh` are given a
    dimension that the mesh axes do not divide is replicated rather than failing to compile
    (tiny test models have vocabularies and head counts no mesh divides).
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        names = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        names = tuple(n for n in names if n not in used and (mesh is None or n in mesh.shape))
        if names and shape is not None and mesh is not None:
            size = 1
            for n in names:
                size *= mesh.shape[n]
            if shape[dim] % size:
                names = ()
        used.update(names)
        spec.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op without `axis_rules`."""
    context = _CONTEXT.get()
    if context is None:
        return x
    spec = logical_to_spec(axes, context.rules, x.shape, context.mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(context.mesh, spec))


def variable_axes(variable: nnx.Variable) -> LogicalAxes:
    """The logical names a parameter was created with (replicated when it has none)."""
    axes = variable.get_metadata().get("logical_axes")
    return tuple(axes) if axes is not None else (None,) * len(variable.shape)


def state_shardings(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A NamedSharding per leaf of `state` (abstract or concrete): variables by their logical
    axes, anything else (optimiser step counts, RNG keys) replicated."""

    def sharding(leaf: Any) -> NamedSharding:
        if not isinstance(leaf, nnx.Variable) or not hasattr(leaf.get_raw_value(), "shape"):
            return NamedSharding(mesh, PartitionSpec())  # also optax's empty masked-out slots
        return NamedSharding(mesh, logical_to_spec(variable_axes(leaf), rules, leaf.shape, mesh))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 meaning 'the remaining devices'."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
    known = 1
    for key, value in sizes.items():
        if value != -1 and value < 1:
            raise ValueError(f"mesh.{key}={value}: sizes must be positive or -1")
        known *= value if value != -1 else 1
    if free:
        if len(devices) % known:
            raise ValueError(f"mesh {sizes} does not divide the {len(devices)} devices")
        sizes[free[0]] = len(devices) // known
    if sizes["data"] * sizes["fsdp"] * sizes["tensor"] != len(devices):
        raise ValueError(f"mesh {sizes} needs {sizes['data'] * sizes['fsdp'] * sizes['tensor']} devices, found {len(devices)}")
    # Auto axes: XLA propagates shardings from parameters, inputs and `constrain` hints
    # (explicit-mode types would make every reshape of a sharded batch spell out its sharding).
    return jax.make_mesh(
        (sizes["data"], sizes["fsdp"], sizes["tensor"]), ("data", "fsdp", "tensor"), devices=devices,
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
    )
