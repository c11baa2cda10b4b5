"""Randomness the pair builders can reproduce: a rerun, or a resumed run rebuilding one shard,
writes the same pairs whatever order or process the records come in."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def stable_seed(*parts: int | str) -> int:
    """A 31-bit seed fixed by `parts` (ints and strings), the same in every process and run
    (Python's own hash() of a string is not)."""
    digest = hashlib.sha256(json.dumps(list(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def record_rng(seed: int, record_id: str) -> np.random.Generator:
    """The record's own stream: the same (seed, id) always gives the same draws, in any order."""
    digest = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])
