"""What every pair builder reads: the input records (checked before any builder work, so a bad
one is named by its line instead of failing deep in an embedding or a generation), where their
images are, and the object synonym table CHAIR and the builders share."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from realign_jax.data.images import load_image
from realign_jax.data.jsonl import json_objects
from realign_jax.data.records import BadRecord

MAX_NAMED = 10  # skipped records named for the user; the counts hold them all
PROGRESS_OVER = 200  # records: fewer are checked in a blink, more get a progress bar
TEXT_FIELDS = ("chosen", "question")  # the builders take these as text when present


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a line that is not a JSON object stops naming its line."""
    return [record for _, record in read_located(path)]


def read_located(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a JSONL file, where = "<path>, line <n>", so a record
    found bad later is named by its line."""
    return list(json_objects(path))


@dataclasses.dataclass(frozen=True)
class CheckedRecords:
    """The records a builder may take, and the bad ones `check_records` dropped under skip."""

    records: list[dict[str, Any]]
    dropped: Counter[str]  # dropped_bad_<field> -> records
    named: list[str]  # the first MAX_NAMED dropped, each "<where>: field '<field>': <problem>"


def check_records(located: Sequence[tuple[str, dict[str, Any]]], image_root: str, on_bad_record: str) -> CheckedRecords:
    """The records whose image decodes (as training loads it) and whose text fields are text, checked
    before a builder embeds or generates anything: under 'error' the first bad one raises BadRecord
    naming its line; under 'skip' the bad ones are dropped, counted by field and the first named."""
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    named: list[str] = []
    decoded: dict[str, str | None] = {}  # image path -> its problem: records sharing an image decode it once
    with tqdm(located, desc="checking records", unit="record", disable=len(located) <= PROGRESS_OVER) as bar:
        for where, record in bar:
            bad = record_fault(where, record, image_root, decoded)
            if bad is None:
                kept.append(record)
                continue
            if on_bad_record == "error":
                raise bad
            dropped[f"dropped_bad_{bad.field}"] += 1
            if len(named) < MAX_NAMED:
                named.append(str(bad))
    return CheckedRecords(kept, dropped, named)


def record_fault(where: str, record: Mapping[str, Any], image_root: str,
                 decoded: dict[str, str | None]) -> BadRecord | None:
    """What is wrong with a record for the builders, naming its line and id; None when nothing."""
    named = f"{where} (id {record['id']!r})" if "id" in record else where
    problem = _image_problem(record, image_root, decoded)
    if problem:
        return BadRecord(named, "image", problem)
    for field in TEXT_FIELDS:
        problem = _text_problem(record, field)
        if problem:
            return BadRecord(named, field, problem)
    return None


def _image_problem(record: Mapping[str, Any], image_root: str, decoded: dict[str, str | None]) -> str | None:
    image = record.get("image")
    if image is None:
        return "is missing: give the path of the record's image"
    if not isinstance(image, str) or not image.strip():
        return f"must be a path to the image, got {image!r}"
    path = image_path(record, image_root)
    if path not in decoded:
        decoded[path] = _decode_problem(path)
    return decoded[path]


def _decode_problem(path: str) -> str | None:
    """load_image's complaint about the file (missing, not a file, truncated, a bomb), or None."""
    try:
        load_image(path)
    except ValueError as error:
        return str(error)
    return None


def _text_problem(record: Mapping[str, Any], field: str) -> str | None:
    """A present text field must be a string (a blank or absent one is each builder's own drop)."""
    value = record.get(field)
    return None if value is None or isinstance(value, str) else f"must be a string, got {type(value).__name__}"


def with_chosen(records: Sequence[Mapping[str, Any]], counts: Counter) -> list[Mapping[str, Any]]:
    """The records with a non-blank `chosen` answer; the others are counted as dropped_no_chosen."""
    kept = [r for r in records if str(r.get("chosen") or "").strip()]
    if len(kept) < len(records):
        counts["dropped_no_chosen"] += len(records) - len(kept)
    return kept


def has_question(record: Mapping[str, Any], counts: Counter) -> bool:
    """The samplers prompt with the record's question; one without is counted (dropped_no_question)."""
    if not str(record.get("question") or "").strip():
        counts["dropped_no_question"] += 1
        return False
    return True


def image_path(record: Mapping[str, Any], image_root: str) -> str:
    """The record's image as a path that opens from anywhere (relative paths are under image_root)."""
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"record {record.get('id', '?')!r}: field 'image' must be a path to the image")
    return image if os.path.isabs(image) else os.path.join(image_root, image)


def rebase_image(record: dict[str, Any], image_root: str, output: str) -> dict[str, Any]:
    """The record with its image path relative to the output folder (absolute paths stay), so
    the pairs train from where they are written."""
    image = record.get("image")
    if isinstance(image, str) and not os.path.isabs(image):
        record = {**record, "image": os.path.relpath(os.path.join(image_root, image), output)}
    return record


def default_synonyms(records_path: str) -> str:
    """A synthetic world's synonyms.txt (the records sit in <world>/<split>/), or ''."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(records_path)), os.pardir, "synonyms.txt")
    return os.path.normpath(candidate) if os.path.isfile(candidate) else ""


def synonyms_path(configured: str, records_path: str) -> str:
    """`pairs.synonyms`, or the world's table next to the records; an error when neither exists."""
    path = configured or default_synonyms(records_path)
    if not path or not os.path.isfile(path):
        raise ValueError(f"pairs.synonyms={configured!r}: give a CHAIR synonyms.txt for the objects "
                         "of your data (a synthetic world has one next to its splits)")
    return path
