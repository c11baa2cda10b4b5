"""mode=precompute: the reference's log-probs written once into the records, in input order,
equal those of the fused step, and training on them with reference='precomputed' logs the
fused run's losses."""

import json
import os
import sys

import numpy as np
import pytest
from flax import nnx
from test_data_pipeline import good_record, write_dataset

from realign_jax.data.prompting import IMAGE_PLACEHOLDER
from realign_jax.models import hf
from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel
from realign_jax.settings import runs as run_settings
from realign_jax.train.batches import make_encoder
from realign_jax.train.loop import train
from realign_jax.train.metrics_log import read
from realign_jax.train.precompute import precompute
from realign_jax.train.trainer import Trainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import train_llava  # noqa: E402


@pytest.fixture
def rdpo_records(tokenizer, tmp_path):
    checkpoint = tmp_path / "ckpt"
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    hf.save_pretrained(LlavaModel(preset("tiny", image_token_id=image_id), rngs=nnx.Rngs(0)), str(checkpoint))
    tokenizer.save_pretrained(checkpoint)
    config = train_llava.get_config("loss=rdpo")
    config.model.path = str(checkpoint)
    config.data.source, config.data.path = "jsonl", write_dataset(tmp_path, [good_record(i) for i in range(12)])
    config.data.seq_len, config.train.batch_size = 48, 8
    config.train.steps, config.train.export, config.train.checkpoint_every, config.train.log_every = 3, False, 0, 1
    return config


def test_precomputed_log_probs_match_the_fused_reference_and_train_the_same(rdpo_records, tmp_path):
    config = rdpo_records
    packed = config.copy_and_resolve_references()
    packed.data.packing, packed.data.share_prefix = True, True  # the pass may pack; values do not change
    result = precompute(packed, str(tmp_path / "ref"))
    lines = [json.loads(line) for line in open(result["output"])]
    inputs = [json.loads(line) for line in open(config.data.path)]
    assert result["written"] == len(lines) == 12 and result["skipped"] == 0
    assert [r["id"] for r in lines] == [r["id"] for r in inputs]
    assert all(os.path.isabs(r["image"]) and os.path.isfile(r["rejected_image"]) for r in lines)

    # The fused step's reference on the padded rows of records 8-11 (the last, half-full batch)
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    state = trainer.init_state()
    encoder = make_encoder(settings, trainer.model_config)
    from realign_jax.data.sources import JsonlSource

    source = JsonlSource(config.data.path)
    examples = [encoder.encode(source[i], source.where(i)) for i in (8, 9, 10, 11, 11, 11, 11, 11)]
    host = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    expected = np.asarray(trainer.reference_logps(state, trainer.device_batch(host)))[:4]
    written = np.array([[lines[i]["ref_logps"][k] for k in settings.layout.kinds] for i in (8, 9, 10, 11)])
    np.testing.assert_allclose(written, expected, rtol=1e-5)

    fused = train(config, str(tmp_path / "fused"))
    config.reference, config.data.path = "precomputed", result["output"]
    again = train(config, str(tmp_path / "precomputed"))
    assert fused["step"] == again["step"] == 3
    for a, b in zip(read(str(tmp_path / "fused" / "metrics.jsonl")), read(str(tmp_path / "precomputed" / "metrics.jsonl"))):
        for key in ("loss", "rewards/margins", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=f"step {a['step']} {key}")


def test_precompute_refuses_what_it_cannot_write_and_names_bad_records(rdpo_records, tmp_path):
    config = rdpo_records
    config.data.path = write_dataset(tmp_path, [good_record(0), good_record(1) | {"image": "missing.png"}])
    with pytest.raises(Exception, match=r"pairs.jsonl, line 2"):
        precompute(config, str(tmp_path / "ref"))
    assert not os.path.exists(tmp_path / "ref" / "records.jsonl")
    config.data.on_bad_record = "skip"
    result = precompute(config, str(tmp_path / "ref"))
    assert result["written"] == 1 and result["skipped"] == 1
    config.loss.alt_image = "crop"
    with pytest.raises(ValueError, match="cannot be precomputed"):
        precompute(config, str(tmp_path / "ref"))
    config.data.source = "random"
    with pytest.raises(ValueError, match="mode=precompute reads and writes JSONL"):
        precompute(config, str(tmp_path / "ref"))


def _hostile_precomputed(good_lines: list[str]) -> tuple[list[str], dict[str, int]]:
    """Precomputed records, then one of each kind of record a precomputed run cannot use; the
    fields their skips are counted under."""
    good = json.loads(good_lines[0])
    missing = {k: v for k, v in good.items() if k != "ref_logps"} | {"id": "no-ref"}
    not_finite = good | {"id": "nan-ref", "ref_logps": {"chosen": float("nan"), "rejected": -3.0,
                                                         "chosen_alt_image": float("inf")}}
    bad = [json.dumps(missing), json.dumps(not_finite),
           json.dumps(good | {"id": "deep"})[:-1] + ', "extra": ' + "[" * 50_000 + "]" * 50_000 + "}",
           json.dumps(good | {"id": "surrogate"}).replace('"chosen": "', '"chosen": "\\ud800', 1),
           json.dumps(good | {"id": "provenance", "provenance": 5})]
    return good_lines + bad, {"ref_logps": 2, "<json>": 2, "provenance": 1}


def test_a_precomputed_run_skips_records_it_cannot_use_and_trains_on_the_rest(rdpo_records, tmp_path):
    """Under skip, records without (finite) ref_logps and hostile JSON are counted by field, and the
    good records train exactly as they do alone; under error the run stops naming the first bad
    record before any step."""
    config = rdpo_records
    config.data.path = write_dataset(tmp_path, [good_record(i) for i in range(8)])
    good_lines = open(precompute(config, str(tmp_path / "ref"))["output"]).read().splitlines()
    lines, fields = _hostile_precomputed(good_lines)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines) + "\n")
    config.reference, config.data.path = "precomputed", str(tmp_path / "ref" / "records.jsonl")
    alone = train(config, str(tmp_path / "alone"))  # batch 8 = every good record, each step

    config.data.path, config.data.on_bad_record = str(mixed), "skip"
    skipping = train(config, str(tmp_path / "skip"))
    assert skipping["step"] == alone["step"] == 3
    # 3 steps of 8 good records read 2-3 epochs of the file: each bad record is met 2 or 3 times.
    assert set(skipping["skipped_records"]) == set(fields)
    for field, count in fields.items():
        assert 2 * count <= skipping["skipped_records"][field] <= 3 * count, skipping["skipped_records"]
    for a, b in zip(read(str(tmp_path / "alone" / "metrics.jsonl")), read(str(tmp_path / "skip" / "metrics.jsonl"))):
        for key in ("loss", "rewards/margins", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")

    config.data.on_bad_record = "error"
    with pytest.raises(ValueError, match=r"mixed.jsonl, line 9: field 'ref_logps'"):
        train(config, str(tmp_path / "error"))
    assert not os.path.exists(tmp_path / "error" / "metrics.jsonl") or not read(str(tmp_path / "error" / "metrics.jsonl"))

    # mode=inspect reads them through the same encoder and counts them by the same fields.
    import io

    from realign_jax.train.inspect_data import inspect

    config.mode = "inspect"
    assert dict(inspect(config, io.StringIO()).bad) == fields


def test_a_run_that_never_applied_an_update_neither_succeeds_nor_exports(rdpo_records, tmp_path):
    """Reference log-probs at the edge of float32 make every step's loss overflow: under skip each
    update is left out, and the run ends in an error instead of exporting the untouched model."""
    config = rdpo_records
    kinds = run_settings.load(config).layout.kinds
    records = [good_record(i) | {"ref_logps": {k: (3e38 if k == "chosen" else -3e38) for k in kinds}}
               for i in range(8)]
    config.data.path = write_dataset(tmp_path, records)
    config.reference, config.train.export, config.train.on_nonfinite = "precomputed", True, "skip"
    with pytest.raises(FloatingPointError, match="none of the 3 steps had a finite loss"):
        train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "export")
