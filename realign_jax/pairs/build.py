"""`mode=build_pairs`: SFT-style records (a JSONL with `chosen` answers) -> preference records
in resumable shards (pairs/shards.py), by the builder `pairs.builder` names.

Only POVID's rule-based injection is wired so far; Re-Align and BDHS need the base model and
come next. Output records point at their images relative to the output folder, so the
pairs train as they are: `--config.data.path=<pairs.output>/pairs-00000-of-0000N.jsonl`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from realign_jax.data.jsonl import json_objects
from realign_jax.eval.chair import load_synonyms
from realign_jax.pairs.injection import KINDS, InjectionStats, inject_records
from realign_jax.pairs.shards import build_in_shards

BUILDERS = ("povid",)


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a line that is not a JSON object stops naming its line."""
    return [record for _, record in json_objects(path)]


def _rebase_image(record: dict[str, Any], image_root: str, output: str) -> dict[str, Any]:
    """The record with its image path relative to the output folder (absolute paths stay)."""
    image = record.get("image")
    if isinstance(image, str) and not os.path.isabs(image):
        record = {**record, "image": os.path.relpath(os.path.join(image_root, image), output)}
    return record


def _default_synonyms(records_path: str) -> str:
    """A synthetic world's synonyms.txt: the records sit in <world>/<split>/."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(records_path)), os.pardir, "synonyms.txt")
    return os.path.normpath(candidate) if os.path.isfile(candidate) else ""


def _parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if not kinds or unknown:
        raise ValueError(f"pairs.kinds={text!r}: choose a comma-separated subset of {KINDS}")
    return kinds


def build_povid(records: Sequence[Mapping[str, Any]], records_path: str, pairs: Any, image_root: str,
                output: str) -> dict[str, Any]:
    """POVID's injected rejections; the injection statistics are learnt once and kept with the pairs."""
    synonyms = pairs.synonyms or _default_synonyms(records_path)
    if not synonyms or not os.path.isfile(synonyms):
        raise ValueError(f"pairs.synonyms={pairs.synonyms!r}: give a CHAIR synonyms.txt for the objects "
                         "of your data (a synthetic world has one next to its splits)")
    kinds = _parse_kinds(pairs.kinds)
    os.makedirs(output, exist_ok=True)
    stats_path = os.path.join(output, "injection_stats.json")
    if os.path.exists(stats_path):  # a resumed run injects from the statistics the first run learnt
        stats = InjectionStats.load(stats_path)
    else:
        stats = InjectionStats.from_records(records, load_synonyms(synonyms))
        stats.save(stats_path)

    def build(part: Sequence[Mapping[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        rebased = [_rebase_image(dict(r), image_root, output) for r in part]
        return list(inject_records(rebased, stats, pairs.seed, kinds=kinds, max_edits=pairs.max_edits,
                                   counts=counts))

    manifest = {"builder": "povid", "records_path": os.path.abspath(records_path), "synonyms": synonyms,
                "seed": pairs.seed, "kinds": list(kinds), "max_edits": pairs.max_edits}
    return build_in_shards(records, output, pairs.shard_size, build, manifest, desc="povid injection")


def build_pairs(config: Any, workdir: str) -> dict[str, Any]:
    """Build `config.pairs.builder`'s pairs from `config.data.path` into `pairs.output`."""
    pairs = config.pairs
    if pairs.builder not in BUILDERS:
        raise ValueError(f"pairs.builder={pairs.builder!r}: choose one of {BUILDERS}")
    if not config.data.path:
        raise ValueError("data.path is empty: give a JSONL of records with `chosen` answers")
    output = pairs.output or os.path.join(workdir, "pairs")
    records = read_records(config.data.path)
    image_root = config.data.image_root or os.path.dirname(os.path.abspath(config.data.path))
    return {"output": output, **build_povid(records, config.data.path, pairs, image_root, output)}
