"""Parameter counts and FLOPs against independent sources: transformers and XLA's cost model."""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from realign_jax.models import hf
from realign_jax.models.accounting import count_params, decoder_flops, forward_flops, main, step_flops
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


# -- step_flops: each term by hand, and the counts aot.py and the benchmarks made before it ------

TINY = preset("tiny")
ROWS = [40, 24, 33]  # decoder rows of different lengths (image tokens included)
IMAGES = 2
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj")  # lora.targets' default


def _hand_decoder(config, length):
    """The decoder's forward over one row, written out as before step_flops existed."""
    t = config.text
    hd = t.resolved_head_dim
    attn_dims = (2 * t.num_heads + 2 * t.num_kv_heads) * hd
    return t.num_layers * (2 * length * t.hidden_size * attn_dims + 2 * length * 3 * t.hidden_size * t.intermediate_size
                           + 2 * 2 * length**2 * t.num_heads * hd) + 2 * length * t.hidden_size * t.vocab_size


def _hand_lora(config, rank, tokens):
    """LoRA on q/k/v/o: 2 r (d_in + d_out) per token, projection and layer (forward)."""
    t = config.text
    q, kv = t.num_heads * t.resolved_head_dim, t.num_kv_heads * t.resolved_head_dim
    return 2 * rank * ((t.hidden_size + q) * 2 + (t.hidden_size + kv) * 2) * t.num_layers * tokens


def _parts(config=TINY, rows=ROWS, images=IMAGES):
    image = forward_flops(config, 0)
    return images * image.vision, images * image.projector, sum(_hand_decoder(config, n) for n in rows)


def test_decoder_flops_is_the_forward_decoder_term():
    for length in (1, 16, 40):
        assert decoder_flops(TINY, length) == _hand_decoder(TINY, length)
        assert forward_flops(TINY, length - TINY.num_image_tokens).decoder == _hand_decoder(TINY, length)
    seven = preset("llava-1.5-7b")
    assert decoder_flops(seven, 640) == _hand_decoder(seven, 640)


def test_step_flops_lora_terms():
    """LoRA on q/k/v/o, the projector trained in full, the reference = the policy with LoRA off."""
    vision, projector, decoder = _parts()
    lora = _hand_lora(TINY, 8, sum(ROWS))
    f = step_flops(TINY, ROWS, IMAGES, trains={"projector"}, lora_rank=8, lora_targets=ADAPTED, reference="lora_off")
    assert f.forward == vision + projector + decoder + lora
    # the frozen decoder: activations' gradients only; the projector: activations' and weights'; the
    # frozen tower: none (nothing before it trains); the adapters: 2x their forward
    assert f.backward == decoder + 2 * projector + 2 * lora
    assert f.reference == decoder + projector  # the frozen tower's features are shared, no adapters
    assert f.remat == 0 and f.executed == f.needed == f.forward + f.backward + f.reference


def test_step_flops_full_fine_tuning_and_reference_kinds():
    vision, projector, decoder = _parts()
    f = step_flops(TINY, ROWS, IMAGES, trains={"projector", "decoder"}, reference="frozen_copy")
    assert (f.forward, f.backward, f.reference) == (vision + projector + decoder, 2 * (projector + decoder),
                                                    projector + decoder)
    for kind in ("precomputed", "none"):
        assert step_flops(TINY, ROWS, IMAGES, trains={"projector", "decoder"}, reference=kind).reference == 0
    # LoRA alone (train.trainable=''): nothing before the decoder trains, so no projector backward
    alone = step_flops(TINY, ROWS, IMAGES, trains=(), lora_rank=4, lora_targets=ADAPTED)
    assert alone.backward == decoder + 2 * _hand_lora(TINY, 4, sum(ROWS))
    # a trained tower: its backward, and the reference runs it again
    tower = step_flops(TINY, ROWS, IMAGES, trains={"vision_tower", "projector", "decoder"}, reference="frozen_copy")
    assert tower.backward == 2 * (vision + projector + decoder) and tower.reference == vision + projector + decoder
    # adapters need a rank: rank 0 counts none
    assert step_flops(TINY, ROWS, IMAGES, trains={"projector"}, lora_targets=ADAPTED).forward == vision + projector + decoder


def test_step_flops_remat_recomputes_attention_and_the_projections_it_names():
    t = TINY.text
    hd = t.resolved_head_dim
    attention = sum(n * 4 * n * t.num_heads * hd for n in ROWS) * t.num_layers
    qkv_gate_up = sum(ROWS) * t.num_layers * (2 * t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * hd
                                              + 2 * 2 * t.hidden_size * t.intermediate_size)
    common = dict(trains={"projector"}, lora_rank=8, lora_targets=ADAPTED)
    none = step_flops(TINY, ROWS, IMAGES, **common)
    full = step_flops(TINY, ROWS, IMAGES, remat="full", **common)
    dots = step_flops(TINY, ROWS, IMAGES, remat="dots", **common)
    assert (none.remat, dots.remat, full.remat) == (0, attention, attention + qkv_gate_up)
    assert full.needed == none.needed and full.executed == none.needed + attention + qkv_gate_up


def test_step_flops_checks_its_names():
    with pytest.raises(ValueError, match="trains: \\['tower'\\] are not parts"):
        step_flops(TINY, ROWS, IMAGES, trains={"tower"})
    with pytest.raises(ValueError, match="reference='copy'"):
        step_flops(TINY, ROWS, IMAGES, trains={"projector"}, reference="copy")
    with pytest.raises(ValueError, match="remat='some'"):
        step_flops(TINY, ROWS, IMAGES, trains={"projector"}, remat="some")
    with pytest.raises(ValueError, match="lora_targets: \\['lm_head'\\]"):
        step_flops(TINY, ROWS, IMAGES, trains={"projector"}, lora_rank=2, lora_targets=("lm_head",))


def _old_aot(config, rows, row_len, images, lora_rank, reference, remat):
    """aot.step_flops before models/accounting.step_flops (its (needed, executed))."""
    t = config.text
    per_row = forward_flops(config, row_len - config.num_image_tokens)
    backward = 1 if lora_rank else 2
    ref = 0 if reference in ("precomputed", "none") else 1
    needed = per_row.decoder * rows * (1 + backward + ref) + images * (per_row.vision + per_row.projector * (1 + backward + ref))
    hd = t.resolved_head_dim
    attention = 2 * 2 * row_len * t.num_heads * hd
    qkv_gate_up = 2 * t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * hd + 2 * 2 * t.hidden_size * t.intermediate_size
    per_token = {"full": attention + qkv_gate_up, "dots": attention}.get(remat, 0)
    return needed, needed + per_token * t.num_layers * row_len * rows


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
@pytest.mark.parametrize("reference", ["frozen_copy", "precomputed"])
def test_step_flops_matches_the_old_aot_count_where_it_agreed(remat, reference):
    """Full fine-tuning: the same to the FLOP. Under LoRA the decoder, the tower and remat agree;
    the old count had the trained projector's backward at 1x (now 2x: its weights' gradients too)
    and no LoRA matmuls."""
    seven = preset("llava-1.5-7b")
    rows, row_len, images = 12, 1024, 8
    needed, executed = _old_aot(seven, rows, row_len, images, 0, reference, remat)
    full = step_flops(seven, [row_len] * rows, images, trains={"projector", "decoder"}, reference=reference, remat=remat)
    assert (full.needed, full.executed) == (needed, executed)
    reference = "lora_off" if reference == "frozen_copy" else reference
    needed, executed = _old_aot(seven, rows, row_len, images, 128, reference, remat)
    lora = step_flops(seven, [row_len] * rows, images, trains={"projector"}, lora_rank=128, lora_targets=ADAPTED,
                      reference=reference, remat=remat)
    extra = images * forward_flops(seven, 0).projector + 3 * _hand_lora(seven, 128, rows * row_len)
    assert (lora.needed - extra, lora.executed - extra) == (needed, executed)
    assert extra < 0.03 * needed  # what the old count left out: 2-3% at rank 128 on 7B


def _old_trl(config, lengths, mode, rank):
    """benchmarks/trl_side_by_side.pair_flops before step_flops."""
    prompt, chosen, rejected = lengths
    backward = 1 if mode == "lora" else 2
    decoder = sum(forward_flops(config, prompt - config.num_image_tokens + a).decoder for a in (chosen, rejected))
    image = forward_flops(config, 0)
    total = decoder * (1 + backward + 1) + image.vision + image.projector * (1 + 2 + 1)
    if mode == "lora":
        total += 3 * _hand_lora(config, rank, 2 * prompt + chosen + rejected)
    return total


def test_step_flops_matches_the_old_trl_side_by_side_count():
    """The TRL comparison's per-pair count (one image, chosen and rejected rows), both modes."""
    prompt, chosen, rejected = 24, 7, 11
    rows = [prompt + chosen, prompt + rejected]
    lora = step_flops(TINY, rows, 1, trains={"projector"}, lora_rank=8, lora_targets=ADAPTED, reference="lora_off")
    full = step_flops(TINY, rows, 1, trains={"projector", "decoder"}, reference="frozen_copy")
    assert lora.needed == _old_trl(TINY, (prompt, chosen, rejected), "lora", 8)
    assert full.needed == _old_trl(TINY, (prompt, chosen, rejected), "full", 0)


def test_step_flops_against_the_old_step_throughput_count():
    """benchmarks/step_throughput.needed_flops before step_flops: the decoder agrees; it left out
    the reference's projector forward (the step runs it: train/step.py) and LoRA's matmuls."""
    vision, projector, decoder = _parts()
    for reference, ref in (("frozen_copy", 1), ("precomputed", 0)):
        old = decoder * (1 + 2 + ref) + vision + projector * (1 + 2)
        new = step_flops(TINY, ROWS, IMAGES, trains={"projector", "decoder"}, reference=reference)
        assert new.needed - old == ref * projector


def test_trained_parts_reads_what_the_state_trains():
    """What aot.py and step_throughput.py pass step_flops: from the trainer's own state."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    import train_llava

    from realign_jax.settings import runs as run_settings
    from realign_jax.train.trainer import Trainer, trained_parts

    config = train_llava.get_config("loss=dpo")
    state = Trainer(run_settings.load(config)).abstract_state()
    assert trained_parts(state.trainable) == ({"projector"}, set(ADAPTED))
    config.lora.rank, config.reference, config.train.trainable = 0, "frozen_copy", r"^(projector|decoder)\."
    state = Trainer(run_settings.load(config)).abstract_state()
    assert trained_parts(state.trainable) == ({"projector", "decoder"}, set())
