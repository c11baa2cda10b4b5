"""`mode=build_pairs`: SFT-style records (a JSONL with `chosen` answers) -> preference records
in resumable shards (pairs/shards.py), by the builder `pairs.builder` names (pairs/registry.py).

Every builder takes (settings, records, image_root, output), writes its shards with
`build_in_shards` and returns its counts: "kept" for records that became pairs and
"dropped_<reason>" for the rest. Output records point at their images relative to the output
folder, so the pairs train as they are:
`--config.data.path=<pairs.output>` (the folder reads as one source).

Before the builder runs, every input record's image is decoded once (builder_inputs.py
`check_records`): a bad record stops the run naming its line (`pairs.on_bad_record=error`), or is
left out, counted as `dropped_bad_<field>` and named under "skipped_records" (`skip`), so the
builder sees the file as if it had never held it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from realign_jax.pairs.builder_inputs import CheckedRecords, check_records, read_located
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
    image_root = data.image_root or os.path.dirname(os.path.abspath(data.path))
    checked = check_records(read_located(data.path), image_root, settings.pairs.on_bad_record)
    _announce_skipped(checked)
    result = builder(settings.pairs.builder)(settings, checked.records, image_root, output)
    counts = Counter(result["counts"])
    counts.update(checked.dropped)  # update, not +: a builder's zero counts stay listed
    return {"output": output, **result, "counts": dict(sorted(counts.items())), "skipped_records": checked.named}


def _announce_skipped(checked: CheckedRecords) -> None:
    """Name the first skipped records before the builder's progress bar, so they can be fixed."""
    if checked.named:
        total = sum(checked.dropped.values())
        print(f"skipped {total} bad records (pairs.on_bad_record='skip'), e.g.:\n  " + "\n  ".join(checked.named))
