"""mode=pipeline end to end at a reduced size: world -> SFT -> eval -> Re-Align pairs -> rDPO ->
eval -> report, and a rerun that reuses every stage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from realign_jax.main import run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import povid_llava  # noqa: E402
import rdpo_llava  # noqa: E402
from test_realign_builder import own_data  # noqa: E402


def reduced_world(config):
    config.world.update({"seed": 2, "num_train_images": 24, "num_eval_images": 4})
    config.sft.captions.train.steps, config.sft.grounding.train.steps = 40, 4  # enough to write a few words
    config.eval.update({"benchmarks": "pope,chair", "max_images": 4, "pope_per_image": 1, "batch_size": 8,
                        "caption_tokens": 8})
    return config


def reduced_config():
    config = rdpo_llava.get_config()
    reduced_world(config)
    config.pairs.update({"max_records": 8, "k": 2, "batch_size": 8, "max_fill_tokens": 6, "shard_size": 8,
                         "ceiling": 1.01})
    config.align.stage1.train.update({"steps": 2, "batch_size": 8, "checkpoint_every": 0, "log_every": 1})
    return config


def test_pipeline_runs_every_stage_then_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(reduced_config(), str(tmp_path))
    out = capsys.readouterr().out
    for stage in ("stage captions", "stage grounding", "evaluating base", "realign pairs", "aligning (stage1",
                  "evaluating aligned"):
        assert stage in out, stage
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["metric"] for row in results["table"]] == [
        "POPE random F1", "POPE random yes", "POPE popular F1", "POPE popular yes", "POPE adversarial F1",
        "POPE adversarial yes", "CHAIR_s", "CHAIR_i", "CHAIR recall"]
    base = json.loads((tmp_path / "eval_base" / "eval" / "results.json").read_text())
    assert results["table"][7]["base"] == base["chair"]["chair_i"]
    assert results["aligned_model"] == str(tmp_path / "align_stage1" / "export")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "pairs").glob("pairs-*.jsonl"))
    assert "CHAIR_i" in out and "base" in out

    run(reduced_config(), str(tmp_path))  # every stage's output is there: nothing runs again
    again = capsys.readouterr().out
    assert again.count("== ") == 1 and "(0 of 1 shards built now" in again  # the builder finds its shards done
    assert "CHAIR_i" in again


def test_povid_pipeline_trains_its_two_stages_from_the_same_base(tmp_path: Path) -> None:
    """POVID's second align stage starts from the first's export and adds the noisy term; then
    the same config on a given checkpoint and records (no SFT, no world)."""
    first = reduced_world(povid_llava.get_config())
    first.align.stage1.train.update({"steps": 2, "batch_size": 8, "checkpoint_every": 0, "log_every": 1})
    first.align.stage2.train.update({"steps": 2, "batch_size": 8, "checkpoint_every": 0, "log_every": 1})
    run(first, str(tmp_path / "povid"))
    results = json.loads((tmp_path / "povid" / "results.json").read_text())
    assert results["aligned_model"] == str(tmp_path / "povid" / "align_stage2" / "export")
    metrics = (tmp_path / "povid" / "align_stage2" / "metrics.jsonl").read_text().splitlines()
    stage2 = [json.loads(line) for line in metrics]
    assert "noisy/rewards/margins" in stage2[-1]

    # "Your checkpoint and your data": model.path, records with images in a folder of their own,
    # a published POPE file; no SFT and no world.
    world = Path(results["world"])
    data = own_data(world, tmp_path / "data", 16)
    pope_file = data / "coco_pope_random.json"
    names = sorted(os.listdir(data / "photos"))[:2]
    pope_file.write_text("".join(json.dumps({"question_id": i, "image": name, "text": "Is there a cup in the image?",
                                             "label": label}) + "\n"
                                 for i, (name, label) in enumerate(zip(names * 2, ["yes", "no", "no", "yes"]))))
    mine = povid_llava.get_config()
    mine.model.path = results["base_model"]
    mine.data.path, mine.data.image_root = str(data / "meta" / "sft.jsonl"), str(data)
    mine.pairs.synonyms = str(data / "meta" / "objects.txt")
    mine.eval.update({"benchmarks": "pope", "pope_file": str(pope_file), "image_folder": str(data / "photos"),
                      "batch_size": 8})
    for stage in mine.align.values():
        stage.train.update({"steps": 1, "batch_size": 8, "checkpoint_every": 0})
    run(mine, str(tmp_path / "mine"))
    assert not (tmp_path / "mine" / "sft_captions").exists() and not (tmp_path / "mine" / "world").exists()
    table = json.loads((tmp_path / "mine" / "results.json").read_text())["table"]
    assert [row["metric"] for row in table] == ["POPE coco_pope_random F1", "POPE coco_pope_random yes"]
