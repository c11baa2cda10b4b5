"""Records -> encoded examples -> Grain batches: parity with transformers' LlavaProcessor,
truncation that keeps the image, bad input under `error` and `skip`, per-process slices and
exact resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from test_prompting import processor_ids
from transformers import CLIPImageProcessorPil, LlavaProcessor

from realign_jax.data import images as image_ops
from realign_jax.data.encode import EncoderConfig, ExampleEncoder, TooLong
from realign_jax.data.loader import BadRecordCounter, dataset, epoch_order, take_bad_records
from realign_jax.data.prompting import IMAGE_PLACEHOLDER, render_conversation
from realign_jax.data.records import BadRecord, from_json
from realign_jax.data.sources import JsonlSource

CROP, PATCH, NUM_IMAGE_TOKENS = 64, 16, 16
SPEC = image_ops.ImageProcessing(size=CROP, shortest_edge=CROP)
KINDS = ("chosen", "rejected", "chosen_alt_image")


def encoder(tokenizer, seq_len=64, truncation="response", kinds=KINDS):
    config = EncoderConfig(kinds=kinds, num_images=2 if "chosen_alt_image" in kinds else 1, seq_len=seq_len,
                           num_image_tokens=NUM_IMAGE_TOKENS, truncation=truncation)
    return ExampleEncoder(tokenizer, SPEC, config)


def write_dataset(tmp_path, records, images=4):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for i in range(images):
        Image.new("RGB", (40 + 8 * i, 30), colours[i % 4]).save(tmp_path / f"img{i}.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def good_record(i):
    return {"id": f"r{i}", "image": f"img{i % 4}.png", "rejected_image": f"img{(i + 1) % 4}.png",
            "question": "What is in the picture?", "chosen": "A red cat sits on a mat.",
            "rejected": "A blue ball." if i % 2 else "There is no dog."}


def test_rows_equal_llava_processor_and_mask_only_answers(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(0)])
    source = JsonlSource(path)
    example = encoder(tokenizer).encode(source[0], source.where(0))
    processor = LlavaProcessor(CLIPImageProcessorPil(size={"shortest_edge": CROP},
                                                     crop_size={"height": CROP, "width": CROP}),
                               tokenizer, patch_size=PATCH, vision_feature_select_strategy="full")
    question = {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\nWhat is in the picture?"}
    for row, answer in enumerate(["A red cat sits on a mat.", "There is no dog.", "A red cat sits on a mat."]):
        messages = [question, {"role": "assistant", "content": answer}]
        full = processor_ids(processor, render_conversation(tokenizer, messages, add_generation_prompt=False))
        prompt = processor_ids(processor, render_conversation(tokenizer, messages[:1], add_generation_prompt=True))
        n = int(example["attention_mask"][row].sum())
        assert example["input_ids"][row, :n].tolist() == full
        assert example["loss_mask"][row, :n].tolist() == [0] * len(prompt) + [1] * (len(full) - len(prompt))
        assert not example["loss_mask"][row, n:].any() and (example["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    # Slot 0 is the record's image, slot 1 the rejected image, both as the CLIP processor makes them.
    for slot, name in enumerate(["img0.png", "img1.png"]):
        expected = processor.image_processor(Image.open(tmp_path / name), return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(example["pixel_values"][slot], expected, atol=1e-6)


def test_over_long_answers_are_cut_at_the_end_never_through_the_image(tokenizer, tmp_path):
    record = good_record(0) | {"chosen": " ".join(["A red cat sits on a mat."] * 20)}
    path = write_dataset(tmp_path, [record])
    source = JsonlSource(path)
    example = encoder(tokenizer, seq_len=40).encode(source[0], source.where(0))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert example["attention_mask"][0].sum() == 40  # cut to fit
    assert (example["input_ids"][0] == image_id).sum() == NUM_IMAGE_TOKENS  # image intact
    assert example["loss_mask"][0].sum() > 0
    with pytest.raises(TooLong, match="exceed data.seq_len=40"):
        encoder(tokenizer, seq_len=40, truncation="drop").encode(source[0], source.where(0))
    with pytest.raises(TooLong, match="prompt"):  # not even one answer token fits after the prompt
        encoder(tokenizer, seq_len=NUM_IMAGE_TOKENS).encode(source[0], source.where(0))


@pytest.mark.parametrize("truncation", ["response", "drop"])
def test_an_over_long_question_is_named_as_the_question_not_the_answer(tokenizer, tmp_path, truncation):
    long_question = " ".join(["Is the red cat on the mat?"] * 40)
    turns = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."},
             {"role": "user", "content": long_question}]
    records = [good_record(0) | {"question": long_question},
               {k: v for k, v in good_record(0).items() if k != "question"} | {"messages": turns}]
    source = JsonlSource(write_dataset(tmp_path, records))
    for index, field in enumerate(["question", "messages"]):
        with pytest.raises(TooLong) as raised:
            encoder(tokenizer, truncation=truncation).encode(source[index], source.where(index))
        assert raised.value.field == field and "the prompt alone is" in str(raised.value), str(raised.value)
    # A long answer under drop stays the answer's fault.
    source = JsonlSource(write_dataset(tmp_path, [good_record(0) | {"chosen": "A red cat. " * 40}]))
    with pytest.raises(TooLong) as raised:
        encoder(tokenizer, truncation="drop").encode(source[0], source.where(0))
    assert raised.value.field == "chosen"


def test_under_error_the_first_bad_record_in_file_order_is_reported(tokenizer, tmp_path):
    """Whatever the shuffled order meets first, the line names the file's first bad record, so
    fix-and-rerun walks the file from the top."""
    records = [good_record(i) for i in range(10)]
    records[2] |= {"image": "nope.png"}
    records[8] |= {"chosen": " "}
    source = JsonlSource(write_dataset(tmp_path, records))
    late_first = [seed for seed in range(8)  # orders that meet record 8 before record 2
                  if list(epoch_order(10, seed, 0, 1)[i][1] for i in range(10)).index(8) <
                  list(epoch_order(10, seed, 0, 1)[i][1] for i in range(10)).index(2)]
    assert late_first, "no seed meets the later bad record first: the test would not test anything"
    for seed in late_first[:2]:
        with pytest.raises(BadRecord) as raised:
            next(iter(dataset(source, encoder(tokenizer), 10, seed=seed, on_bad_record="error", read_threads=1)))
        assert str(raised.value).startswith(f"{source.files[0]}, line 3: field 'image'"), str(raised.value)


BAD = {
    "missing image file": (good_record(0) | {"image": "nope.png"}, "image", "not found"),
    "corrupt image": (good_record(0) | {"image": "corrupt.png"}, "image", "not a readable image"),
    "empty answer": (good_record(0) | {"chosen": "  "}, "chosen", "non-empty"),
    "no question": ({k: v for k, v in good_record(0).items() if k != "question"}, "question", "missing"),
    "chosen equals rejected": (good_record(0) | {"rejected": "A red cat sits on a mat."}, "rejected", "identical"),
    "missing rejected image": ({k: v for k, v in good_record(0).items() if k != "rejected_image"},
                               "rejected_image", "required"),
    "not json": ("{not json", "<json>", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_stops_with_file_record_and_field(tokenizer, tmp_path, case):
    bad, field, message = BAD[case]
    path = write_dataset(tmp_path, [good_record(1), bad, good_record(2), good_record(3)])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    source = JsonlSource(path)
    with pytest.raises(BadRecord) as raised:
        for i in range(len(source)):
            encoder(tokenizer).encode(source[i], source.where(i))
    assert raised.value.field == field and message in str(raised.value)
    assert f"{path}, line 2" in str(raised.value)
    # The pipeline under 'error' stops with the same one-line error ...
    with pytest.raises(BadRecord, match="line 2"):
        for _ in zip(range(3), dataset(source, encoder(tokenizer), 1, seed=0, on_bad_record="error")):
            pass
    # ... and under 'skip' yields only the good records and counts the bad one by field.
    counter = BadRecordCounter()
    batches = dataset(source, encoder(tokenizer), 1, seed=0, on_bad_record="skip")
    seen = [take_bad_records(b, counter) for _, b in zip(range(6), batches)]
    assert len(seen) == 6 and all(set(b) == {"input_ids", "attention_mask", "loss_mask", "pixel_values"} for b in seen)
    # 6 good records consumed from 2 epochs of 3 good + 1 bad: the bad one passed once or twice.
    assert set(counter.counts) == {field} and 1 <= counter.counts[field] <= 2
    assert "line 2" in counter.examples[0]


def test_all_bad_records_under_skip_end_in_one_line(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(0) | {"image": "nope.png"}] * 3)
    with pytest.raises(ValueError, match="all 3 records were skipped"):
        next(iter(dataset(JsonlSource(path), encoder(tokenizer), 1, seed=0, on_bad_record="skip")))


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_processes_read_disjoint_slices_covering_each_epoch(processes):
    n = 12
    per_process = n // processes
    for epoch in range(3):
        slices = [[epoch_order(n, 7, p, processes)[epoch * per_process + i] for i in range(per_process)]
                  for p in range(processes)]
        assert {e for s in slices for e, _ in s} == {epoch}
        slices = [[index for _, index in s] for s in slices]
        flat = [i for s in slices for i in s]
        assert len(set(flat)) == len(flat) == per_process * processes
    first = [epoch_order(n, 7, 0, 1)[i][1] for i in range(n)]
    second = [epoch_order(n, 7, 0, 1)[n + i][1] for i in range(n)]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second  # reshuffled each epoch


def test_resumed_iterator_continues_the_exact_order(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(i) for i in range(6)])
    source = JsonlSource(path)
    iterator = iter(dataset(source, encoder(tokenizer, kinds=("chosen", "rejected")), 2, seed=3))
    for _ in range(4):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # as the checkpoint stores it
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(dataset(source, encoder(tokenizer, kinds=("chosen", "rejected")), 2, seed=3))
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(3)]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


class CountingEncoder(ExampleEncoder):
    """The real encoder, counting the records it encodes."""

    calls = 0

    def encode(self, record, where, rng=None):
        CountingEncoder.calls += 1
        return super().encode(record, where, rng)


@pytest.mark.parametrize("cache_mb", [0, 1])
def test_example_cache_serves_later_epochs_the_same_arrays(tokenizer, tmp_path, cache_mb):
    source = JsonlSource(write_dataset(tmp_path, [good_record(i) for i in range(6)]))
    config = EncoderConfig(kinds=("chosen", "rejected"), num_images=1, seq_len=64, num_image_tokens=NUM_IMAGE_TOKENS)
    plain = iter(dataset(source, encoder(tokenizer, kinds=("chosen", "rejected")), 2, seed=3))
    uncached = [next(plain) for _ in range(9)]  # three epochs
    CountingEncoder.calls = 0
    iterator = iter(dataset(source, CountingEncoder(tokenizer, SPEC, config), 2, seed=3, cache_mb=cache_mb,
                            read_threads=1))
    batches = [next(iterator) for _ in range(9)]
    for a, b in zip(uncached, batches):
        for key in ("input_ids", "attention_mask", "loss_mask", "pixel_values"):
            np.testing.assert_array_equal(a[key], b[key])
    # read-ahead encodes a little past the 18 examples taken; cached, each record once
    assert CountingEncoder.calls == 6 if cache_mb else CountingEncoder.calls >= 18


def test_record_schema_accepts_messages_and_rejects_bad_turns():
    record = from_json({"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Describe it."}], "chosen": "A cat."}, "x:0")
    assert record.messages[1]["content"].startswith(IMAGE_PLACEHOLDER)  # placeholder added to the first user turn
    with pytest.raises(BadRecord, match="must end with a user turn"):
        from_json({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "x:1")
    with pytest.raises(BadRecord, match="image placeholder"):
        from_json({"question": "Q?", "chosen": "<image> here"}, "x:2")


def test_training_reads_jsonl_records_and_counts_skipped_ones(tokenizer, tmp_path, capsys):
    """mode=train on JSONL records with a checkpoint folder that carries the tokenizer; a broken
    record is skipped and counted in metrics.jsonl."""
    import os
    import sys

    from flax import nnx

    from realign_jax.models import hf
    from realign_jax.models.config import preset
    from realign_jax.models.llava import LlavaModel
    from realign_jax.train.loop import train
    from realign_jax.train.metrics_log import read

    checkpoint = tmp_path / "ckpt"
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    hf.save_pretrained(LlavaModel(preset("tiny", image_token_id=image_id), rngs=nnx.Rngs(0)), str(checkpoint))
    tokenizer.save_pretrained(checkpoint)
    records = [good_record(i) for i in range(8)] + [good_record(0) | {"image": "missing.png"}]
    path = write_dataset(tmp_path, records)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    import train_llava

    config = train_llava.get_config("loss=rdpo")
    config.model.path = str(checkpoint)
    config.data.source, config.data.path, config.data.on_bad_record = "jsonl", path, "skip"
    config.data.seq_len = 48
    config.train.steps, config.train.export, config.train.checkpoint_every = 4, False, 0
    outputs = train(config, str(tmp_path / "work"))
    logged = read(str(tmp_path / "work" / "metrics.jsonl"))
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in logged)
    assert logged[-1]["data/skipped"] >= 1 and outputs["skipped_records"] == {"image": logged[-1]["data/skipped"]}
    # Counted as consumed: 4 steps x 8 good records pass at most 5 copies of the 1 bad in 9
    # (records Grain reads ahead in its threads are not counted).
    assert logged[-1]["data/skipped"] <= 5
    # 32 examples from 8 good records span 4 epochs; each finished epoch reports the counts.
    out = capsys.readouterr().out
    assert "epoch 0 done: " in out and "bad records skipped so far {'image':" in out
    assert "compiling the rdpo step for input_ids (" in out and "compiled in " in out  # not a silent wait
    # An ended epoch counts its own one bad record each, never the next epoch's read ahead.
    ended = re.findall(r"epoch (\d+) done: (\d+) bad records skipped so far \{'image': (\d+)\}", out)
    assert ended and all(int(n) == int(k) + 1 == int(c) for k, n, c in ended), ended
