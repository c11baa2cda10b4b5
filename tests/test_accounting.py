"""Parameter counts and FLOPs against independent sources: transformers and XLA's cost model."""

import jax
import jax.numpy as jnp
from flax import nnx

from realign_jax.models import hf
from realign_jax.models.accounting import count_params, forward_flops, main
from realign_jax.models.config import preset
from realign_jax.models.llava import abstract_model


def test_param_count_equals_transformers(hf_checkpoint):
    path, torch_model, _ = hf_checkpoint
    # transformers counts a tied embedding once, as we do; the unused post_layernorm is in both.
    assert count_params(hf.config_from_hf(path))["total"] == sum(p.numel() for p in torch_model.parameters())


def test_llava_7b_has_its_published_size():
    assert round(count_params(preset("llava-1.5-7b"))["total"] / 1e9, 2) == 7.06


def test_forward_flops_agree_with_xla_cost_analysis():
    """XLA counts matmuls plus elementwise work: it must be at least ours and only a little more."""
    config = preset("tiny", scan_layers=False)
    graphdef, state = nnx.split(abstract_model(config))
    text_tokens = 20
    ids = jax.ShapeDtypeStruct((1, config.num_image_tokens + text_tokens), jnp.int32)
    pixels = jax.ShapeDtypeStruct((1, 3, 32, 32), jnp.float32)
    compiled = jax.jit(lambda s, i, p: nnx.merge(graphdef, s)(i, p)).lower(state, ids, pixels).compile()
    xla_flops = compiled.cost_analysis()["flops"]
    ours = forward_flops(config, text_tokens).total
    assert ours <= xla_flops <= 1.06 * ours


def test_command_prints_the_7b_figures(capsys):
    main(["--preset", "llava-1.5-7b"])
    out = capsys.readouterr().out
    assert "7,063,427,072" in out and "per token" in out
