"""Reading a whole JSON-lines file of objects, each bad line named by file and line number.

For files read once from start to end (POPE question files, a builder's input records);
`sources.JsonlSource` indexes byte offsets instead, for random access during training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any


MAX_DEPTH = 32  # a record nests 4 deep (messages -> turn -> content); far deeper is an attack or a bug


class BadValue(ValueError):
    """A decoded value nothing downstream can take; `path` names the field ('' for the whole)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"field {path!r} {problem}" if path else problem)
        self.path, self.problem = path, problem

    @property
    def field(self) -> str:
        """The top-level key the problem sits under ('' when it is the value itself)."""
        return re.split(r"[.\[]", self.path)[0]


def decode(raw: bytes) -> Any:
    """UTF-8 JSON bytes -> the value; ValueError saying what is wrong (the caller says where).

    The one guarded decoder: besides bad bytes and bad JSON, a document nested so deep that
    the decoder overflows the stack is a ValueError, not a RecursionError.
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        # Some of json's messages end in "at" ("Unterminated string starting at"): no "at at column".
        # The column counts from the line's start: a line cut short fails past its newline, where
        # json's own column restarts at 1 on a "line 2".
        raise ValueError(f"not valid JSON ({error.msg.removesuffix(' at')} at column {error.pos + 1})") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None


def parse_line(raw: bytes) -> Any:
    """One JSON-lines line -> its checked value (`decode`, then `check_value`)."""
    value = decode(raw)
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Refuse what JSON allows but nothing downstream handles: nesting past MAX_DEPTH, and strings
    holding lone UTF-16 surrogates such as "\\ud800" (valid JSON, not encodable text: a tokenizer
    fails on them). Raises BadValue naming the field. Iterative: nothing to overflow."""
    pending: list[tuple[Any, str, int]] = [(value, "", 0)]
    while pending:
        item, path, depth = pending.pop()
        if depth > MAX_DEPTH:  # named by its top-level field: the full path would be a screenful
            raise BadValue(re.split(r"[.\[]", path)[0], f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                pending.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadValue(path, f"holds a lone UTF-16 surrogate ({text[error.start]!r} at character {error.start}), "
                             "which is not text") from None


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
