"""`mode=pipeline`: a method end to end in one command (configs/rdpo_llava.py and siblings).

    world -> SFT base (two curriculum stages) -> evaluate the base -> build pairs -> align
          -> evaluate the aligned model -> report (table, results.json, training curves PNG)

Each stage runs the same code as its own command (`mode=sft`, `build_pairs`, `train`, `eval`)
in its own folder under the work dir, and is skipped when its output is already there
(`export/` of a trained stage, `eval/results.json` of an evaluation; the pair builder skips its
finished shards itself), so a rerun after a kill or a change to a later stage reuses the rest.
With `model.path` set the SFT stages are skipped and that checkpoint is aligned; with
`data.path` the pairs are built from those records instead of the world's; with both and the
published benchmark files (`eval.pope_file`, `eval.coco_instances`) no world is made at all.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import Any

from realign_jax.settings.keys import replace
from realign_jax.settings.runs import PAIRS_RUNS, EvalRun, PipelineRun, TrainSettings
from realign_jax.settings.sections import ModelSettings, RecordFiles

CHAIR_REPORTED = (("CHAIR_s", "chair_s"), ("CHAIR_i", "chair_i"), ("CHAIR recall", "recall"))
StageRunner = Callable[[Any, str], None]  # runs one stage's settings in a work dir, as the command line does
CURVES = ("loss", "rewards/margins", "visual/rewards/margins", "noisy/rewards/margins")


def _length(stage: TrainSettings) -> str:
    """How long a stage trains, as its config says it."""
    return f"{stage.train.epochs:g} epochs" if stage.train.epochs else f"{stage.train.steps} steps"


def _model(settings: PipelineRun, path: str) -> ModelSettings:
    """The model a stage reads: `path`, in the pipeline's dtypes."""
    return ModelSettings(path=path, preset="", dtype=settings.model.dtype, param_dtype=settings.model.param_dtype)


def _sft(settings: PipelineRun, workdir: str, world_dir: str, run: StageRunner) -> str:
    """The world's base model: the captions stage, then the grounding stage from its export."""
    model_path = ""
    for name in ("captions", "grounding"):
        stage_dir = os.path.join(workdir, f"sft_{name}")
        export = os.path.join(stage_dir, "export")
        if not os.path.exists(os.path.join(export, "config.json")):
            stage: TrainSettings = getattr(settings.sft, name)
            stage = replace(stage, world=replace(settings.world, dir=world_dir, records=name), model__path=model_path)
            _announce(f"SFT of the world's base model, stage {name} ({_length(stage)})")
            run(stage, stage_dir)
        model_path = export
    return model_path


def _pairs(settings: PipelineRun, workdir: str, world_dir: str, model_path: str, run: StageRunner) -> str:
    pairs = replace(settings.pairs, output=os.path.join(workdir, "pairs"))
    stage = PAIRS_RUNS[pairs.builder](
        world=replace(settings.world, dir=world_dir), model=_model(settings, model_path) if pairs.needs_model else None,
        data=RecordFiles(path=settings.data.path, image_root=settings.data.image_root), pairs=pairs)
    _announce(f"{pairs.builder} pairs from {settings.data.path or 'the world: train/' + settings.world.records + '.jsonl'}")
    run(stage, os.path.join(workdir, "pairs_build"))
    if not _has_pairs(pairs.output):
        raise ValueError(f"the {pairs.builder} builder kept no pairs in {pairs.output} (its counts are printed above): "
                         "nothing to align on; a base model that writes nothing, or a filter that drops everything, "
                         "does this")
    return pairs.output


def _has_pairs(folder: str) -> bool:
    for path in glob.glob(os.path.join(folder, "pairs-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            if any(line.strip() for line in f):
                return True
    return False


def _align(settings: PipelineRun, workdir: str, world_dir: str, model_path: str, pairs_dir: str,
           run: StageRunner) -> str:
    """Each align stage from the previous stage's merged export (POVID's two stages)."""
    for name, stage in settings.align.stages():
        stage_dir = os.path.join(workdir, f"align_{name}")
        export = os.path.join(stage_dir, "export")
        if not os.path.exists(os.path.join(export, "config.json")):
            stage = replace(stage, model__path=model_path, model__preset="", model__dtype=settings.model.dtype,
                            model__param_dtype=settings.model.param_dtype, data__path=pairs_dir,
                            data__seed=stage.seed)
            if stage.online_dpo is not None and not stage.online_dpo.world:
                stage = replace(stage, online_dpo__world=world_dir)  # the world annotator's ground truth
            _announce(f"aligning ({name}: loss {stage.loss.name}, {_length(stage)})")
            run(stage, stage_dir)
        model_path = export
    return model_path


def _evaluate(settings: PipelineRun, workdir: str, name: str, world_dir: str, model_path: str,
              run: StageRunner) -> dict[str, Any]:
    out = os.path.join(workdir, name)
    results = os.path.join(out, "eval", "results.json")
    if not os.path.exists(results):
        section = settings.eval
        if not (section.pope_file or section.coco_instances):
            section = replace(section, world=section.world or world_dir)
        _announce(f"evaluating {name.removeprefix('eval_')} ({model_path})")
        run(EvalRun(model=_model(settings, model_path), eval=section), out)
    with open(results, encoding="utf-8") as f:
        return json.load(f)


def _announce(text: str) -> None:
    print(f"\n== {text}", flush=True)


def metric(results: dict[str, Any], benchmark: str, split: str | None, key: str) -> float | None:
    """One figure of an eval results.json (None when that benchmark was not run)."""
    section = results.get(benchmark)
    if section is None:
        return None
    if split is not None:
        section = section.get(split) if split in section else section.get("splits", {}).get(split)
    return None if section is None or key not in section else float(section[key])


def reported(results: dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    """(label, benchmark, split, key) of the figures the table shows: F1 and yes-ratio of each
    POPE set the evaluation ran (the world's random / popular / adversarial, or a published
    file's), then CHAIR."""
    rows = [(f"POPE {name} {label}", "pope", name, key) for name in results.get("pope", {})
            for label, key in (("F1", "f1"), ("yes", "yes_ratio"))]
    return rows + [(label, "chair", None, key) for label, key in CHAIR_REPORTED]


def report_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, benchmark, split, key in reported(before):
        a, b = metric(before, benchmark, split, key), metric(after, benchmark, split, key)
        if a is not None and b is not None:
            rows.append({"metric": label, "base": a, "aligned": b, "change": b - a})
    return rows


def format_table(rows: list[dict[str, Any]], method: str) -> str:
    lines = [f"{'':24s}{'base':>9s}{method:>10s}{'change':>9s}"]
    lines += [f"{r['metric']:24s}{r['base']:9.3f}{r['aligned']:10.3f}{r['change']:+9.3f}" for r in rows]
    return "\n".join(lines)


def plot_curves(metrics_files: list[str], path: str) -> str | None:
    """Loss and reward margins (textual, and visual / noisy where the loss has them) of the
    align stages against step, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for metrics_file in metrics_files:
        last = 0
        with open(metrics_file, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                last = row["step"]
                for key in CURVES:
                    if key in row:
                        series.setdefault(key, []).append((offset + row["step"], row[key]))
        offset += last
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items(), strict=True):
        ax.plot([s for s, _ in points], [v for _, v in points])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_pipeline(settings: PipelineRun, workdir: str, run: StageRunner) -> dict[str, Any]:
    """All stages (module docstring); `run(settings, workdir)` runs one stage the way the command
    line does. Returns what results.json holds."""
    os.makedirs(workdir, exist_ok=True)
    from realign_jax.synthetic.world import ensure_world

    published_eval = bool(settings.eval.pope_file or settings.eval.coco_instances)
    needs_world = not (settings.model.path and settings.data.path and published_eval)
    world_dir = ensure_world(settings.world.recipe(), settings.world.dir or os.path.join(workdir, "world")) \
        if needs_world else ""
    base = settings.model.path or _sft(settings, workdir, world_dir, run)
    before = _evaluate(settings, workdir, "eval_base", world_dir, base, run)
    pairs_dir = _pairs(settings, workdir, world_dir, base, run)
    aligned = _align(settings, workdir, world_dir, base, pairs_dir, run)
    after = _evaluate(settings, workdir, "eval_aligned", world_dir, aligned, run)
    rows = report_rows(before, after)
    stage_dirs = [os.path.join(workdir, f"align_{name}") for name, _ in settings.align.stages()]
    plot = plot_curves([os.path.join(d, "metrics.jsonl") for d in stage_dirs], os.path.join(workdir, "curves.png"))
    results = {"method": settings.method, "base_model": base, "aligned_model": aligned, "world": world_dir,
               "pairs": pairs_dir, "table": rows, "base": before, "aligned": after, "curves": plot}
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print("\n" + format_table(rows, settings.method))
    print(f"\nresults.json, curves.png: {workdir}")
    return results
