"""Resumable output for the pair builders: records are built in fixed shards of the input, and
a shard counts as done once its JSONL file exists.

Each shard is written to `<name>.partial` and renamed when complete, with its counts in a
sidecar written first, so a run that is killed loses at most the shard it was writing and a
rerun skips every finished one. `build.json` pins what the shards were built from: a rerun
with other settings refuses instead of mixing two builds in one folder.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from realign_jax.files import changed_keys, write_atomically

ShardBuilder = Callable[[Sequence[Mapping[str, Any]], Counter], list[dict[str, Any]]]


def shard_name(index: int, total: int) -> str:
    return f"pairs-{index:05d}-of-{total:05d}.jsonl"


def _check_manifest(output: str, manifest: Mapping[str, Any]) -> None:
    path = os.path.join(output, "build.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
        changed = changed_keys(existing, manifest)
        if changed:
            raise ValueError(f"{output} holds pairs built with other settings ({changed} differ); "
                             "delete it or choose another pairs.output")
    else:
        os.makedirs(output, exist_ok=True)
        write_atomically(path, json.dumps(manifest, indent=1))


def build_in_shards(records: Sequence[Mapping[str, Any]], output: str, shard_size: int, build: ShardBuilder,
                    manifest: Mapping[str, Any], desc: str = "building pairs") -> dict[str, Any]:
    """Run `build` over each `shard_size` slice of `records` not built yet; return the summed
    counts (finished shards' included), the shard paths and how many shards this run built."""
    if shard_size < 1:
        raise ValueError(f"pairs.shard_size={shard_size} must be >= 1")
    _check_manifest(output, {**manifest, "shard_size": shard_size, "records": len(records)})
    total = max(1, -(-len(records) // shard_size))
    counts: Counter[str] = Counter()
    paths, built = [], 0
    with tqdm(total=len(records), desc=desc, unit="record") as bar:
        for index in range(total):
            path = os.path.join(output, shard_name(index, total))
            paths.append(path)
            part = records[index * shard_size:(index + 1) * shard_size]
            if os.path.exists(path):
                with open(path + ".counts.json", encoding="utf-8") as f:
                    counts.update(json.load(f))
                bar.update(len(part))
                continue
            shard_counts: Counter[str] = Counter()
            rows = build(part, shard_counts)
            write_atomically(path + ".counts.json", json.dumps(dict(shard_counts)))
            write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            counts.update(shard_counts)
            built += 1
            bar.update(len(part))
    return {"counts": dict(sorted(counts.items())), "shards": paths, "built": built}
