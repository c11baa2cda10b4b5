"""The methods side by side on one world and one SFT base, over several seeds, in one table:

    python -m realign_jax.main --config=configs/rdpo_llava.py --workdir=/tmp/rdpo   # the base, once
    python benchmarks/compare_methods.py --base /tmp/rdpo --out /tmp/compare --seeds 0,1,2,3,4

For each method (configs/<method>_llava.py) and seed it runs the pipeline with the base's
SFT model and world (`model.path`, `world.dir`: no SFT again), the seed set for the pairs and
the training data order, in `<out>/<method>-seed<seed>/` (finished runs are reused). It prints
the base's figures and, per method, the mean of each metric over the seeds with its 95%
bootstrap interval (seeds resampled), then each method's difference from plain DPO (`dpo`:
DPO on the Re-Align pairs of the same seed), paired by seed, with its interval and a `*` where
the interval excludes 0 (outside the seed noise); and the wall time. The same goes to
`<out>/comparison.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

from realign_jax.main import run  # noqa: E402
from realign_jax.pipeline import metric, reported  # noqa: E402
from common import METHODS  # noqa: E402  (configs/common.py: method -> pair builder)


def method_config(method: str, base: dict, seed: int):
    """configs/<method>_llava.py on the base's model and world, with `seed` for the pairs and
    the align stages (LoRA init, data order)."""
    config = importlib.import_module(f"{method}_llava").get_config()
    config.model.path = base["base_model"]
    with open(os.path.join(base["world"], "world.json"), encoding="utf-8") as f:
        world = json.load(f)["config"]
    config.world.update({k: v for k, v in world.items() if k in config.world})
    config.world.dir = base["world"]
    config.pairs.seed = seed
    for stage in config.align.values():
        stage.seed = seed
    return config


def bootstrap_interval(values: np.ndarray, level: float = 0.95, draws: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (the seeds resampled with
    replacement): with 5 seeds, the noise between seeds in one number."""
    values = np.asarray(values, float)
    means = np.random.default_rng(seed).choice(values, size=(draws, len(values))).mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _cell(values: list[float]) -> str:
    lo, hi = bootstrap_interval(values)
    return f"{np.mean(values):.3f} [{lo:.3f},{hi:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="work dir of a finished configs/rdpo_llava.py run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    with open(os.path.join(args.base, "results.json"), encoding="utf-8") as f:
        base = json.load(f)
    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[str, dict] = {}
    for method in args.methods.split(","):
        runs, seconds = [], []
        for seed in seeds:
            config = method_config(method, base, seed)
            workdir = os.path.join(args.out, f"{method}-seed{seed}")
            began = time.perf_counter()
            run(config, workdir)
            seconds.append(time.perf_counter() - began)
            with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
                runs.append(json.load(f)["aligned"])
        table[method] = {"seconds": seconds, "metrics": {
            label: [metric(r, benchmark, split, key) for r in runs]
            for label, benchmark, split, key in reported(base["base"])}}
    base_metrics = {label: metric(base["base"], b, s, k) for label, b, s, k in reported(base["base"])}
    labels = [label for label, *_ in reported(base["base"])]
    lines = [f"{'':22s}{'SFT base':>10s}" + "".join(f"{m:>22s}" for m in table)]
    for label in labels:
        cells = [_cell(table[m]["metrics"][label]) for m in table]
        lines.append(f"{label:22s}{base_metrics[label]:10.3f}" + "".join(f"{c:>22s}" for c in cells))
    lines.append(f"{'wall per run (s)':22s}{'':10s}" + "".join(
        f"{np.mean(table[m]['seconds']):>22.0f}" for m in table))
    if "dpo" in table:
        others = [m for m in table if m != "dpo"]
        lines += ["", "difference from dpo, paired by seed (* = the 95% interval excludes 0)"]
        lines.append(f"{'':22s}" + "".join(f"{m:>24s}" for m in others))
        for label in labels:
            cells = []
            for m in others:
                diff = np.subtract(table[m]["metrics"][label], table["dpo"]["metrics"][label])
                table[m].setdefault("vs_dpo", {})[label] = diff.tolist()
                lo, hi = bootstrap_interval(diff)
                cells.append(f"{diff.mean():+.3f} [{lo:+.3f},{hi:+.3f}]{'*' if lo > 0 or hi < 0 else ' '}")
            lines.append(f"{label:22s}" + "".join(f"{c:>24s}" for c in cells))
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump({"base": base_metrics, "seeds": seeds, "methods": table}, f, indent=1)


if __name__ == "__main__":
    main()
