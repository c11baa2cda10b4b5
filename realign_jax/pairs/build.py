"""`mode=build_pairs`: SFT-style records (a JSONL with `chosen` answers) -> preference records
in resumable shards (pairs/shards.py), by the builder `pairs.builder` names.

Every builder takes (config, records, image_root, output), writes its shards with
`build_in_shards` and returns its counts: "kept" for records that became pairs and
"dropped_<reason>" for the rest. Output records point at their images relative to the output
folder, so the pairs train as they are:
`--config.data.path=<pairs.output>/pairs-00000-of-0000N.jsonl`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from realign_jax.eval.chair import load_synonyms
from realign_jax.pairs.injection import KINDS, InjectionStats, inject_records
from realign_jax.pairs.inputs import read_records, rebase_image, synonyms_path
from realign_jax.pairs.shards import build_in_shards

Builder = Callable[[Any, Sequence[dict[str, Any]], str, str], dict[str, Any]]


def _parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if not kinds or unknown:
        raise ValueError(f"pairs.kinds={text!r}: choose a comma-separated subset of {KINDS}")
    return kinds


def build_povid(config: Any, records: Sequence[dict[str, Any]], image_root: str, output: str) -> dict[str, Any]:
    """POVID's injected rejections; the injection statistics are learnt once and kept with the pairs."""
    pairs = config.pairs
    synonyms = synonyms_path(pairs.synonyms, config.data.path)
    kinds = _parse_kinds(pairs.kinds)
    os.makedirs(output, exist_ok=True)
    stats_path = os.path.join(output, "injection_stats.json")
    if os.path.exists(stats_path):  # a resumed run injects from the statistics the first run learnt
        stats = InjectionStats.load(stats_path)
    else:
        stats = InjectionStats.from_records(records, load_synonyms(synonyms))
        stats.save(stats_path)

    def build(part: Sequence[dict[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        rebased = [rebase_image(dict(r), image_root, output) for r in part]
        return list(inject_records(rebased, stats, pairs.seed, kinds=kinds, max_edits=pairs.max_edits,
                                   counts=counts))

    manifest = {"builder": "povid", "records_path": os.path.abspath(config.data.path), "synonyms": synonyms,
                "seed": pairs.seed, "kinds": list(kinds), "max_edits": pairs.max_edits}
    return build_in_shards(records, output, pairs.shard_size, build, manifest, desc="povid injection")


def builders() -> dict[str, Builder]:
    """The registry by `pairs.builder` name."""
    from realign_jax.pairs.bdhs import build_bdhs
    from realign_jax.pairs.realign import build_realign

    return {"povid": build_povid, "realign": build_realign, "bdhs": build_bdhs}


MODEL_BUILDERS = ("realign", "bdhs")  # they generate with a VLM: model.path is required


def check_config(config: Any) -> None:
    """What can be checked before anything is generated or read (main calls it before making a
    synthetic world), failing with the config key."""
    pairs = config.pairs
    if pairs.builder not in ("povid", *MODEL_BUILDERS):
        raise ValueError(f"pairs.builder={pairs.builder!r}: choose one of {('povid', *MODEL_BUILDERS)}")
    if pairs.builder in MODEL_BUILDERS:
        if not config.model.get("path"):
            raise ValueError(f"model.path is empty: {pairs.builder} generates with a LLaVA model; give its Hugging "
                             "Face folder (e.g. the export/ of configs/sft_world.py)")
        if pairs.max_records < 0:
            raise ValueError(f"pairs.max_records={pairs.max_records} must be >= 0 (0 = all records)")


def build_pairs(config: Any, workdir: str) -> dict[str, Any]:
    """Build `config.pairs.builder`'s pairs from `config.data.path` into `pairs.output`."""
    check_config(config)
    pairs = config.pairs
    if not config.data.path:
        raise ValueError("data.path is empty: give a JSONL of records with `chosen` answers")
    output = pairs.output or os.path.join(workdir, "pairs")
    records = read_records(config.data.path)
    image_root = config.data.image_root or os.path.dirname(os.path.abspath(config.data.path))
    return {"output": output, **builders()[pairs.builder](config, records, image_root, output)}
