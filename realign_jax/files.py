"""Files a kill must never leave half-written, and the settings a folder was made with.

Folders that runs come back to (a work dir, a pairs folder, the world) record what made them in
a small JSON file; a later run compares its own settings key by key before reusing the folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

_ABSENT = object()


def write_atomically(path: str, text: str) -> None:
    """Write `text` beside `path`, then rename it into place: a kill leaves the old file or the new one."""
    with open(path + ".partial", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".partial", path)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, a key present on one side only included, sorted."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))
