"""Hostile records and images: each case ends in a clear error naming the record, or in a
counted skip under data.on_bad_record='skip'; nothing decodes a decompression bomb.

(Truncated files, non-images, every Pillow mode and missing fields are in test_images.py and
test_data_pipeline.py; this file adds what an adversarial or broken dataset brings.)"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from test_data_pipeline import encoder, good_record, write_dataset

from realign_jax.data import images as image_ops
from realign_jax.data import sources
from realign_jax.data.jsonl import json_objects, parse_line
from realign_jax.data.loader import BadRecordCounter, dataset, take_bad_records
from realign_jax.data.records import BadRecord
from realign_jax.data.sources import JsonlSource


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring width x height, with one tiny data chunk: what
    a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("width,height,message", [
    (100_000, 100_000, "decompression bomb"),  # 10^10 pixels declared in a ~100-byte file
    (9_000, 10_000, "decompression bomb"),     # just over the 89.5M-pixel limit
    (0, 10, "not a readable image"),           # Pillow refuses a zero-width header itself
])
def test_declared_size_is_refused_before_decoding(width, height, message):
    with pytest.raises(ValueError, match=message):
        image_ops.load_image(png_declaring(width, height))


def test_empty_and_sliver_images_are_refused():
    with pytest.raises(ValueError, match="aspect ratio over 200"):
        image_ops.load_image(png(Image.new("RGB", (4000, 2))))
    with pytest.raises(ValueError, match="0x0 pixels"):
        image_ops.check_size(0, 0, "x.png")


def test_padding_to_a_square_is_bounded_too(monkeypatch):
    """LLaVA-1.5 pads to a square before resizing: a wide image grows to width^2 pixels."""
    monkeypatch.setattr(image_ops, "MAX_IMAGE_PIXELS", 10_000)  # a 120x80 image is under it, its square is not
    wide = image_ops.load_image(png(Image.new("RGB", (120, 80), (9, 9, 9))))
    spec = image_ops.ImageProcessing(size=32, shortest_edge=32)
    assert image_ops.preprocess(wide, spec).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="padded to a square"):
        image_ops.preprocess(wide, image_ops.ImageProcessing(size=32, shortest_edge=32, pad_to_square=True))


@pytest.mark.parametrize("mode", ["I", "F", "I;16B", "RGBX", "YCbCr", "HSV"])
def test_unusual_modes_become_finite_rgb_pixels(mode):
    image = Image.new("RGB", (48, 40), (200, 100, 50)).convert("L").convert(mode) if mode in ("I", "F", "I;16B") \
        else Image.new("RGB", (48, 40), (200, 100, 50)).convert(mode)
    pixels = image_ops.preprocess(image_ops.to_rgb(image), image_ops.ImageProcessing(size=32, shortest_edge=32))
    assert pixels.shape == (3, 32, 32) and np.isfinite(pixels).all()


def _not_files(tmp_path) -> dict[str, str]:
    """Paths that are not image files -> the words their refusal must hold."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    os.symlink("/dev/zero", tmp_path / "zeros.png")
    os.symlink("/proc/self/status", tmp_path / "status.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    (tmp_path / "huge.png").write_bytes(png(Image.fromarray(noise)))  # ~12 kB, over the limit set below
    return {"pipe.png": "a named pipe", "folder.png": "a directory", "zeros.png": "a device",
            "status.png": "a kernel file", "huge.png": "over the limit of 100 for an image file"}


def test_what_is_not_a_regular_file_is_refused_without_reading_it(tmp_path, monkeypatch):
    """A named pipe would block forever, /dev/zero never ends, /proc files lie about their size:
    each is refused before it is opened (links followed), and quickly."""
    import threading

    monkeypatch.setattr(image_ops, "MAX_IMAGE_FILE_BYTES", 100)
    for name, words in _not_files(tmp_path).items():
        outcome: list[Exception] = []

        def load(path=str(tmp_path / name)) -> None:
            try:
                image_ops.load_image(path)
            except Exception as error:  # handed to the test thread
                outcome.append(error)
            else:
                outcome.append(AssertionError("loaded"))

        reader = threading.Thread(target=load, daemon=True)  # a hang fails the test instead of stalling it
        reader.start()
        reader.join(timeout=10)
        assert outcome, f"{name}: load_image did not return within 10 s"
        assert isinstance(outcome[0], ValueError) and words in str(outcome[0]), (name, outcome[0])


def test_a_record_whose_image_is_a_named_pipe_is_a_bad_record(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(0) | {"image": "pipe.png"}])
    os.mkfifo(tmp_path / "pipe.png")
    source = JsonlSource(path)
    with pytest.raises(BadRecord, match="pipe.png: a named pipe") as raised:
        encoder(tokenizer).encode(source[0], source.where(0))
    assert raised.value.field == "image" and f"{path}, line 1" in str(raised.value)


def _hostile_records(tmp_path) -> tuple[str, dict[int, str]]:
    """A JSONL file mixing good records with hostile ones; returns its path and record -> the
    field its error must name."""
    (tmp_path / "bomb.png").write_bytes(png_declaring(50_000, 50_000))
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (3000, 3), (1, 2, 3)).save(tmp_path / "sliver.png")
    lines: list[bytes] = []
    expected: dict[int, str] = {}

    def add(record: dict | bytes, field: str | None = None) -> None:
        if field is not None:
            expected[len(lines)] = field
        lines.append(record if isinstance(record, bytes) else json.dumps(record).encode())

    add(good_record(0))
    add(b'{"id": "latin1", "image": "img0.png", "question": "Caf\xe9?", "chosen": "a", "rejected": "b"}', "<json>")
    add(good_record(1) | {"image": "bomb.png"}, "image")
    add(good_record(2))
    add(good_record(3) | {"rejected_image": "empty.png"}, "rejected_image")
    add(good_record(4) | {"image": "sliver.png"}, "image")
    add(good_record(5) | {"chosen": 12345}, "chosen")
    add(good_record(6) | {"question": ["not", "text"]}, "question")
    add(b"[1, 2, 3]", "<record>")
    add(b"\x00\x01\x02 binary junk \xff\xfe", "<json>")
    add(good_record(7))
    path = write_dataset(tmp_path, [])
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path, expected


HOSTILE_JSON = {  # line -> (the field its error names, words the error holds)
    "deep": (b'{"id": "deep", "image": "img0.png", "question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
             "<json>", "nested deeper than 32 levels"),
    "deep-but-decodable": (json.dumps(good_record(1) | {"provenance": {"a": json.loads("[" * 40 + "]" * 40)}}).encode(),
                           "<json>", "field 'provenance' is nested deeper than 32 levels"),
    "surrogate": (json.dumps(good_record(2)).replace('"chosen": "A red', '"chosen": "\\ud800 A red').encode(),
                  "<json>", "field 'chosen' holds a lone UTF-16 surrogate"),
    "provenance-number": (json.dumps(good_record(3) | {"provenance": 5}).encode(), "provenance",
                          "must be a JSON object"),
    "provenance-text": (json.dumps(good_record(4) | {"provenance": "x"}).encode(), "provenance",
                        "must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_json_is_one_named_bad_record(tokenizer, tmp_path, case):
    """Nesting that overflows the decoder, lone surrogates a tokenizer cannot take and a provenance
    that is not an object: each one BadRecord naming file, record and field, not a traceback."""
    line, field, words = HOSTILE_JSON[case]
    path = write_dataset(tmp_path, [good_record(0), line.decode()])
    source = JsonlSource(path)
    encoder(tokenizer).encode(source[0], source.where(0))
    with pytest.raises(BadRecord) as raised:
        encoder(tokenizer).encode(source[1], source.where(1))
    assert raised.value.field == field and words in str(raised.value), str(raised.value)
    assert f"{path}, line 2" in str(raised.value)


def test_hostile_json_is_counted_under_skip(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(0)] + [line.decode() for line, _, _ in HOSTILE_JSON.values()])
    counter = BadRecordCounter()
    batches = dataset(JsonlSource(path), encoder(tokenizer), 1, seed=0, on_bad_record="skip")
    good = [take_bad_records(b, counter) for _, b in zip(range(2), batches)]
    assert all(np.isfinite(b["pixel_values"]).all() for b in good)
    assert counter.counts["<json>"] >= 3 and counter.counts["provenance"] >= 2, dict(counter.counts)


def test_hostile_records_are_named_one_by_one(tokenizer, tmp_path):
    path, expected = _hostile_records(tmp_path)
    source = JsonlSource(path)
    for index in range(len(source)):
        if index not in expected:
            encoder(tokenizer).encode(source[index], source.where(index))
            continue
        with pytest.raises(BadRecord) as raised:
            encoder(tokenizer).encode(source[index], source.where(index))
        assert raised.value.field == expected[index], (index, str(raised.value))
        assert f"{path}, line {index + 1}" in str(raised.value)


def test_hostile_records_are_counted_skips_under_skip(tokenizer, tmp_path):
    path, expected = _hostile_records(tmp_path)
    counter = BadRecordCounter()
    batches = dataset(JsonlSource(path), encoder(tokenizer), 1, seed=0, on_bad_record="skip")
    good = [take_bad_records(b, counter) for _, b in zip(range(6), batches)]  # 3 good records a pass: 2 passes
    assert all(np.isfinite(b["pixel_values"]).all() for b in good)
    # The first pass was read whole, so every hostile record was met once or twice, each under its field.
    fields = {field: list(expected.values()).count(field) for field in set(expected.values())}
    assert set(counter.counts) == set(fields)
    assert all(fields[f] <= counter.counts[f] <= 2 * fields[f] for f in fields), dict(counter.counts)


def test_an_over_long_line_is_refused_without_parsing_it(tokenizer, tmp_path):
    path = write_dataset(tmp_path, [good_record(0), good_record(1) | {"chosen": "x" * (sources.MAX_RECORD_BYTES + 1)}])
    source = JsonlSource(path)
    with pytest.raises(BadRecord, match="line 2.*over the 67108864-byte limit"):
        source[1]


@pytest.mark.parametrize("truncation", ["response", "drop"])
def test_an_absurdly_long_answer_is_cut_or_dropped(tokenizer, tmp_path, truncation):
    answer = " ".join(["cat"] * 200_000)
    path = write_dataset(tmp_path, [good_record(0) | {"chosen": answer}])
    source = JsonlSource(path)
    if truncation == "drop":
        with pytest.raises(BadRecord, match="exceed data.seq_len=64"):
            encoder(tokenizer, truncation="drop").encode(source[0], source.where(0))
        return
    example = encoder(tokenizer).encode(source[0], source.where(0))
    assert example["input_ids"].shape == (3, 64) and example["loss_mask"][0].sum() > 0


def test_non_utf8_question_files_name_the_line(tmp_path):
    path = tmp_path / "pope.jsonl"
    path.write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"pope.jsonl, line 2: not UTF-8 text \(byte 17\)"):
        list(json_objects(str(path)))


@pytest.mark.parametrize("key,value,message", [
    ("data.seq_len", -4, "data.seq_len=-4 must be >= 1"),
    ("data.num_examples", 0, "data.num_examples=0 must be >= 1"),
    ("train.steps", 0, "train.steps=0 must be >= 1"),
    ("train.batch_size", -8, "train.batch_size=-8 must be >= 1"),
    ("lora.rank", -2, "lora.rank=-2 must be >= 0"),
    ("lora.alpha", -1.0, "lora.alpha=-1.0 must be positive"),
    ("optim.clip_norm", -1.0, "optim.clip_norm=-1.0 must be >= 0"),
    ("optim.b2", 1.5, "optim.b2=1.5 must be in [0, 1)"),
    ("loss.vocab_chunk", 0, "loss.vocab_chunk=0 must be >= 1"),
    ("train.on_nonfinite", "ignore", "train.on_nonfinite='ignore': choose one of"),
    ("mesh.fsdp", 3, "does not divide the"),
    ("mesh.tensor", 0, "mesh.tensor=0: sizes must be positive or -1"),
    ("model.dtype", "float8", "model.dtype='float8'"),
])
def test_bad_config_values_name_the_key_before_anything_is_built(key, value, message):
    from test_train import small_config

    from realign_jax.settings.runs import load
    from realign_jax.train.trainer import Trainer

    config = small_config("dpo")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError) as raised:
        Trainer(load(config)).init_state()
    assert message in str(raised.value)


def test_a_value_of_the_wrong_type_is_refused_by_the_config_itself():
    """ml_collections keeps each key's type: a string for an int is refused on assignment, and
    on the command line (tests/test_main.py shows the one-line form)."""
    from test_train import small_config

    config = small_config("dpo")
    with pytest.raises(TypeError, match="steps"):
        config.train.steps = "ten"
    with pytest.raises(AttributeError, match="stepz"):
        config.train.stepz  # noqa: B018 - an unknown key is an error, not a default


@pytest.mark.parametrize("line,message", [
    (b'{"a": "x', "not valid JSON (Unterminated string starting at column 7)"),
    (b'{"a": 1 "b": 2}', "not valid JSON (Expecting ',' delimiter at column 9)"),
    (b'{"a": 1, "b": \n', "not valid JSON (Expecting value at column 16)"),  # cut short: the line end, not "column 1"
])
def test_json_errors_read_as_one_sentence(line, message):
    with pytest.raises(ValueError) as raised:
        parse_line(line)
    assert str(raised.value) == message


def test_data_path_that_is_not_a_file_is_named_as_such(tmp_path):
    os.mkfifo(tmp_path / "records.jsonl")
    with pytest.raises(ValueError, match="records.jsonl.*not a regular file or a folder of .jsonl files"):
        JsonlSource(str(tmp_path / "records.jsonl"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        JsonlSource(str(tmp_path / "missing.jsonl"))
