"""The command line: `python -m realign_jax.main --config=configs/<name>.py[:arg] [--config.key=value ...]`.

The config's `mode` picks what runs: generate, sft, train, precompute, inspect, convert, eval,
build_pairs, or pipeline (all of them for one method, configs/rdpo_llava.py). A config error
ends in one line naming the key instead of a stack trace.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from realign_jax.cli import config_value, parse_flags
from realign_jax.settings.runs import ConvertRun, EvalRun, GenerateRun, PairsRun, PipelineRun, TrainSettings, load
from realign_jax.train import multihost
from realign_jax.train.workdir import DiskFull

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


def _generate(settings: GenerateRun, workdir: str, options: RunOptions) -> None:
    del options  # --xla profiles training steps
    from realign_jax.eval.captioning import caption

    caption(settings, workdir)


def with_world(settings: Any, workdir: str) -> Any:
    """Settings with a `world` train on (or build pairs from) the synthetic world: generate it
    once and point the data (records and tokenizer) at it unless they name other data."""
    if getattr(settings, "world", None) is None or settings.data.path:
        return settings
    from realign_jax.synthetic.world import ensure_world

    folder = ensure_world(settings.world.recipe(), settings.world.dir or os.path.join(workdir, "world"))
    data = dataclasses.replace(settings.data, path=os.path.join(folder, "train", f"{settings.world.records}.jsonl"))
    if hasattr(data, "tokenizer"):  # settings that tokenize (not the text-only builders)
        data = dataclasses.replace(data, tokenizer=data.tokenizer or os.path.join(folder, "tokenizer"))
    return dataclasses.replace(settings, data=data)


def train(settings: TrainSettings, workdir: str, *, xla: bool = False, stop_after: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """`train.loop.train` with the online method's round sampler plugged in when
    `online_bdhs.every` or `online_dpo.every` is set (train/ does not import pairs/,
    docs/design.md "Rooms and who may import whom")."""
    from realign_jax.train import loop

    settings = load(settings)
    sampler = None
    if settings.online_method == "online_bdhs":
        from realign_jax.pairs.bdhs import online_sampler

        sampler = online_sampler(settings.online_bdhs)
    elif settings.online_method == "online_dpo":
        from realign_jax.pairs.online_dpo import online_dpo_sampler

        sampler = online_dpo_sampler(settings.online_dpo, _annotator_world(settings, workdir))
    return loop.train(settings, workdir, xla=xla, stop_after=stop_after, overwrite=overwrite, online_sampler=sampler)


def _annotator_world(settings: TrainSettings, workdir: str) -> str:
    """online_dpo.world, else the run's own world (world.dir, or <workdir>/world) when it has one."""
    if settings.online_dpo.world or settings.world is None:
        return settings.online_dpo.world
    return settings.world.dir or os.path.join(workdir, "world")


def _train(settings: TrainSettings, workdir: str, options: RunOptions) -> None:
    outputs = train(with_world(settings, workdir), workdir, xla=options.xla, overwrite=options.overwrite)
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


def _inspect(settings: TrainSettings, workdir: str, options: RunOptions) -> None:
    del workdir, options  # inspect only reads
    from realign_jax.train.inspect_data import inspect

    inspect(settings)


def _convert(settings: ConvertRun, workdir: str, options: RunOptions) -> None:
    del workdir, options  # the output folder is convert.output
    from realign_jax.data.arrayrecord import convert
    from realign_jax.data.sources import open_source

    output = settings.convert
    result = convert(open_source(settings.data), output.output, num_shards=output.num_shards,
                     on_bad_record=settings.data.on_bad_record, overwrite=output.overwrite)
    print(f"convert: {result['written']} records -> {len(result['shards'])} shard(s) in {output.output}")
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad records, e.g.:\n  " + "\n  ".join(result["skipped_examples"]))


def _build_pairs(settings: PairsRun, workdir: str, options: RunOptions) -> None:
    del options  # nothing is trained
    from realign_jax.pairs.build import build_pairs

    result = build_pairs(with_world(settings, workdir), workdir)
    counts = result["counts"]
    print(f"{settings.pairs.builder}: {counts.get('kept', 0)} pairs kept, "
          f"{sum(v for k, v in counts.items() if k.startswith('dropped_'))} records dropped "
          f"({result['built']} of {len(result['shards'])} shards built now, the rest already there)")
    print(f"counts: {counts}")
    print(f"pairs: {result['output']}")


def _precompute(settings: TrainSettings, workdir: str, options: RunOptions) -> None:
    del options  # nothing is trained
    from realign_jax.train.precompute import precompute

    result = precompute(settings, workdir)
    print(f"precompute: reference log-probs of {result['written']} records -> {result['output']}")
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad records, e.g.:\n  " + "\n  ".join(result["skipped_examples"]))
    print(f"train on them: --config.reference=precomputed --config.data.path={result['output']}")


def _eval(settings: EvalRun, workdir: str, options: RunOptions) -> None:
    del options  # --xla profiles training steps
    from realign_jax.eval.suite import evaluate
    from realign_jax.synthetic import benchmarks

    evaluate(settings, workdir, benchmarks)  # the world's ground truth: eval/ does not import synthetic/


def _pipeline(settings: PipelineRun, workdir: str, options: RunOptions) -> None:
    from realign_jax.pipeline import run_pipeline

    # --xla is not passed on: profile one stage with its own config instead.
    run_pipeline(settings, workdir,
                 run=lambda stage, stage_dir: run(stage, stage_dir, overwrite=options.overwrite))


MODES: dict[str, Callable[[Any, str, RunOptions], None]] = {
    "generate": _generate, "train": _train, "sft": _train, "inspect": _inspect, "convert": _convert, "eval": _eval,
    "build_pairs": _build_pairs, "pipeline": _pipeline, "precompute": _precompute}


def run(config: Any, workdir: str, xla: bool = False, overwrite: bool = False) -> None:
    """Check the config (a ConfigDict, or settings a pipeline filled in) and run its mode."""
    settings = load(config)
    MODES[settings.mode](settings, workdir, RunOptions(xla=xla, overwrite=overwrite))


def _fail(message: str, code: int = 2, hard: bool = False) -> None:
    """One line and exit `code`. In a multi-host run every other process is told (and exits with
    the same line), and this one exits at once: the distributed runtime's exit barrier would
    otherwise wait for processes that are stuck in a collective."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if multihost.report_failure(message) or hard:
        sys.stdout.flush()
        os._exit(code)
    raise SystemExit(code)


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
    except DiskFull as error:
        # Nothing more can be written: exit at once, before the writers' exit hooks (TensorBoard's,
        # Orbax's threads) try again and print their own failures after this line.
        _fail(str(error), hard=True)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, FloatingPointError) as error:
        # Bad input and bad config values end in one line naming the problem, not a trace.
        _fail(str(error))
    except Exception as error:
        if not multihost.joined():
            raise
        traceback.print_exc()  # a bug: the trace here, one line on the other processes
        _fail(f"{type(error).__name__}: {error} (its traceback is in this process's log)", code=1)
    except KeyboardInterrupt:
        # Ctrl-C outside the training steps (building, compiling, a builder, an evaluator): one
        # line, not a traceback. Inside them the loop saves a checkpoint instead (train/interrupts.py).
        print("\ninterrupted (Ctrl-C); finished stages and checkpoints are kept: rerun the same command to go on",
              file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
