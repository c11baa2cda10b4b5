"""Random-access record sources for Grain: `len(source)` and `source[i] -> Record`.

JSONL + an image folder is the hand-written format: the file is indexed once (byte offset of
every non-empty line) so any record can be read without holding the file in memory, and a
record's relative image paths resolve against the image root (default: the file's folder).
"""

from __future__ import annotations

import dataclasses
import json
import os

from realign_jax.data.records import BadRecord, Record, from_json


class JsonlSource:
    def __init__(self, path: str, image_root: str | None = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.path={path!r}: no such file")
        self.path = path
        self.image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
        self._offsets: list[int] = []
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self._offsets.append(offset)
                offset += len(line)
        if not self._offsets:
            raise ValueError(f"data.path={path!r}: the file has no records")

    def __len__(self) -> int:
        return len(self._offsets)

    def where(self, index: int) -> str:
        return f"{self.path}:record {index}"

    def __getitem__(self, index: int) -> Record:
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        where = self.where(index)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadRecord(where, "<json>", f"not valid JSON ({error.msg} at column {error.colno})") from None
        record = from_json(obj, where)
        return dataclasses.replace(record, image=self._resolve(record.image),
                                   rejected_image=self._resolve(record.rejected_image))

    def _resolve(self, image: str | bytes | None) -> str | bytes | None:
        if isinstance(image, str) and not os.path.isabs(image):
            return os.path.join(self.image_root, image)
        return image
