"""`mode=build_pairs`: SFT-style records (a JSONL with `chosen` answers) -> preference records
in resumable shards (pairs/shards.py), by the builder `pairs.builder` names (pairs/registry.py).

Every builder takes (config, records, image_root, output), writes its shards with
`build_in_shards` and returns its counts: "kept" for records that became pairs and
"dropped_<reason>" for the rest. Output records point at their images relative to the output
folder, so the pairs train as they are:
`--config.data.path=<pairs.output>` (the folder reads as one source).
"""

from __future__ import annotations

import os
from typing import Any

from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.registry import BUILDERS


def check_config(config: Any) -> None:
    """What can be checked before anything is generated or read (main calls it before making a
    synthetic world), failing with the config key."""
    pairs = config.pairs
    if pairs.builder not in BUILDERS:
        raise ValueError(f"pairs.builder={pairs.builder!r}: choose one of {tuple(BUILDERS)}")
    if pairs.max_records < 0:
        raise ValueError(f"pairs.max_records={pairs.max_records} must be >= 0 (0 = all records)")
    if BUILDERS[pairs.builder].needs_model:
        if not config.model.get("path"):
            raise ValueError(f"model.path is empty: {pairs.builder} generates with a LLaVA model; give its Hugging "
                             "Face folder (e.g. the export/ of configs/sft_world.py)")


def build_pairs(config: Any, workdir: str) -> dict[str, Any]:
    """Build `config.pairs.builder`'s pairs from `config.data.path` into `pairs.output`."""
    check_config(config)
    pairs = config.pairs
    if not config.data.path:
        raise ValueError("data.path is empty: give a JSONL of records with `chosen` answers")
    output = pairs.output or os.path.join(workdir, "pairs")
    records = read_records(config.data.path)
    image_root = config.data.image_root or os.path.dirname(os.path.abspath(config.data.path))
    return {"output": output, **BUILDERS[pairs.builder].load()(config, records, image_root, output)}
