"""`mode=build_pairs` with POVID's injection: resumable shards, images that resolve from the
output folder, settings pinned, and rejected captions that hallucinate more than the chosen."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from realign_jax.eval.chair import chair, load_synonyms
from realign_jax.main import run
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.synthetic import WorldConfig, generate_world
from realign_jax.synthetic.benchmarks import object_lists

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import povid_pairs  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=5, num_train_images=120, num_eval_images=10), out, progress=False)
    return out


def config_for(world: Path, shard_size: int = 200):
    config = povid_pairs.get_config()
    config.world.dir = str(world)
    config.world.seed, config.world.num_train_images, config.world.num_eval_images = 5, 120, 10
    config.pairs.shard_size = shard_size
    return config


def read_pairs(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("pairs-*.jsonl")) for r in read_records(str(path))]


def test_builds_resumes_and_pins_settings(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(config_for(world), str(tmp_path))
    out = capsys.readouterr().out
    pairs_dir = tmp_path / "pairs"
    shards = sorted(pairs_dir.glob("pairs-*.jsonl"))
    sources = read_records(str(world / "train" / "sft.jsonl"))
    assert len(shards) == -(-len(sources) // 200) >= 3
    assert f"of {len(shards)} shards built now" in out
    first = read_pairs(pairs_dir)
    assert len(first) > 0.9 * len(sources)
    assert all(r["rejected"] != r["chosen"] and r["provenance"]["edits"] for r in first)
    # Images resolve from the output folder, so the pairs train where they are.
    assert all(os.path.isfile(pairs_dir / r["image"]) for r in first[:50])

    # A killed run loses at most the shard it was writing: the rerun builds only that one,
    # and the same way (deterministic per seed and record id).
    shards[1].unlink()
    (pairs_dir / (shards[1].name + ".partial")).write_text("half a shard")
    run(config_for(world), str(tmp_path))
    assert f"(1 of {len(shards)} shards built now" in capsys.readouterr().out
    assert read_pairs(pairs_dir) == first

    other = config_for(world)
    other.pairs.seed = 1
    with pytest.raises(ValueError, match=r"other settings \(\['seed'\] differ\)"):
        run(other, str(tmp_path))


def test_rejected_captions_hallucinate_and_chosen_do_not(world: Path, tmp_path: Path) -> None:
    config = config_for(world, shard_size=10_000)
    config.pairs.kinds = "object"
    run(config, str(tmp_path))
    captions = [r for r in read_pairs(tmp_path / "pairs") if r["provenance"]["task"] == "caption"]
    truth = {os.path.normpath(t["image"]): t["objects"] for t in object_lists(str(world), "train")}
    synonyms = load_synonyms(str(world / "synonyms.txt"))

    def score(field: str) -> dict:
        rows = [{"image": os.path.normpath(tmp_path / "pairs" / r["image"]), "text": r[field]} for r in captions]
        return chair(rows, truth, synonyms, coco_rules=False)

    chosen, rejected = score("chosen"), score("rejected")
    assert len(captions) == 120
    assert chosen["chair_i"] == 0.0 and chosen["recall"] > 0.9
    assert rejected["chair_s"] > 0.9 and rejected["chair_i"] > 0.2, (rejected["chair_s"], rejected["chair_i"])


def test_every_builder_has_the_same_pair_keys_and_povid_honours_max_records(world: Path, tmp_path: Path) -> None:
    """pairs.max_records is a key of every builder; POVID's pairs are the first N records', its
    injection statistics still learnt from all of them."""
    import bdhs_pairs
    import realign_pairs

    common = set(povid_pairs.get_config().pairs)
    for other in (realign_pairs.get_config(), bdhs_pairs.get_config()):
        assert {"max_records", "shard_size", "seed", "output", "builder"} <= common & set(other.pairs)
    config = config_for(world)
    config.pairs.max_records = 7
    run(config, str(tmp_path))
    first = {r["id"] for r in read_records(str(world / "train" / "sft.jsonl"))[:7]}
    built = [r["id"] for r in read_pairs(tmp_path / "pairs")]
    assert 0 < len(built) <= 7 and set(built) <= first, (built, first)
    config.pairs.max_records = -1
    with pytest.raises(ValueError, match="pairs.max_records=-1 must be >= 0"):
        run(config, str(tmp_path / "other"))


def test_bad_settings_name_the_key(world: Path, tmp_path: Path) -> None:
    config = config_for(world)
    config.pairs.kinds = "objects"
    with pytest.raises(ValueError, match="pairs.kinds='objects'"):
        run(config, str(tmp_path))
    config = config_for(world)
    config.data.path = str(world / "train" / "sft.jsonl")
    config.data.image_root = str(world / "train")
    config.pairs.synonyms = str(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="pairs.synonyms="):
        run(config, str(tmp_path))


def test_llm_injector_through_a_local_endpoint(world: Path, tmp_path: Path) -> None:
    """pairs.injector=llm sends each answer to an OpenAI-compatible server (a real one on
    localhost here); a reply that repeats the answer drops the record, counted."""
    import http.server
    import json
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = body["messages"][-1]["content"].split("Answer: ", 1)[1]
            reply = answer if answer.startswith("No") else answer.rstrip(".") + " and a purple dragon."
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps({"choices": [{"message": {"content": reply}}]}).encode())

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = config_for(world)
        config.pairs.injector = "llm"
        config.pairs.llm.base_url, config.pairs.llm.model = f"http://127.0.0.1:{server.server_address[1]}/v1", "m"
        run(config, str(tmp_path))
    finally:
        server.shutdown()
    rows = read_pairs(tmp_path / "pairs")
    sources = read_records(str(world / "train" / "sft.jsonl"))
    refused = sum(r["chosen"].startswith("No") for r in sources)
    assert refused > 0 and len(rows) == len(sources) - refused
    assert all(r["rejected"].endswith("and a purple dragon.") and r["provenance"]["builder"] == "povid_llm" for r in rows)
    config.pairs.llm.base_url = "http://127.0.0.1:9/v1"  # nothing listens there
    with pytest.raises(ValueError, match="injection LLM at http://127.0.0.1:9/v1/chat/completions failed"):
        run(config, str(tmp_path / "unreachable"))


def test_one_builder_registry_serves_build_pairs_and_the_pipeline():
    """settings/sections.PAIRS_SECTIONS is the one list: each builder's config names it, its
    function loads (pairs/registry.py), the pipeline's methods all name one, and an unknown
    builder is refused with the list."""
    import common

    from realign_jax.pairs.registry import builder
    from realign_jax.settings.runs import load
    from realign_jax.settings.sections import PAIRS_SECTIONS

    assert set(PAIRS_SECTIONS) == {"povid", "realign", "bdhs"}
    for name, section in PAIRS_SECTIONS.items():
        config = common.to_config(common.pairs_run(name))
        assert config.pairs.builder == name and ("model" in config) == section.needs_model
        assert callable(builder(name))
    assert set(common.METHODS.values()) == set(PAIRS_SECTIONS)
    config = povid_pairs.get_config()
    config.pairs.builder = "nope"
    with pytest.raises(ValueError, match=r"pairs.builder='nope': choose one of \('povid', 'realign', 'bdhs'\)"):
        load(config)
