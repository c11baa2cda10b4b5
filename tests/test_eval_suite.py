"""mode=eval end to end: the Answerer's batching, the world's AMBER-style probes, and the
benchmarks on a checkpoint written by transformers and on a base model trained on the world."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import build_world_llava

from realign_jax.data.chat import ChatCodec
from realign_jax.eval import pope
from realign_jax.models.answering import Answerer
from realign_jax.synthetic import benchmarks
from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.truth import ImageTruth
from realign_jax.synthetic.world import generate_world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=3, num_train_images=120, num_eval_images=12), out, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def transformers_checkpoint(world, tmp_path_factory):
    """A random LLaVA written by transformers, with the world's tokenizer (256 ids, <image> last)."""
    return build_world_llava(str(world), str(tmp_path_factory.mktemp("hf_llava")))


def test_batched_answers_equal_answers_one_at_a_time(world, transformers_checkpoint):
    """Left padding and batch filling change nothing: prompts of different lengths answered in
    one batch give the answers each gets alone."""
    questions = benchmarks.amber_questions(world, seed=1)[:5]
    items = [(q["image"], q["text"]) for q in questions]
    together = Answerer.load(transformers_checkpoint, ChatCodec.load, batch_size=8).answer(items, max_new_tokens=6)
    alone = Answerer.load(transformers_checkpoint, ChatCodec.load, batch_size=1)
    assert together == [alone.answer([item], max_new_tokens=6)[0] for item in items]
    assert len({len(q["text"]) for q in questions}) > 1  # the prompts really differ in length


def test_amber_probes_are_labelled_by_the_ground_truth(world):
    truths = {os.path.join(world, "eval", t.image): t for t in benchmarks.load_truth(world)}
    questions = benchmarks.amber_questions(world, seed=0)
    assert {q["type"] for q in questions} == {"existence", "attribute", "relation", "count"}
    assert {q["label"] for q in questions} == {"yes", "no"}
    for q in questions:
        truth: ImageTruth = truths[q["image"]]
        if q["type"] == "existence":
            name = q["text"].removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)[1]
            assert (name in truth.names) == (q["label"] == "yes"), q
        if q["type"] == "attribute":
            words = q["text"].removeprefix("Is the ").removesuffix("?").split(" ")
            obj = next(o for o in truth.objects if o.name == " ".join(words[:-1]))
            assert (obj.color == words[-1]) == (q["label"] == "yes"), q


def test_eval_mode_on_a_transformers_checkpoint(world, transformers_checkpoint, tmp_path, capsys):
    import eval_world

    from realign_jax.main import run

    config = eval_world.get_config()
    config.model.path, config.eval.world, config.eval.max_images = transformers_checkpoint, world, 4
    config.eval.caption_tokens = 12
    run(config, str(tmp_path))
    out = capsys.readouterr().out
    for line in ("POPE random", "POPE popular", "POPE adversarial", "CHAIR ", "AMBER overall", "AMBER count"):
        assert line in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    adversarial = [json.loads(line) for line in open(tmp_path / "eval" / "pope_adversarial.jsonl")]
    expected = sum(2 * min(3, len(i["objects"])) for i in benchmarks.object_lists(world)[:4])
    assert len(adversarial) == expected and all(r["prediction"] in ("yes", "no") for r in adversarial)
    assert results["pope"]["adversarial"] == pope.pope_metrics([r["answer"] for r in adversarial],
                                                               [r["label"] for r in adversarial])
    assert 0 <= results["chair"]["chair_i"] <= 1 and "amber" in results


def test_eval_mode_reads_the_published_pope_file(world, transformers_checkpoint, tmp_path):
    import eval_world

    from realign_jax.main import run

    images = sorted(os.listdir(os.path.join(world, "eval", "images")))[:2]
    lines = [{"question_id": i, "image": name, "text": "Is there a cup in the image?", "label": label}
             for i, (name, label) in enumerate(zip(images * 2, ["yes", "no", "no", "yes"]))]
    (tmp_path / "coco_pope_random.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = eval_world.get_config()
    config.model.path, config.eval.benchmarks = transformers_checkpoint, "pope"
    config.eval.pope_file = str(tmp_path / "coco_pope_random.json")
    config.eval.image_folder = os.path.join(world, "eval", "images")
    results = run_and_read(run, config, tmp_path)
    assert list(results["pope"]) == ["coco_pope_random"]


def run_and_read(run, config, tmp_path):
    run(config, str(tmp_path / "work"))
    return json.loads((tmp_path / "work" / "eval" / "results.json").read_text())


def test_eval_config_errors_name_the_key(tmp_path):
    import eval_world

    from realign_jax.eval.suite import evaluate

    config = eval_world.get_config()
    config.eval.benchmarks = "pope,mmhal"
    with pytest.raises(ValueError, match="eval.benchmarks"):
        evaluate(config, str(tmp_path))
    config.eval.benchmarks = "pope"
    with pytest.raises(ValueError, match="model.path"):
        evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_world_base_model_trains_and_evaluates(tmp_path):
    """configs/sft_world.py on a small world for a few steps, then configs/eval_world.py on
    its export: the whole embedded default path runs."""
    import eval_world
    import sft_world

    from realign_jax.main import run

    def stage(name: str, model_path: str = ""):
        config = sft_world.get_config(name)
        config.world.num_train_images, config.world.num_eval_images = 60, 6
        config.world.dir = str(tmp_path / "world")
        config.train.steps, config.train.log_every, config.train.checkpoint_every = 6, 3, 0
        config.model.path = model_path
        return config

    run(stage("captions"), str(tmp_path / "sft1"))
    with pytest.raises(ValueError, match="model.path"):
        run(stage("grounding"), str(tmp_path / "sft"))
    run(stage("grounding", str(tmp_path / "sft1" / "export")), str(tmp_path / "sft"))
    export = tmp_path / "sft" / "export"
    assert (export / "tokenizer_config.json").is_file() and (export / "config.json").is_file()
    config = eval_world.get_config()
    config.model.path, config.eval.world = str(export), str(tmp_path / "world")
    config.eval.max_images, config.eval.caption_tokens = 3, 8
    results = run_and_read(run, config, tmp_path)
    assert set(results["pope"]) == set(pope.SPLITS)
