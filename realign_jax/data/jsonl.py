"""Reading a whole JSON-lines file of objects, each bad line named by file and line number.

For files read once from start to end (POPE question files, a builder's input records);
`sources.JsonlSource` indexes byte offsets instead, for random access during training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def parse_line(raw: bytes) -> Any:
    """One JSON-lines line -> its value; ValueError saying what is wrong (the caller says where)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None


def json_objects(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-blank line, where = "<path>, line <n>" for the caller's own
    field errors; a line that is not a JSON object raises ValueError naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = parse_line(raw)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, obj
