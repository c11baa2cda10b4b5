"""ArrayRecord shards of records with their images embedded: what large runs read.

`convert` turns any source into shards (`records-00000-of-00004.arrayrecord`, ...). Every
image is read and decoded once during conversion, so a corrupt or missing image is caught
there (stopping or skipped by `on_bad_record`) and a training run over the shards never
meets one. Each entry is one msgpack map: the record's JSON form with image fields holding
the encoded bytes of the file (no re-encoding, so no quality loss).

Conversion writes into `<output>.partial` and renames it at the end: a failed or
interrupted conversion never leaves shards that look complete, and never touches an
existing output folder.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from typing import Any

import grain
import msgpack
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from realign_jax.data import images as image_ops
from realign_jax.data.records import BadRecord, Record, check_on_bad_record, from_json

SUFFIX = ".arrayrecord"
IMAGE_FIELDS = ("image", "rejected_image")


def shard_paths(path: str) -> list[str]:
    """A folder of shards, one shard file, or a glob pattern -> the sorted shard files."""
    if os.path.isdir(path):
        paths = glob.glob(os.path.join(path, f"*{SUFFIX}"))
    elif any(c in path for c in "*?["):
        paths = glob.glob(path)
    else:
        paths = [path] if os.path.isfile(path) else []
    if not paths:
        raise FileNotFoundError(f"data.path={path!r}: no {SUFFIX} shards there")
    return sorted(paths)


def encode(record: Record, where: str) -> bytes:
    """One record -> msgpack bytes, image files read into the record (and checked to decode)."""
    obj = dataclasses.asdict(record)
    obj["messages"] = [dict(m) for m in record.messages]
    for field in IMAGE_FIELDS:
        image = obj[field]
        if image is None:
            continue
        try:
            image_ops.load_image(image)  # decodes fully: a truncated file fails here, not in training
        except ValueError as error:
            raise BadRecord(where, field, str(error)) from None
        if isinstance(image, str):
            with open(image, "rb") as f:
                obj[field] = f.read()
    return msgpack.packb({k: v for k, v in obj.items() if v not in (None, {})}, use_bin_type=True)


def decode(data: bytes, where: str) -> Record:
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (msgpack.UnpackException, ValueError) as error:
        raise BadRecord(where, "<entry>", f"not a record written by convert ({error})") from None
    return from_json(obj, where)


class ArrayRecordSource:
    """Random access over shards written by `convert` (same interface as JsonlSource)."""

    def __init__(self, path: str):
        self.path = path
        self._shards = shard_paths(path)
        self._data = grain.sources.ArrayRecordDataSource(self._shards)
        if not len(self._data):
            raise ValueError(f"data.path={path!r}: the shards hold no records")

    def __len__(self) -> int:
        return len(self._data)

    def where(self, index: int) -> str:
        return f"{self.path}:record {index}"

    def __getitem__(self, index: int) -> Record:
        return decode(self._data[index], self.where(index))

    def __getstate__(self) -> dict[str, Any]:  # worker processes reopen the files
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


def convert(source: Any, output: str, *, num_shards: int = 1, on_bad_record: str = "error",
            overwrite: bool = False) -> dict[str, Any]:
    """Write every record of `source` into `num_shards` ArrayRecord shards under `output`.

    Records go to shards round-robin, so shards are balanced and a shard's order is the
    source's. Returns the counts and the shard paths.
    """
    if not output:
        raise ValueError("convert.output is required: the folder to write the shards to")
    if num_shards < 1:
        raise ValueError(f"convert.num_shards={num_shards} must be >= 1")
    check_on_bad_record(on_bad_record)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"convert.output={output!r} already exists; choose another folder or set "
                              "convert.overwrite=True")
    partial = output.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    names = [f"records-{i:05d}-of-{num_shards:05d}{SUFFIX}" for i in range(num_shards)]
    writers = [ArrayRecordWriter(os.path.join(partial, name), "group_size:1") for name in names]
    skipped: list[str] = []
    written = 0
    try:
        for index in tqdm(range(len(source)), desc="convert", unit="record"):
            try:
                entry = encode(source[index], source.where(index))
            except BadRecord as error:
                if on_bad_record == "error":
                    raise
                skipped.append(str(error))
                continue
            writers[written % num_shards].write(entry)
            written += 1
    finally:
        for writer in writers:
            writer.close()
    if not written:
        shutil.rmtree(partial)
        raise ValueError(f"no record of {len(source)} could be converted, e.g. {skipped[0] if skipped else '-'}")
    if overwrite:
        shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)
    return {"written": written, "skipped": len(skipped), "skipped_examples": skipped[:5],
            "shards": [os.path.join(output, name) for name in names]}
