"""What every pair builder reads: the input records, where their images are, and the object
synonym table CHAIR and the builders share."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from realign_jax.data.jsonl import json_objects


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a line that is not a JSON object stops naming its line."""
    return [record for _, record in json_objects(path)]


def with_chosen(records: Sequence[Mapping[str, Any]], counts: Counter) -> list[Mapping[str, Any]]:
    """The records with a non-blank `chosen` answer; the others are counted as dropped_no_chosen."""
    kept = [r for r in records if str(r.get("chosen") or "").strip()]
    if len(kept) < len(records):
        counts["dropped_no_chosen"] += len(records) - len(kept)
    return kept


def image_path(record: dict[str, Any], image_root: str) -> str:
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
