"""The command line: `python -m realign_jax.main --config=configs/<name>.py[:arg] [--config.key=value ...]`.

The config's `mode` picks what runs: generate, sft, train, precompute, inspect, convert, eval,
build_pairs, or pipeline (all of them for one method, configs/rdpo_llava.py). A config error
ends in one line naming the key instead of a stack trace.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from realign_jax.cli import config_value, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a python config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Directory for checkpoints, logs and outputs.")
_XLA = flags.DEFINE_bool("xla", False, "Profiling run: trace a window of steps with jax.profiler and dump the "
                         "optimised HLO and memory analysis of the step under the work dir.")

_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                    os.path.join(os.path.expanduser("~"), ".cache", "realign_jax", "xla")),
    "Folder of compiled XLA programs kept between runs (JAX's persistent compilation cache): a rerun, or a "
    "later stage compiling the same program, skips compiling. '' = off.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the checkpoints and logs of a run with a different config "
                               "in --workdir instead of refusing to resume them.")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The command-line switches besides the config."""

    xla: bool = False
    overwrite: bool = False


def _generate(config: Any, workdir: str, options: RunOptions) -> None:
    del options  # --xla profiles training steps
    from realign_jax.eval.captioning import caption

    caption(config, workdir)


def _prepare_world(config: Any, workdir: str) -> None:
    """Configs with a `world` section train on the synthetic world: generate it once and point
    the data (records and tokenizer) at it unless the config names other data."""
    if "world" not in config or config.data.path:
        return
    if config.world.get("records") == "grounding" and not config.model.get("path"):
        raise ValueError("world.records='grounding' continues the captions stage: set model.path to its export "
                         "(see configs/sft_world.py)")
    from realign_jax.synthetic.config import WorldConfig
    from realign_jax.synthetic.world import ensure_world

    folder = ensure_world(WorldConfig(**{k: v for k, v in config.world.items() if k not in ("dir", "records")}),
                          config.world.dir or os.path.join(workdir, "world"))
    config.data.path = os.path.join(folder, "train", f"{config.world.get('records', 'sft')}.jsonl")
    if "tokenizer" in config.data:  # configs that tokenize (not the text-only builders)
        config.data.tokenizer = config.data.tokenizer or os.path.join(folder, "tokenizer")


def train(config: Any, workdir: str, *, xla: bool = False, stop_after: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """`train.loop.train` with online BDHS's round sampler plugged in when `online_bdhs.every` is
    set (train/ does not import pairs/, docs/design.md "Rooms and who may import whom")."""
    from realign_jax.train import loop

    sampler = None
    if config.get("online_bdhs") and config.online_bdhs.every:
        from realign_jax.pairs.bdhs import online_sampler

        sampler = online_sampler(config.online_bdhs)
    return loop.train(config, workdir, xla=xla, stop_after=stop_after, overwrite=overwrite, online_sampler=sampler)


def _train(config: Any, workdir: str, options: RunOptions) -> None:
    _prepare_world(config, workdir)
    outputs = train(config, workdir, xla=options.xla, overwrite=options.overwrite)
    metrics = outputs["metrics"]
    shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("loss", "rewards/accuracies", "rewards/margins") if k in metrics)
    print(f"step {outputs['step']}: {shown}")
    if "skipped_records" in outputs:
        print(f"skipped bad records: {outputs['skipped_records']} (data.on_bad_record='skip')")
    for key in ("export", "profile", "xla"):
        if key in outputs:
            print(f"{key}: {outputs[key]}")
    print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}")
    if "stopped_at" in outputs:
        print(f"stopped at step {outputs['stopped_at']} with a checkpoint; run the same command to resume")
        raise SystemExit(0)  # a pipeline must not go on to its next stage without this one's export


def _inspect(config: Any, workdir: str, options: RunOptions) -> None:
    del workdir, options  # inspect only reads
    from realign_jax.train.inspect_data import inspect

    inspect(config)


def _convert(config: Any, workdir: str, options: RunOptions) -> None:
    del workdir, options  # the output folder is convert.output
    from realign_jax.data.arrayrecord import convert
    from realign_jax.data.sources import open_source

    source = open_source(config.data)
    result = convert(source, config.convert.output, num_shards=config.convert.num_shards,
                     on_bad_record=config.data.on_bad_record, overwrite=config.convert.overwrite)
    print(f"convert: {result['written']} records -> {len(result['shards'])} shard(s) in {config.convert.output}")
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad records, e.g.:\n  " + "\n  ".join(result["skipped_examples"]))


def _build_pairs(config: Any, workdir: str, options: RunOptions) -> None:
    del options  # nothing is trained
    from realign_jax.pairs.build import build_pairs, check_config

    check_config(config)  # before a world is generated for nothing
    _prepare_world(config, workdir)
    result = build_pairs(config, workdir)
    counts = result["counts"]
    print(f"{config.pairs.builder}: {counts.get('kept', 0)} pairs kept, "
          f"{sum(v for k, v in counts.items() if k.startswith('dropped_'))} records dropped "
          f"({result['built']} of {len(result['shards'])} shards built now, the rest already there)")
    print(f"counts: {counts}")
    print(f"pairs: {result['output']}")


def _precompute(config: Any, workdir: str, options: RunOptions) -> None:
    del options  # nothing is trained
    from realign_jax.train.precompute import precompute

    result = precompute(config, workdir)
    print(f"precompute: reference log-probs of {result['written']} records -> {result['output']}")
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad records, e.g.:\n  " + "\n  ".join(result["skipped_examples"]))
    print(f"train on them: --config.reference=precomputed --config.data.path={result['output']}")


def _eval(config: Any, workdir: str, options: RunOptions) -> None:
    del options  # --xla profiles training steps
    from realign_jax.eval.suite import evaluate
    from realign_jax.synthetic import benchmarks

    evaluate(config, workdir, benchmarks)  # the world's ground truth: eval/ does not import synthetic/


def _pipeline(config: Any, workdir: str, options: RunOptions) -> None:
    from realign_jax.pipeline import run_pipeline

    # --xla is not passed on: profile one stage with its own config instead.
    run_pipeline(config, workdir,
                 run=lambda stage_config, stage_dir: run(stage_config, stage_dir, overwrite=options.overwrite))


MODES: dict[str, Callable[[Any, str, RunOptions], None]] = {
    "generate": _generate, "train": _train, "sft": _train, "inspect": _inspect, "convert": _convert, "eval": _eval,
    "build_pairs": _build_pairs, "pipeline": _pipeline, "precompute": _precompute}


# The config sections each mode reads, and a config that has them.
MODE_SECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "generate": (("model", "data", "generate"), "configs/generate_llava.py"),
    "train": (("model", "data", "train"), "configs/train_llava.py"),
    "precompute": (("model", "data", "train"), "configs/train_llava.py"),
    "sft": (("model", "data", "train"), "configs/sft_llava.py"),
    "inspect": (("model", "data", "train", "inspect"), "configs/train_llava.py"),
    "convert": (("data", "convert"), "configs/convert_data.py"),
    "eval": (("model", "eval"), "configs/eval_world.py"),
    "build_pairs": (("data", "pairs"), "configs/povid_pairs.py"),
    "pipeline": (("world", "model", "data", "sft", "pairs", "align", "eval"), "configs/rdpo_llava.py"),
}


def non_finite_values(config: Any, prefix: str = "") -> list[str]:
    """`key=value` for every NaN or infinite number in the config (in tuples too): no key takes one,
    and a NaN beta or lr would otherwise train to garbage and exit 0."""
    found = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            found += non_finite_values(value, f"{name}.")
        elif any(isinstance(v, float) and not math.isfinite(v)
                 for v in (value if isinstance(value, tuple) else (value,))):
            found.append(f"{name}={value}")
    return found


def run(config: Any, workdir: str, xla: bool = False, overwrite: bool = False) -> None:
    bad = non_finite_values(config)
    if bad:
        raise ValueError(f"config values must be finite numbers: {', '.join(bad)}")
    mode = config.get("mode")
    if mode in MODES:
        sections, example = MODE_SECTIONS[mode]
        missing = [name for name in sections if name not in config]
        if missing:
            raise SystemExit(f"config.mode={mode!r} needs the config sections {missing}; start from {example}")
        MODES[mode](config, workdir, RunOptions(xla=xla, overwrite=overwrite))
    else:
        raise SystemExit(f"config.mode={mode!r} is unknown; expected one of {sorted(MODES)}")


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing out of the terminal
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_value(lambda: _CONFIG.value)
    if config is None:
        raise SystemExit("--config is required, e.g. --config=configs/generate_llava.py")
    if not _WORKDIR.value:
        raise SystemExit("error: --workdir is empty: give the folder the run writes to (e.g. --workdir=/tmp/run)")
    if _COMPILE_CACHE.value:
        import jax

        jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
    try:
        run(config, _WORKDIR.value, _XLA.value, _OVERWRITE.value)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, FloatingPointError) as error:
        # Bad input and bad config values end in one line naming the problem, not a trace.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C outside the training steps (building, compiling, a builder, an evaluator): one
        # line, not a traceback. Inside them the loop saves a checkpoint instead (train/interrupts.py).
        print("\ninterrupted (Ctrl-C); finished stages and checkpoints are kept: rerun the same command to go on",
              file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
