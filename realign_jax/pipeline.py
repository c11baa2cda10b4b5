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

import copy
import glob
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from realign_jax.eval.config import eval_config
from realign_jax.pairs.registry import BUILDERS
from realign_jax.train.train_configs import aligning_config, world_sft_config

# method -> (pair builder, a key of pairs/registry.BUILDERS; the align stages' losses in order:
# POVID trains twice)
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rdpo": ("realign", ("rdpo",)),
    "dpo": ("realign", ("dpo",)),
    "mdpo": ("realign", ("mdpo",)),
    "povid": ("povid", ("dpo", "povid")),
    "bdhs": ("bdhs", ("dpo",)),
}
SFT_STAGES = ("captions", "grounding")
ALIGN_SECTIONS = ("loss", "lora", "optim", "train", "mesh", "reference", "seed")  # seed: LoRA init, data order
CHAIR_REPORTED = (("CHAIR_s", "chair_s"), ("CHAIR_i", "chair_i"), ("CHAIR recall", "recall"))
StageRunner = Callable[[Any, str], None]  # runs one stage's config in a work dir, as the command line does
CURVES = ("loss", "rewards/margins", "visual/rewards/margins", "noisy/rewards/margins")


def pipeline_config(method: str) -> ml_collections.ConfigDict:
    """The pipeline's keys: the world, the model to align (empty = SFT the world's), the
    records (empty = the world's captions), and one section per stage."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {sorted(METHODS)}")
    builder, losses = METHODS[method]
    sft = world_sft_config()
    config = ml_collections.ConfigDict()
    config.mode = "pipeline"
    config.method = method
    config.world = copy.deepcopy(sft.world)
    del config.world["records"]
    config.model = ml_collections.ConfigDict()
    config.model.path = ""  # empty = SFT the world's base model here; else the checkpoint to align
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"
    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # records with `chosen` to build pairs from; empty = the world's train/<data.records>.jsonl
    config.data.records = "captions"  # which of the world's train files the pairs come from
    config.data.image_root = ""
    config.sft = ml_collections.ConfigDict({f"{stage}_steps": sft_steps(stage) for stage in SFT_STAGES})
    config.pairs = copy.deepcopy(BUILDERS[builder].config().pairs)
    if "max_records" in config.pairs:  # the model-based builders: pairs from the first 1000 records
        config.pairs.max_records = 1000
    config.align = ml_collections.ConfigDict()
    for index, loss in enumerate(losses):
        stage = _align_sections(aligning_config(loss))
        stage.optim.lr = 2e-4  # chosen on the world for rDPO over 1e-4 and 5e-4 (docs/benchmarks.md, "Choosing the align recipe")
        if loss == "povid":  # the noisy response is the policy's own argmax under the noised image
            stage.loss.noisy_scoring = "argmax"
        if loss == "mdpo":  # the conditional term's image: a random crop of the image (mDPO's corruption)
            stage.loss.alt_image = "crop"
        config.align[f"stage{index + 1}"] = stage
    config.eval = copy.deepcopy(eval_config().eval)
    return config


def sft_steps(stage: str) -> int:
    return int(world_sft_config(stage).train.steps)


def _align_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({k: copy.deepcopy(config[k]) for k in ALIGN_SECTIONS})


def _world_sections(config: Any, world_dir: str) -> ml_collections.ConfigDict:
    world = copy.deepcopy(config.world)
    world.dir = world_dir
    return world


def _sft(config: Any, workdir: str, world_dir: str, run: StageRunner) -> str:
    """The world's base model: the captions stage, then the grounding stage from its export."""
    model_path = ""
    for stage in SFT_STAGES:
        stage_dir = os.path.join(workdir, f"sft_{stage}")
        export = os.path.join(stage_dir, "export")
        if not os.path.exists(os.path.join(export, "config.json")):
            stage_config = world_sft_config(stage)
            stage_config.world.update(_world_sections(config, world_dir))
            stage_config.world.records = stage
            stage_config.train.steps = config.sft[f"{stage}_steps"]
            stage_config.model.path = model_path
            _announce(f"SFT of the world's base model, stage {stage} ({stage_config.train.steps} steps)")
            run(stage_config, stage_dir)
        model_path = export
    return model_path


def _pairs(config: Any, workdir: str, world_dir: str, model_path: str, run: StageRunner) -> str:
    builder, _ = METHODS[config.method]
    pairs_config = BUILDERS[builder].config()
    pairs_config.world.update(_world_sections(config, world_dir))
    pairs_config.world.records = config.data.records
    pairs_config.pairs = copy.deepcopy(config.pairs)
    pairs_config.pairs.output = os.path.join(workdir, "pairs")
    pairs_config.data.path = config.data.path
    pairs_config.data.image_root = config.data.image_root
    if "model" in pairs_config:
        pairs_config.model.update({"path": model_path, "dtype": config.model.dtype,
                                   "param_dtype": config.model.param_dtype})
    _announce(f"{builder} pairs from {config.data.path or 'the world: train/' + config.data.records + '.jsonl'}")
    run(pairs_config, os.path.join(workdir, "pairs_build"))
    output = pairs_config.pairs.output
    if not _has_pairs(output):
        raise ValueError(f"the {builder} builder kept no pairs in {output} (its counts are printed above): nothing "
                         "to align on; a base model that writes nothing, or a filter that drops everything, does this")
    return output


def _has_pairs(folder: str) -> bool:
    for path in glob.glob(os.path.join(folder, "pairs-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            if any(line.strip() for line in f):
                return True
    return False


def _align(config: Any, workdir: str, model_path: str, pairs_dir: str, run: StageRunner) -> str:
    """Each align stage from the previous stage's merged export (POVID's two stages)."""
    for name in sorted(config.align):
        stage_dir = os.path.join(workdir, f"align_{name}")
        export = os.path.join(stage_dir, "export")
        if not os.path.exists(os.path.join(export, "config.json")):
            stage = config.align[name]
            stage_config = aligning_config(stage.loss.name)
            for section in ALIGN_SECTIONS:
                if isinstance(stage_config[section], ml_collections.ConfigDict):
                    stage_config[section].update(copy.deepcopy(stage[section]))
                else:
                    stage_config[section] = stage[section]
            stage_config.model.update({"path": model_path, "dtype": config.model.dtype,
                                       "param_dtype": config.model.param_dtype})
            stage_config.data.path, stage_config.data.seed = pairs_dir, stage.seed
            _announce(f"aligning ({name}: loss {stage.loss.name}, {stage.train.steps} steps)")
            run(stage_config, stage_dir)
        model_path = export
    return model_path


def _evaluate(config: Any, workdir: str, name: str, world_dir: str, model_path: str,
              run: StageRunner) -> dict[str, Any]:
    out = os.path.join(workdir, name)
    results = os.path.join(out, "eval", "results.json")
    if not os.path.exists(results):
        eval_run = eval_config()
        eval_run.eval.update(copy.deepcopy(config.eval))
        if not (eval_run.eval.pope_file or eval_run.eval.coco_instances):
            eval_run.eval.world = eval_run.eval.world or world_dir
        eval_run.model.update({"path": model_path, "dtype": config.model.dtype, "param_dtype": config.model.param_dtype})
        _announce(f"evaluating {name.removeprefix('eval_')} ({model_path})")
        run(eval_run, out)
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


def run_pipeline(config: Any, workdir: str, run: StageRunner) -> dict[str, Any]:
    """All stages (module docstring); `run(config, workdir)` runs one stage's config the way the
    command line does. Returns what results.json holds."""
    if config.method not in METHODS:
        raise ValueError(f"method={config.method!r}: choose one of {sorted(METHODS)}")
    os.makedirs(workdir, exist_ok=True)
    from realign_jax.synthetic.config import WorldConfig
    from realign_jax.synthetic.world import ensure_world

    published_eval = bool(config.eval.pope_file or config.eval.coco_instances)
    needs_world = not (config.model.path and config.data.path and published_eval)
    world_dir = ensure_world(WorldConfig(**{k: v for k, v in config.world.items() if k != "dir"}),
                             config.world.dir or os.path.join(workdir, "world")) if needs_world else ""
    base = config.model.path or _sft(config, workdir, world_dir, run)
    before = _evaluate(config, workdir, "eval_base", world_dir, base, run)
    pairs_dir = _pairs(config, workdir, world_dir, base, run)
    aligned = _align(config, workdir, base, pairs_dir, run)
    after = _evaluate(config, workdir, "eval_aligned", world_dir, aligned, run)
    rows = report_rows(before, after)
    stage_dirs = [os.path.join(workdir, f"align_{name}") for name in sorted(config.align)]
    plot = plot_curves([os.path.join(d, "metrics.jsonl") for d in stage_dirs], os.path.join(workdir, "curves.png"))
    results = {"method": config.method, "base_model": base, "aligned_model": aligned, "world": world_dir,
               "pairs": pairs_dir, "table": rows, "base": before, "aligned": after, "curves": plot}
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print("\n" + format_table(rows, config.method))
    print(f"\nresults.json, curves.png: {workdir}")
    return results
