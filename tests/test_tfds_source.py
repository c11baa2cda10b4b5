"""TfdsSource on a tiny dataset prepared here in ArrayRecord format, with no TensorFlow: the
builder is not registered, so reading goes through the prepared files as it would for a real
dataset, and images come back as the stored bytes (Image) or as PNG (uint8 Tensor)."""

from __future__ import annotations

import io
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from realign_jax.data.images import load_image
from realign_jax.data.prompting import IMAGE_PLACEHOLDER
from realign_jax.data.records import BadRecord
from realign_jax.data.tfds_source import TfdsSource

tfds = pytest.importorskip("tensorflow_datasets")

NAME = "realign_tiny_prefs"


def png(colour, size=(6, 4)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def example(i, **changes):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{IMAGE_PLACEHOLDER} Turn {i}?"}]
    return {"id": f"r{i}", "picture": png((40 * i, 0, 0)), "question": f"What is in picture {i}?", "turns": turns,
            "chosen": f"A red square {i}.", "rejected": f"A dog {i}.", "alt": np.full((3, 5, 3), 10 * i, np.uint8),
            "rejected_noisy": "" if i else "A noisy dog.", "ref_logps": {"chosen": -1.5 * i, "rejected": -2.0},
            "image_noise": {"kind": "diffusion", "t": 100 * i}} | changes


class RealignTinyPrefs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "id": text, "picture": tfds.features.Image(shape=(None, None, 3)), "question": text,
            "turns": tfds.features.Sequence({"role": text, "content": text}), "chosen": text, "rejected": text,
            "alt": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
            "rejected_noisy": text, "ref_logps": {"chosen": np.float32, "rejected": np.float32},
            "image_noise": {"kind": text, "t": np.int64},
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples([example(i) for i in range(3)]),
                "bad": self._generate_examples([example(7, rejected="A red square 7."), example(8, question=""),
                                                example(9, chosen=b"\xff\xfe")])}

    def _generate_examples(self, examples):
        for ex in examples:
            yield ex["id"], ex


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    RealignTinyPrefs(data_dir=path, file_format="array_record").download_and_prepare()
    return path


def by_id(source):
    return {source[i].id: i for i in range(len(source))}


def test_reads_records_with_default_and_mapped_fields(data_dir):
    source = TfdsSource(NAME, "train", data_dir, fields={"image": "picture", "rejected_image": "alt"})
    assert len(source) == 3 and "tensorflow" not in sys.modules
    index = by_id(source)
    assert sorted(index) == ["r0", "r1", "r2"]  # TFDS orders by key hash, not generation order
    for i in range(3):
        record, want = source[index[f"r{i}"]], example(i)
        assert record.messages == ({"role": "user", "content": f"{IMAGE_PLACEHOLDER}\nWhat is in picture {i}?"},)
        assert (record.chosen, record.rejected) == (want["chosen"], want["rejected"])
        assert record.image == want["picture"]  # the stored PNG bytes, not decoded and re-encoded
        assert np.array_equal(np.asarray(load_image(record.rejected_image)), want["alt"])
        assert record.rejected_noisy == (want["rejected_noisy"] or None)  # empty text means absent
        assert record.ref_logps == {"chosen": -1.5 * i, "rejected": -2.0}
        assert dict(record.image_noise) == {"kind": "diffusion", "t": 100 * i}
    assert np.asarray(load_image(source[index["r2"]].image))[0, 0].tolist() == [80, 0, 0]
    assert source.where(1) == f"{NAME}/train:record 1" and source[-1] == source[2]
    with pytest.raises(IndexError):
        source[3]
    restored = pickle.loads(pickle.dumps(source))  # Grain worker processes pickle the source
    assert restored[0] == source[0]


def test_messages_feature_and_split_slices(data_dir):
    source = TfdsSource(NAME, "train[1:]", data_dir, fields={"messages": "turns", "image": "picture"})
    assert len(source) == 2 and source.where(0) == f"{NAME}/train[1:]:record 0"
    record = source[0]
    i = int(record.id[1:])
    assert record.messages == tuple(example(i)["turns"]) and record.image == example(i)["picture"]
    assert record.rejected_image is None  # no feature named rejected_image and none mapped


def test_bad_records_name_dataset_split_record_and_field(data_dir):
    source = TfdsSource(NAME, "bad", data_dir)
    problems = {}
    for i in range(len(source)):
        with pytest.raises(BadRecord) as error:
            source[i]
        assert error.value.where == f"{NAME}/bad:record {i}" and str(error.value).startswith(f"{NAME}/bad:record {i}:")
        problems[error.value.field] = error.value.problem
    assert set(problems) == {"rejected", "question", "chosen"}
    assert "identical" in problems["rejected"] and "UTF-8" in problems["chosen"]


def test_bad_field_mapping_fails_when_built(data_dir):
    with pytest.raises(ValueError, match="no feature for .*'image': 'photo'"):
        TfdsSource(NAME, "train", data_dir, fields={"image": "photo"})
    with pytest.raises(ValueError, match="not record fields"):
        TfdsSource(NAME, "train", data_dir, fields={"picture": "picture"})
