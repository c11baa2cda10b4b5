"""`mode=eval`: run the chosen hallucination benchmarks on one checkpoint and report.

Each benchmark is a registered unit (`BENCHMARKS`): it builds its questions or prompts from
the ground truth (the synthetic world's eval split, or the real benchmark's files), asks the
`Answerer`, writes every answer as JSON lines under `<workdir>/eval/` and returns its
scores. `results.json` collects all scores; a table is printed.

The world's ground truth comes in as `WorldBenchmarks` (synthetic/benchmarks.py, which main.py
passes): eval/ does not import synthetic/ (docs/design.md, "Rooms and who may import whom").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from realign_jax.data.chat import ChatCodec
from realign_jax.eval import amber, chair, pope
from realign_jax.models.answering import Answerer
from realign_jax.settings.runs import EvalRun, load
from realign_jax.settings.sections import EVAL_BENCHMARKS


def _write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class WorldBenchmarks(Protocol):
    """A synthetic world's ground truth in the forms the evaluators take (synthetic/benchmarks.py)."""

    def object_lists(self, world: str) -> list[dict[str, Any]]: ...

    def amber_questions(self, world: str, *, seed: int = 0) -> list[dict[str, Any]]: ...


def _world(world: WorldBenchmarks | None) -> WorldBenchmarks:
    if world is None:
        raise ValueError("eval.world needs the world's benchmarks: run the evaluation through realign_jax.main "
                         "(mode=eval), which passes them in")
    return world


def _world_images(section: Any, world: WorldBenchmarks | None) -> list[dict[str, Any]]:
    """The world's eval images with their object lists, the first `eval.max_images` (0 = all)."""
    return _world(world).object_lists(section.world)[: section.max_images or None]


def _image_lines(located: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Each image of a POPE file -> the first line asking about it: where answering meets it first."""
    lines: dict[str, str] = {}
    for where, record in located:
        lines.setdefault(record["image"], where)
    return lines


def _answer_pope(answerer: Answerer, questions: list[dict[str, Any]], section: Any, desc: str,
                 lines: dict[str, str]) -> list[str]:
    """The answers; an image that fails to decode is named by its POPE file line (`lines`).

    data/images.py's `load_image` begins each error with the image's path, which finds the line
    (the longest path that matches, should one image's path begin another's).
    """
    try:
        return answerer.answer([(q["image"], q["text"]) for q in questions], max_new_tokens=section.answer_tokens,
                               desc=desc)
    except ValueError as error:
        image = max((i for i in lines if str(error).startswith(f"{i}: ")), key=len, default=None)
        if image is None:
            raise
        raise ValueError(f"{lines[image]}: field 'image': {error}") from error


def run_pope(answerer: Answerer, section: Any, out: str, world: WorldBenchmarks | None = None) -> dict[str, Any]:
    """POPE per split: built from the world's object lists, or read from the real files."""
    lines: dict[str, str] = {}
    if section.pope_file:
        name = os.path.splitext(os.path.basename(section.pope_file))[0]
        located = pope.read_pope_file(section.pope_file, section.image_folder)
        sets, lines = {name: [record for _, record in located]}, _image_lines(located)
    else:
        images = _world_images(section, world)
        sets = {split: pope.build_questions(images, split, seed=section.seed, per_image=section.pope_per_image)
                for split in pope.SPLITS}
    scores = {}
    for name, questions in sets.items():
        answers = _answer_pope(answerer, questions, section, f"pope/{name}", lines)
        _write_jsonl(os.path.join(out, f"pope_{name}.jsonl"),
                     [q | {"answer": a, "prediction": pope.parse_answer(a)} for q, a in zip(questions, answers)])
        scores[name] = pope.pope_metrics(answers, [q["label"] for q in questions])
    return scores


def _resolve(value: str, on_files: bool, official: str, corrected: str) -> str:
    """An `auto` setting: the official reading on the benchmark's own files, the corrected one on the world."""
    if value != "auto":
        return value
    return official if on_files else corrected


def run_chair(answerer: Answerer, section: Any, out: str, world: WorldBenchmarks | None = None) -> dict[str, Any]:
    """CHAIR on captions of the world's eval images, or of COCO images with their instances
    (and, given `eval.coco_captions`, the objects of their reference captions)."""
    protocol = _resolve(section.chair_protocol, bool(section.coco_instances), "official", "corrected")
    if section.coco_instances:
        synonyms = chair.read_synonyms(section.synonyms, protocol) if section.synonyms else {}
        truth = chair.coco_ground_truth(section.coco_instances, captions_json_path=section.coco_captions or None,
                                        synonyms=synonyms or None, protocol=protocol)
        images = [{"image": os.path.join(section.image_folder, name), "objects": objects}
                  for name, objects in truth.items()][: section.max_images or None]
    else:
        synonyms = chair.read_synonyms(os.path.join(section.world, "synonyms.txt"), protocol)
        images = _world_images(section, world)
    captions = answerer.answer([(i["image"], section.caption_prompt) for i in images],
                               max_new_tokens=section.caption_tokens, desc="chair")
    scores = chair.chair([{"image": i["image"], "text": c} for i, c in zip(images, captions)],
                         {i["image"]: i["objects"] for i in images}, synonyms, protocol=protocol)
    _write_jsonl(os.path.join(out, "chair.jsonl"), [{"image": i["image"], "text": c} | details for i, c, details
                                                    in zip(images, captions, scores.pop("captions"))])
    return scores | {"protocol": protocol}


def _first_images(questions: list[dict[str, Any]], max_images: int) -> list[dict[str, Any]]:
    """The questions about the first `max_images` images in name order (0 = all)."""
    if not max_images:
        return questions
    kept = set(sorted({q["image"] for q in questions})[:max_images])
    return [q for q in questions if q["image"] in kept]


def _world_amber(answerer: Answerer, section: Any, out: str, world: WorldBenchmarks | None) -> dict[str, Any]:
    """The world's AMBER-style probes by type."""
    questions = _first_images(_world(world).amber_questions(section.world, seed=section.seed), section.max_images)
    answers = answerer.answer([(q["image"], q["text"]) for q in questions], max_new_tokens=section.answer_tokens,
                              desc="amber")
    _write_jsonl(os.path.join(out, "amber.jsonl"), [q | {"answer": a} for q, a in zip(questions, answers)])
    reading = _amber_reading(section, on_files=False)
    return amber.amber_metrics(answers, [q["label"] for q in questions], [q["type"] for q in questions],
                               **reading) | reading


def _amber_reading(section: Any, on_files: bool) -> dict[str, str]:
    return {"parsing": _resolve(section.amber_parsing, on_files, "strict", "pope"),
            "pooling": section.amber_attribute_pooling,
            "scores": _resolve(section.amber_scores, on_files, "official", "exact")}


def _amber_queries(section: Any, files: amber.AmberFiles) -> list[dict[str, Any]]:
    """The queries with their images resolved (against eval.image_folder, else the AMBER folder)
    and their annotations, the first `eval.max_images` images (0 = all)."""
    folder = section.image_folder or section.amber_dir
    return _first_images([q | {"image": os.path.join(folder, q["image"]), "annotation": files.annotation(q["id"])}
                          for q in files.queries], section.max_images)


def _amber_files(answerer: Answerer, section: Any, out: str) -> dict[str, Any]:
    """AMBER's own queries: descriptions scored by its generative part, yes/no by its discriminative
    part. Also writes the responses as the official inference.py reads them (amber_responses.json)."""
    files = amber.read_amber_dir(section.amber_dir)
    queries = _amber_queries(section, files)
    reading = _amber_reading(section, on_files=True)
    generative = [q for q in queries if q["annotation"]["type"] == "generative"]
    asked = [q for q in queries if q["annotation"]["type"] != "generative"]
    for kind, part, tokens in (("generative", generative, section.caption_tokens),
                               ("discriminative", asked, section.answer_tokens)):
        responses = answerer.answer([(q["image"], q["query"]) for q in part], max_new_tokens=tokens,
                                    desc=f"amber/{kind}") if part else []
        for q, response in zip(part, responses):
            q["response"] = response
    _write_jsonl(os.path.join(out, "amber.jsonl"), [{k: v for k, v in q.items() if k != "annotation"} | {
        "type": q["annotation"]["type"]} for q in queries])
    with open(os.path.join(out, "amber_responses.json"), "w") as f:
        json.dump([{"id": q["id"], "response": q["response"]} for q in queries], f)
    results: dict[str, Any] = dict(reading)
    if generative:
        results["generative"] = amber.amber_generative(
            [q["response"] for q in generative], [q["annotation"] for q in generative], files.association,
            files.safe_words, scores=reading["scores"], starts=files.starts)
        _write_jsonl(os.path.join(out, "amber_generative.jsonl"), results["generative"].pop("responses"))
    if asked:
        results |= amber.amber_metrics([q["response"] for q in asked], [q["annotation"]["truth"] for q in asked],
                                       [q["annotation"]["type"] for q in asked], starts=files.starts, **reading)
    return results


def run_amber(answerer: Answerer, section: Any, out: str, world: WorldBenchmarks | None = None) -> dict[str, Any]:
    """AMBER on its own files (eval.amber_dir), or AMBER-style yes/no probes by type on the world,
    with "No" as the positive class."""
    if section.amber_dir:
        return _amber_files(answerer, section, out)
    if not section.world:
        raise ValueError("eval.benchmarks=amber needs eval.amber_dir (AMBER's data folder) or eval.world")
    return _world_amber(answerer, section, out, world)


BENCHMARKS: dict[str, Callable[[Answerer, Any, str, WorldBenchmarks | None], dict[str, Any]]] = {
    "pope": run_pope, "chair": run_chair, "amber": run_amber}
assert sorted(BENCHMARKS) == sorted(EVAL_BENCHMARKS), "settings/sections.py EVAL_BENCHMARKS names what runs"


def table(results: dict[str, Any]) -> list[str]:
    """One line per benchmark split with its headline numbers."""
    lines = []
    for name, split_scores in results.get("pope", {}).items():
        s = split_scores
        lines.append(f"POPE {name:<12} acc {s['accuracy']:.3f}  prec {s['precision']:.3f}  rec {s['recall']:.3f}  "
                     f"F1 {s['f1']:.3f}  yes-ratio {s['yes_ratio']:.3f}")
    if "chair" in results:
        s = results["chair"]
        lines.append(f"CHAIR              CHAIR_s {s['chair_s']:.3f}  CHAIR_i {s['chair_i']:.3f}  "
                     f"recall {s['recall']:.3f}  mean length {s['mean_length']:.1f}")
    amber_scores = results.get("amber", {})
    if "generative" in amber_scores:
        s = amber_scores["generative"]
        lines.append(f"AMBER generative   CHAIR {s['chair']:.3f}  Cover {s['cover']:.3f}  Hal {s['hal']:.3f}  "
                     f"Cog {s['cog']:.3f}")
    if "overall" in amber_scores:
        for name, s in [("overall", amber_scores["overall"]), *amber_scores["by_type"].items()]:
            lines.append(f"AMBER {name:<12} acc {s['accuracy']:.3f}  prec {s['precision']:.3f}  rec {s['recall']:.3f}"
                         f"  F1 {s['f1']:.3f}  (No positive)")
    return lines


def evaluate(config: EvalRun | Any, workdir: str, world: WorldBenchmarks | None = None) -> dict[str, Any]:
    """Run `eval.benchmarks` on `model.path` (a ConfigDict is loaded and checked first); `world`
    reads `eval.world`'s ground truth (main.py passes synthetic/benchmarks.py)."""
    config = load(config)
    section = config.eval
    names = section.names
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    answerer = Answerer.load(config.model.path, ChatCodec.load, dtype=config.model.dtype,
                             param_dtype=config.model.param_dtype, batch_size=section.batch_size)
    began = time.perf_counter()
    results: dict[str, Any] = {"model": config.model.path, "world": section.world or None}
    for name in names:
        results[name] = BENCHMARKS[name](answerer, section, out, world)
    results["seconds"] = round(time.perf_counter() - began, 1)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    for line in table(results):
        print(line)
    print(f"answers and results.json: {out} ({results['seconds']} s)")
    return results
