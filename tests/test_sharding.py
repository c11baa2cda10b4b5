"""The model sharded over 8 CPU devices (data x fsdp x tensor) gives single-device logits."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from realign_jax.models import hf
from realign_jax.models.partitioning import DEFAULT_RULES, axis_rules, logical_to_spec, make_mesh
from test_hf_parity import _inputs


def test_eight_devices_are_visible():
    assert jax.device_count() == 8


def test_sharded_logits_equal_single_device(hf_checkpoint):
    path, torch_model, _ = hf_checkpoint
    ids, pixels = _inputs(torch_model, batch=4)
    single = np.asarray(hf.load_pretrained(path)(ids, pixels))

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = hf.load_pretrained(path, mesh=mesh)
    q_kernel = model.decoder.layers.q_proj.kernel[...]
    assert q_kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert q_kernel.addressable_shards[0].data.shape == (2, 24, 2, 12)  # really split, not replicated

    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    ids_sharded, pixels_sharded = jax.device_put(ids, batch_sharding), jax.device_put(pixels, batch_sharding)
    with axis_rules(mesh):
        logits = nnx.jit(lambda m, i, p: m(i, p))(model, ids_sharded, pixels_sharded)
    assert logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(logits), single, atol=1e-5, rtol=0)


def test_undivisible_dims_are_replicated():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("vocab", "embed"), DEFAULT_RULES, (127, 64), mesh) == PartitionSpec(None, "fsdp")


def test_mesh_that_does_not_divide_devices_is_refused():
    import pytest

    with pytest.raises(ValueError, match="does not divide"):
        make_mesh(data=-1, fsdp=3)
