"""Random-access record sources for Grain: `len(source)`, `source[i] -> Record` and
`source.where(i)` (the file and line, or record, an error names). `RECORD_SOURCES` maps
`data.source` to them: JSONL, ArrayRecord shards (data/arrayrecord.py), TFDS
(data/tfds_source.py) and the public preference datasets' layouts (data/adapters.py).

JSONL + an image folder is the hand-written format: the file is indexed once (byte offset of
every non-empty line) so any record can be read without holding the file in memory, and a
record's relative image paths resolve against the image root (default: the file's folder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from realign_jax.data.adapters import PovidSource, RlaifVSource, VLFeedbackSource
from realign_jax.data.arrayrecord import ArrayRecordSource
from realign_jax.data.jsonl import parse_line
from realign_jax.data.keyvalue import parse_key_values
from realign_jax.data.records import BadRecord, Record, from_json

MAX_RECORD_BYTES = 64 << 20  # one JSONL line; a record's images are files, not inline data


class JsonlSource:
    """One JSONL file, or every `*.jsonl` of a folder in name order (a pair builder's shards:
    `data.path=<pairs.output>`). Relative image paths resolve against `image_root`, by default
    the folder of the file the record is in."""

    def __init__(self, path: str, image_root: str | None = None):
        self.files = _jsonl_files(path)
        self.image_root = image_root
        self._offsets: list[tuple[int, int, int]] = []  # (file, byte offset, line number) of each record
        for number, file in enumerate(self.files):
            with open(file, "rb") as f:
                offset = 0
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        self._offsets.append((number, offset, lineno))
                    offset += len(line)
        if not self._offsets:
            raise ValueError(f"data.path={path!r}: no records in {len(self.files)} file(s)")

    def __len__(self) -> int:
        return len(self._offsets)

    def where(self, index: int) -> str:
        """'<file>, line <n>': the line an editor opens (blank lines count), as json_objects says it."""
        number, _, lineno = self._offsets[index]
        return f"{self.files[number]}, line {lineno}"

    def raw(self, index: int) -> Any:
        """Record `index` as the file holds it: the parsed JSON value, before any check."""
        number, offset, _ = self._offsets[index]
        with open(self.files[number], "rb") as f:
            f.seek(offset)
            line = f.readline()
        if len(line) > MAX_RECORD_BYTES:
            raise BadRecord(self.where(index), "<json>",
                            f"is {len(line)} bytes, over the {MAX_RECORD_BYTES}-byte limit of a record")
        try:
            return parse_line(line)
        except ValueError as error:
            raise BadRecord(self.where(index), "<json>", str(error)) from None

    def __getitem__(self, index: int) -> Record:
        return self.record(self.raw(index), index)

    def record(self, obj: Any, index: int) -> Record:
        """Record `index` from its `raw` value: checked, its relative image paths resolved
        against the image root (default: its file's folder)."""
        record = from_json(obj, self.where(index))
        root = self.root_of(index)
        return dataclasses.replace(record, image=_resolve(record.image, root),
                                   rejected_image=_resolve(record.rejected_image, root))

    def root_of(self, index: int) -> str:
        """Where record `index`'s relative image paths point: `image_root`, else its file's folder."""
        if self.image_root is not None:
            return self.image_root
        return os.path.dirname(os.path.abspath(self.files[self._offsets[index][0]]))

    def resolved_raw(self, index: int) -> dict[str, Any]:
        """Record `index` as the file holds it, with its image paths made absolute (`root_of`):
        for readers that take the JSON fields themselves (online rounds, train/online.py)."""
        obj = self.raw(index)
        if not isinstance(obj, dict):
            raise BadRecord(self.where(index), "<json>", "expected a JSON object")
        root = self.root_of(index)
        return {**obj, **{field: _resolve(obj[field], root) for field in ("image", "rejected_image") if field in obj}}


def _jsonl_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(".jsonl"))
        if not files:
            raise FileNotFoundError(f"data.path={path!r}: the folder holds no .jsonl files")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"data.path={path!r}: no such file")
    if not os.path.isfile(path):  # a named pipe, a device, a socket: read twice here, or never ends
        raise ValueError(f"data.path={path!r}: not a regular file or a folder of .jsonl files")
    return [path]


def _resolve(image: str | bytes | None, root: str) -> str | bytes | None:
    if isinstance(image, str) and not os.path.isabs(image):
        return os.path.join(root, image)
    return image


def open_source(data: Any) -> Any:
    """The record source of the `data` settings: `data.source` over `data.path`
    (`data.image_root` for relative image paths; TFDS also reads `data.split`,
    `data.tfds_data_dir` and `data.tfds_fields`)."""
    source, path = data.source, data.path
    if source not in RECORD_SOURCES:
        raise ValueError(f"data.source={source!r} is not a record source; available: {sorted(RECORD_SOURCES)}")
    if not path:
        raise ValueError(f"data.source={source!r} needs data.path")
    return RECORD_SOURCES[source](data)


def _tfds(data: Any) -> Any:
    from realign_jax.data.tfds_source import TfdsSource

    fields = dict(parse_key_values(data.tfds_fields, "data.tfds_fields: {item!r} is not record_field=feature"))
    return TfdsSource(data.path, data.split, data.tfds_data_dir or None, fields)


def _with_root(cls: Callable[[str, str | None], Any]) -> Callable[[Any], Any]:
    return lambda data: cls(data.path, data.image_root or None)


# data.source -> factory taking the `data` section. Adapters read public datasets' own layouts.
RECORD_SOURCES: dict[str, Callable[[Any], Any]] = {
    "jsonl": _with_root(JsonlSource),
    "arrayrecord": lambda data: ArrayRecordSource(data.path),  # the images are inside the shards
    "tfds": _tfds,
    "rlaif_v": lambda data: RlaifVSource(data.path),  # the images are inside the parquet files
    "povid": _with_root(PovidSource),
    "vlfeedback": _with_root(VLFeedbackSource),
}
