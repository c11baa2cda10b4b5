"""`mode=build_pairs`: SFT-style records (a JSONL with `chosen` answers) -> preference records
in resumable shards (pairs/shards.py), by the builder `pairs.builder` names (pairs/registry.py).

Every builder takes (settings, records, image_root, output), writes its shards with
`build_in_shards` and returns its counts: "kept" for records that became pairs and
"dropped_<reason>" for the rest. Output records point at their images relative to the output
folder, so the pairs train as they are:
`--config.data.path=<pairs.output>` (the folder reads as one source).
"""

from __future__ import annotations

import os
from typing import Any

from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.registry import builder
from realign_jax.settings.runs import PairsRun, load


def build_pairs(config: PairsRun | Any, workdir: str) -> dict[str, Any]:
    """Build `pairs.builder`'s pairs from `data.path` into `pairs.output` (a ConfigDict is loaded
    and checked first)."""
    settings = load(config)
    data = settings.data
    if not data.path:
        raise ValueError("data.path is empty: give a JSONL of records with `chosen` answers")
    output = settings.pairs.output or os.path.join(workdir, "pairs")
    records = read_records(data.path)
    image_root = data.image_root or os.path.dirname(os.path.abspath(data.path))
    return {"output": output, **builder(settings.pairs.builder)(settings, records, image_root, output)}
