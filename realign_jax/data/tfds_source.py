"""A prepared TFDS dataset as a record source, with the interface of `JsonlSource`.

`tfds.data_source` gives random access without TensorFlow, but only to datasets prepared in a
random-access format (`file_format="array_record"`, or parquet); nothing is downloaded, the
dataset must already be in `data_dir`. Each example becomes the JSON form of a record
(records.py) through `fields`, record key -> TFDS feature name, which defaults to the features
named like record keys. TFDS text arrives as UTF-8 bytes and numbers as numpy scalars, so
they are made plain first; an empty text or image counts as absent, since every TFDS example
has every feature. `tfds.features.Image` is read undecoded (the stored PNG/JPEG bytes, no
decode and re-encode); a uint8 array (a `Tensor` feature) is encoded as PNG.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from realign_jax.data.records import BadRecord, Record, from_json

FIELDS = ("id", "question", "prompt", "messages", "image", "chosen", "rejected", "rejected_image",
          "image_noise", "rejected_noisy", "rejected_sampled", "ref_logps", "provenance")
IMAGE_FIELDS = ("image", "rejected_image")


class TfdsSource:
    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 fields: Mapping[str, str] | None = None):
        import tensorflow_datasets as tfds  # optional: pip install "realign_jax[tfds]"

        self.name, self.split = name, split
        features = tfds.builder(name, data_dir=data_dir).info.features
        unknown = sorted(set(fields or ()) - set(FIELDS))
        if unknown:
            raise ValueError(f"tfds fields {unknown}: not record fields (known: {', '.join(FIELDS)})")
        self.fields = {key: key for key in FIELDS if key in features} | dict(fields or {})
        missing = {key: feature for key, feature in self.fields.items() if feature not in features}
        if missing:
            raise ValueError(f"{name}: no feature for {missing} (features: {', '.join(features)})")
        if not {"question", "prompt", "messages"} & set(self.fields):
            raise ValueError(f"{name}: map 'question', 'prompt' or 'messages' to a feature (fields=...)")
        decoders = {self.fields[key]: tfds.decode.SkipDecoding() for key in IMAGE_FIELDS
                    if key in self.fields and isinstance(features[self.fields[key]], tfds.features.Image)}
        self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)

    def __len__(self) -> int:
        return len(self._source)

    def where(self, index: int) -> str:
        return f"{self.name}/{self.split}:record {index}"

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}/{self.split}: record {index} out of range ({len(self)} records)")
        index %= len(self)
        where, example = self.where(index), self._source[index]
        obj: dict[str, Any] = {}
        for key, feature in self.fields.items():
            value = example[feature]
            value = _image(value, where, key) if key in IMAGE_FIELDS else _plain(value, where, key)
            if key == "messages" and isinstance(value, Mapping):  # Sequence({role, content}): dict of lists
                value = [dict(zip(value, turn)) for turn in zip(*value.values())]
            if value not in (None, "", [], {}):
                obj[key] = value
        return from_json(obj, where)


def _plain(value: Any, where: str, field: str) -> Any:
    """UTF-8 bytes -> str, numpy -> Python numbers and lists, recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord(where, field, "text is not valid UTF-8") from None
    if isinstance(value, np.ndarray) and value.ndim:
        return [_plain(v, where, field) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.item(), where, field)
    if isinstance(value, Mapping):
        return {k: _plain(v, where, field) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, where, field) for v in value]
    return value


def _image(value: Any, where: str, field: str) -> bytes | None:
    """Encoded image bytes as stored, or a uint8 HxW[xC] array encoded as PNG."""
    if isinstance(value, bytes):
        return value or None
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and \
            (value.ndim == 2 or value.ndim == 3 and value.shape[-1] in (1, 3, 4)):
        out = io.BytesIO()
        Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value).save(out, format="PNG")
        return out.getvalue()
    shape = getattr(value, "shape", None)
    raise BadRecord(where, field, f"must be encoded image bytes or a uint8 HxW[xC] array, got "
                                  f"{type(value).__name__}{'' if shape is None else f' {shape} {value.dtype}'}")
