"""ArrayRecord conversion, the inspect command, worker processes, length buckets, and skip
counts that survive a checkpoint."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
from flax import nnx
from test_data_pipeline import encoder, good_record, write_dataset

from realign_jax.data import batching, loader
from realign_jax.data.arrayrecord import ArrayRecordSource, convert
from realign_jax.data.prompting import IMAGE_PLACEHOLDER
from realign_jax.settings.sections import RecordSource
from realign_jax.data.records import BadRecord
from realign_jax.data.sources import JsonlSource, open_source

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """A tiny random LLaVA in Hugging Face format whose folder carries the tokenizer."""
    from realign_jax.models import hf
    from realign_jax.models.config import preset
    from realign_jax.models.llava import LlavaModel

    path = tmp_path_factory.mktemp("ckpt")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    hf.save_pretrained(LlavaModel(preset("tiny", image_token_id=image_id), rngs=nnx.Rngs(0)), str(path))
    tokenizer.save_pretrained(path)
    return str(path)


def rich_record(i):
    return good_record(i) | {"provenance": {"builder": "test", "neighbour": i}, "ref_logps": {
        "chosen": -1.0 - i, "rejected": -2.0 - i, "chosen_alt_image": -3.0}}


def test_a_folder_of_jsonl_shards_reads_as_one_source(tmp_path):
    """A pair builder's output folder is a training source as it is: its shards in name order,
    errors naming the shard and the record in it, images relative to the shard's folder."""
    write_dataset(tmp_path, [])
    shards = tmp_path / "pairs"
    shards.mkdir()
    for name, ids in (("pairs-00001-of-00002.jsonl", (2, 3, 4)), ("pairs-00000-of-00002.jsonl", (0, 1))):
        rows = [good_record(i) | {"image": f"../img{i % 4}.png", "rejected_image": "../img0.png"} for i in ids]
        (shards / name).write_text("".join(json.dumps(r) + "\n" for r in rows) + ("{broken\n" if ids[0] else ""))
    (shards / "pairs-00001-of-00002.jsonl.counts.json").write_text("{}")  # sidecars are not records
    source = open_source(RecordSource(source="jsonl", path=str(shards)))
    assert len(source) == 6 and [source[i].id for i in range(5)] == ["r0", "r1", "r2", "r3", "r4"]
    assert os.path.isfile(source[3].image) and os.path.samefile(source[3].image, tmp_path / "img3.png")
    assert source.where(5) == f"{shards / 'pairs-00001-of-00002.jsonl'}, line 4"
    with pytest.raises(BadRecord, match=r"pairs-00001-of-00002.jsonl, line 4: field '<json>'"):
        source[5]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .jsonl files"):
        JsonlSource(str(tmp_path / "empty"))


def test_convert_embeds_images_and_reads_back_the_same_examples(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [rich_record(i) for i in range(5)])
    jsonl = JsonlSource(path)
    result = convert(jsonl, str(tmp_path / "shards"), num_shards=2)
    assert result["written"] == 5 and len(result["shards"]) == 2 and not os.path.exists(tmp_path / "shards.partial")
    shards = open_source(RecordSource(source="arrayrecord", path=str(tmp_path / "shards")))
    assert len(shards) == 5
    # Round-robin: shard 0 holds records 0, 2, 4 and shard 1 holds 1, 3.
    order = [shards[i].id for i in range(5)]
    assert order == ["r0", "r2", "r4", "r1", "r3"]
    enc = encoder(tokenizer)
    for i in range(5):
        record = shards[i]
        original = jsonl[int(record.id[1:])]
        assert isinstance(record.image, bytes) and record.image == open(original.image, "rb").read()
        assert record.provenance == original.provenance and record.ref_logps == original.ref_logps
        a, b = enc.encode(original, "a"), enc.encode(record, "b")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # One shard file, or a glob, reads too.
    assert len(ArrayRecordSource(result["shards"][1])) == 2
    assert len(ArrayRecordSource(str(tmp_path / "shards" / "*.arrayrecord"))) == 5


def test_convert_bad_image_stops_or_skips_and_never_leaves_a_finished_looking_output(tmp_path):
    records = [good_record(0), good_record(1) | {"image": "corrupt.png"}, good_record(2)]
    path = write_dataset(tmp_path, records)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    output = str(tmp_path / "out")
    with pytest.raises(BadRecord, match=r"pairs.jsonl, line 2: field 'image'"):
        convert(JsonlSource(path), output)
    assert not os.path.exists(output)
    result = convert(JsonlSource(path), output, on_bad_record="skip")
    assert result["written"] == 2 and result["skipped"] == 1 and "line 2" in result["skipped_examples"][0]
    with pytest.raises(FileExistsError, match="already exists"):
        convert(JsonlSource(path), output)
    with pytest.raises(FileNotFoundError, match="no .arrayrecord shards"):
        ArrayRecordSource(str(tmp_path / "nothing"))


def test_cli_convert_then_inspect(tokenizer, checkpoint, tmp_path, capsys):
    import convert_data
    import train_llava

    from realign_jax.main import run

    records = [good_record(i) for i in range(6)] + [good_record(0) | {"chosen": ""}]
    records[2]["chosen"] = "A red cat sits on a mat. " * 6  # longer than data.seq_len: cut at the end
    path = write_dataset(tmp_path, records)
    config = convert_data.get_config()
    config.data.path, config.data.on_bad_record = path, "skip"
    config.convert.output, config.convert.num_shards = str(tmp_path / "ar"), 3
    run(config, str(tmp_path))
    assert "convert: 6 records -> 3 shard(s)" in capsys.readouterr().out

    config = train_llava.get_config()
    config.mode, config.model.path = "inspect", checkpoint
    config.data.source, config.data.path, config.data.seq_len = "jsonl", path, 64
    config.inspect.examples = 3
    run(config, str(tmp_path))
    out = capsys.readouterr().out
    assert f"{IMAGE_PLACEHOLDER}x16" in out and "[[A red cat sits on a mat.</s>]]" in out
    assert out.count("\nchosen: ") == 3 and "cut from" in out  # record 2's chosen row was truncated
    assert "bad records: {'chosen': 1}" in out and "line 7" in out
    assert "6 good of 7 read" in out and "truncated to data.seq_len: 1" in out

    # Every bad record is listed, in file order, not only the first few.
    bad_lines = [2, 3, 5, 6, 8, 9, 11]
    records = [good_record(i) if i + 1 not in bad_lines else good_record(i) | {"image": f"gone{i + 1}.png"}
               for i in range(12)]
    config.data.path = write_dataset(tmp_path, records)
    run(config, str(tmp_path))
    listed = re.findall(r"pairs.jsonl, line (\d+): field 'image'", capsys.readouterr().out)
    assert [int(n) for n in listed] == bad_lines

    config.data.source, config.data.path = "arrayrecord", str(tmp_path / "ar")
    run(config, str(tmp_path))
    assert "6 good of 6 read" in capsys.readouterr().out

    # An SFT config (no reference model) inspects as the sft objective: chosen rows only.
    config.reference = "none"
    run(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "objective sft reads rows chosen" in out and "\nrejected: " not in out


def test_worker_processes_resume_exactly_and_carry_skip_counts(tokenizer, tmp_path):
    records = [good_record(i) for i in range(6)] + [good_record(1) | {"image": "missing.png"}]
    source = JsonlSource(write_dataset(tmp_path, records))
    enc = encoder(tokenizer, kinds=("chosen", "rejected"))

    def batches():
        return iter(loader.dataset(source, enc, 2, seed=5, on_bad_record="skip", workers=1))

    counter = loader.BadRecordCounter()
    first = batches()
    for _ in range(3):
        loader.take_bad_records(next(first), counter)
    state = json.loads(json.dumps(first.get_state()))
    expected = [loader.take_bad_records(next(first), counter) for _ in range(4)]
    # 7 batches x 2 good examples = 14 good = 2 epochs + 2: the bad record passed 2 or 3 times,
    # counted in this process although worker processes read it.
    assert counter.counts["image"] in (2, 3) and set(counter.counts) == {"image"}
    first.close()
    resumed = batches()
    resumed.set_state(state)
    for a, b in zip(expected, [loader.take_bad_records(next(resumed), counter) for _ in range(4)]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    resumed.close()


def test_length_buckets():
    assert batching.parse_buckets("auto", 64) == (16, 32, 48, 64)
    assert batching.parse_buckets("", 64) == (64,)
    assert batching.parse_buckets("40,20", 64) == (20, 40, 64)
    for bad in ("x", "0,10", "100"):
        with pytest.raises(ValueError, match="data.length_buckets"):
            batching.parse_buckets(bad, 64)
    mask = np.zeros((2, 3, 64), np.int32)
    mask[0, 1, :33] = 1
    mask[1, 0, :20] = 1
    batch = {"input_ids": mask * 7, "attention_mask": mask, "loss_mask": mask, "pixel_values": np.ones((2, 1, 3))}
    length = batching.bucket_length(batch, (16, 32, 48, 64))
    assert length == 48
    trimmed = batching.trim(batch, length)
    assert trimmed["input_ids"].shape == (2, 3, 48) and trimmed["pixel_values"].shape == (2, 1, 3)
    assert trimmed["attention_mask"].sum() == mask.sum()  # only padding was cut


def test_trimming_to_a_bucket_leaves_the_log_probs_unchanged(checkpoint, tokenizer, tmp_path):
    import train_llava

    from realign_jax.data.batching import to_bucket
    from realign_jax.train.batches import make_dataset
    from realign_jax.settings.runs import load
    from realign_jax.train.trainer import Trainer

    config = train_llava.get_config()
    config.model.path = checkpoint
    config.data.source, config.data.path, config.data.seq_len = "jsonl", write_dataset(tmp_path, [
        good_record(i) for i in range(8)]), 96
    config.train.batch_size = 8
    trainer = Trainer(load(config))
    state = trainer.init_state()
    host = loader.take_bad_records(next(iter(make_dataset(trainer.settings, trainer.model_config))),
                                     loader.BadRecordCounter())
    trimmed = to_bucket(host, batching.parse_buckets("auto", 96))
    assert trimmed["input_ids"].shape[-1] == 48 < host["input_ids"].shape[-1]
    full = trainer.reference_logps(state, trainer.device_batch(host))
    short = trainer.reference_logps(state, trainer.device_batch(trimmed))
    np.testing.assert_allclose(np.asarray(short), np.asarray(full), rtol=1e-5)


@pytest.mark.slow
def test_resumed_run_on_shards_matches_an_uninterrupted_one(checkpoint, tmp_path):
    """Train 4 steps on ArrayRecord shards, read by a worker process, with a bad record skipped;
    a run stopped after 2 steps and resumed ends with the same loss and the same skip counts
    (restored from the checkpoint)."""
    import train_llava

    from realign_jax.train.loop import train

    records = [good_record(i) for i in range(6)] + [good_record(0) | {"chosen": "A red cat sits on a mat. " * 9}]
    path = write_dataset(tmp_path, records)
    # Conversion keeps the over-long record (length depends on the tokenizer); training drops it.
    assert convert(JsonlSource(path), str(tmp_path / "ar"))["written"] == 7

    def run(workdir, stop_after=None):
        config = train_llava.get_config()
        config.model.path = checkpoint
        config.data.source, config.data.path, config.data.on_bad_record = "arrayrecord", str(tmp_path / "ar"), "skip"
        config.data.seq_len, config.data.truncation, config.data.workers = 48, "drop", 1
        config.train.steps, config.train.export, config.train.checkpoint_every = 4, False, 0
        return train(config, str(tmp_path / workdir), stop_after=stop_after)

    whole = run("whole")
    assert run("parts", stop_after=2)["stopped_at"] == 2
    resumed = run("parts")
    assert resumed["resumed_from"] == 2
    assert whole["skipped_records"] == resumed["skipped_records"] and whole["skipped_records"]["too_long"] >= 1
    assert resumed["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)
