"""`python -m realign_jax.settings [MODE]`: every key of a mode's settings, with its default and
its meaning (MODE: train, eval, generate, convert, build_pairs:BUILDER, pipeline:BUILDER;
nothing = all of them)."""

from __future__ import annotations

import sys

from realign_jax.settings.keys import keys
from realign_jax.settings.runs import PAIRS_RUNS, PIPELINES, ConvertRun, EvalRun, GenerateRun, TrainSettings

ROOTS = {"train": TrainSettings, "eval": EvalRun, "generate": GenerateRun, "convert": ConvertRun,
         **{f"build_pairs:{name}": run for name, run in PAIRS_RUNS.items()},
         **{f"pipeline:{name}": run for name, run in PIPELINES.items()}}


def listing(mode: str) -> str:
    lines = [f"# mode {mode}"]
    for info in keys(ROOTS[mode]):
        lines.append(f"{info.name} = {info.default!r}  # {info.meaning}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    modes = argv[1:] or list(ROOTS)
    unknown = [m for m in modes if m not in ROOTS]
    if unknown:
        raise SystemExit(f"error: unknown mode {unknown}; choose from {sorted(ROOTS)}")
    print("\n\n".join(listing(mode) for mode in modes))


if __name__ == "__main__":
    main(sys.argv)
