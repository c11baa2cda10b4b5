"""Re-Align's pair builder (`pairs.builder=realign`): segment masks that round-trip, the LLM masker
against a real local HTTP server, the fill cutting, and the builder end to end on a tiny world
with a random LLaVA written by transformers (retrieval, tau, resume, pinned settings, histogram)."""

from __future__ import annotations

import http.server
import json
import shutil
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import build_world_llava

from realign_jax.data.text import COLOR_WORDS, NUMBER_VALUES, SIZE_WORDS
from realign_jax.eval.chair import load_synonyms, mentioned_objects
from realign_jax.main import run
from realign_jax.pairs.answers import RELATION_RE
from realign_jax.pairs.image_index import ImageIndex
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.masking import MASK, LLMMasker, MaskedAnswer, RuleMasker
from realign_jax.pairs.realign import HISTOGRAM_FILE, cut_fill
from realign_jax.synthetic import WorldConfig, generate_world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import realign_pairs

WORLD = {"seed": 11, "num_train_images": 40, "num_eval_images": 4}
RECORDS, SHARD, K = 12, 6, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(**WORLD), out, progress=False)
    return out


@pytest.fixture(scope="module")
def masker(world: Path) -> RuleMasker:
    return RuleMasker.from_file(str(world / "synonyms.txt"))


@pytest.fixture(scope="module")
def checkpoint(world: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random LLaVA written by transformers, with the world's tokenizer (256 ids, <image> last)."""
    return build_world_llava(str(world), str(tmp_path_factory.mktemp("hf_llava")))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers.get("Authorization"), body))  # type: ignore[attr-defined]
        answer = body["messages"][-1]["content"].split("Answer: ", 1)[1]
        reply = self.server.reply(answer)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def chat_reply(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


@pytest.fixture(scope="module")
def llm_server(masker: RuleMasker) -> Iterator[http.server.ThreadingHTTPServer]:
    """An OpenAI-style endpoint on localhost; `server.reply(answer) -> bytes` is set per test
    (default: the rule masker's template), `server.seen` collects (path, auth header, body)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []  # type: ignore[attr-defined]
    server.reply = lambda answer: chat_reply(masker.mask(answer).template)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def base_url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


# -- masking -------------------------------------------------------------------------------------

def test_rule_masker_masks_segments_and_keeps_articles(masker: RuleMasker) -> None:
    text = "This image contains two white blades, a saucer and a red flask. The flask is below the saucer."
    masked = masker.mask(text)
    assert masked.template == ("This image contains [MASK], a [MASK] and a [MASK]. "
                               "The [MASK] is [MASK] the [MASK].")
    assert masked.spans == ("two white blades", "saucer", "red flask", "flask", "below", "saucer")
    assert masker.mask("The hat is blue.").spans == ("hat", "blue")
    assert masker.mask("The cup is to the left of the traffic light.").spans == ("cup", "to the left of",
                                                                                 "traffic light")
    assert masker.mask("Nothing to see here.") is None


def test_rule_masker_on_world_answers_masks_exactly_the_content(world: Path, masker: RuleMasker) -> None:
    """Over every answer of the world (captions and QA): the masks round-trip; the template
    keeps no object, colour, size or relation; each mask hides at least one of them or a count."""
    synonyms = load_synonyms(str(world / "synonyms.txt"))
    records = read_records(str(world / "train" / "sft.jsonl"))
    for record in records:
        masked = masker.mask(record["chosen"])
        if masked is None:
            assert not mentioned_objects(record["chosen"], synonyms, coco_rules=False), record
            continue
        assert masked.original() == record["chosen"]
        parsed = MaskedAnswer.parse(record["chosen"], masked.template)  # may split repeated text otherwise
        assert parsed is not None and parsed.template == masked.template and parsed.original() == record["chosen"]
        kept = masked.template.replace(MASK, " | ")
        assert not mentioned_objects(kept, synonyms, coco_rules=False), masked.template
        assert not {w.strip(".,").lower() for w in kept.split()} & (COLOR_WORDS | SIZE_WORDS), masked.template
        assert not RELATION_RE.search(kept), masked.template
        for span in masked.spans:
            words = {w.lower() for w in span.split()}
            assert (mentioned_objects(span, synonyms, coco_rules=False) or RELATION_RE.search(span)
                    or words & (COLOR_WORDS | SIZE_WORDS | set(NUMBER_VALUES))), (span, record["chosen"])
    assert sum(masker.mask(r["chosen"]) is not None for r in records) > 0.9 * len(records)


def test_parse_accepts_only_a_masking_of_the_original() -> None:
    original = "A red cup and a saucer."
    assert MaskedAnswer.parse(original, "A [MASK] and a [MASK].").spans == ("red cup", "saucer")
    assert MaskedAnswer.parse(original, "A [MASK]and a [MASK].").fixed == ("A ", " and a ", ".")  # spaces out
    assert MaskedAnswer.parse(original, "A [MASK] or a [MASK].") is None  # fixed text changed
    assert MaskedAnswer.parse(original, "A red cup and a saucer.") is None  # nothing masked
    assert MaskedAnswer.parse(original, "[MASK]A red cup and a saucer.") is None  # a mask hiding nothing
    assert MaskedAnswer.parse(original, "A [MASK].") == MaskedAnswer(("A ", "."), ("red cup and a saucer",))


def test_cut_fill_stops_where_the_template_goes_on() -> None:
    assert cut_fill("cup is below the plate.", " is ", "flask") == "cup"
    assert cut_fill("to the left of the plate", " the ", "below") == "to the left of"  # not "to"
    assert cut_fill("small green ball and a cup, a", " and a ", "traffic light") == "small green ball"
    assert cut_fill("green ball and a pink", ".", "traffic light") == "green ball"  # the model kept listing
    assert cut_fill("one two three four five six", ".", "cup") == "one two three four"  # span words + slack
    assert cut_fill("a, cup", ", a ", "cup") == ""  # an empty fill fails the candidate
    assert cut_fill("", ".", "cup") == ""


def test_llm_masker_accepts_a_masking_and_refuses_a_rewrite(llm_server, masker: RuleMasker,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALIGN_TEST_KEY", "sekrit")
    config = realign_pairs.get_config().pairs.llm
    config.base_url, config.model, config.api_key_env = base_url(llm_server), "masker-1", "REALIGN_TEST_KEY"
    llm = LLMMasker.from_config(config)
    good = {"id": "r1", "question": "Describe the image.", "chosen": "A red cup and a saucer."}
    bad = {"id": "r2", "question": "Describe the image.", "chosen": "The hat is blue."}
    llm_server.reply = lambda answer: chat_reply(
        "The hat is [MASK] green." if answer == bad["chosen"] else masker.mask(answer).template)
    assert llm.mask_all([good, bad]) == [masker.mask(good["chosen"]), None]
    path, auth, body = llm_server.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sekrit" and body["model"] == "masker-1"

    llm_server.reply = lambda answer: b"<html>busy</html>"
    with pytest.raises(ValueError, match="record 'r1'.*not JSON"):
        llm.mask(good)
    llm_server.reply = lambda answer: json.dumps({"error": "overloaded"}).encode()
    with pytest.raises(ValueError, match="record 'r1'.*without choices"):
        llm.mask(good)
    monkeypatch.delenv("REALIGN_TEST_KEY")
    with pytest.raises(ValueError, match="pairs.llm.api_key_env='REALIGN_TEST_KEY'"):
        LLMMasker.from_config(config)


# -- the builder ---------------------------------------------------------------------------------

def config_for(world: Path, checkpoint: str, **pairs: Any):
    config = realign_pairs.get_config()
    config.world.dir = str(world)
    config.world.seed, config.world.num_train_images, config.world.num_eval_images = (
        WORLD["seed"], WORLD["num_train_images"], WORLD["num_eval_images"])
    config.model.path = checkpoint
    config.pairs.update({"k": K, "batch_size": 8, "max_fill_tokens": 8, "max_records": RECORDS,
                         "shard_size": SHARD, "ceiling": 0.9999, **pairs})
    return config


def read_pairs(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("pairs-*.jsonl")) for r in read_records(str(path))]


def counts_of(folder: Path) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in folder.glob("pairs-*.jsonl.counts.json"):
        for key, value in json.loads(path.read_text()).items():
            total[key] = total.get(key, 0) + value
    return total


def tried(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("tried_at_"))


@pytest.fixture(scope="module")
def accepting(world: Path, checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tau = 1.01: every refill is accepted, so each record takes its first neighbour the model
    filled every mask of."""
    workdir = tmp_path_factory.mktemp("accepting")
    run(config_for(world, checkpoint, tau=1.01), str(workdir))
    return workdir / "pairs"


def test_model_path_is_required(world: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.path is empty"):
        run(config_for(world, ""), str(tmp_path))


def test_rejected_image_is_a_retrieved_neighbour(accepting: Path) -> None:
    pairs = read_pairs(accepting)
    assert pairs
    index = ImageIndex.load(str(accepting / "index"))
    for row in pairs:
        neighbours = index.neighbours(row["image"], K, 0.9999)
        rank = row["provenance"]["neighbour_rank"]
        assert row["rejected_image"] != row["image"]
        assert row["rejected_image"] == neighbours[rank - 1].key
        assert row["provenance"]["neighbour_similarity"] == pytest.approx(neighbours[rank - 1].similarity)
        assert os.path.isfile(accepting / row["image"]) and os.path.isfile(accepting / row["rejected_image"])


def test_tau_above_one_accepts_the_first_filled_neighbour(accepting: Path, masker: RuleMasker) -> None:
    counts = counts_of(accepting)
    pairs = read_pairs(accepting)
    assert counts["kept"] == len(pairs) > 0
    for t in range(1, K + 1):
        assert counts.get(f"accepted_at_{t}", 0) == counts.get(f"tried_at_{t}", 0)
    assert counts["kept"] + counts.get("dropped_all_neighbours_similar", 0) == RECORDS
    for row in pairs:
        masked = masker.mask(row["chosen"])
        assert row["provenance"]["masked"] == masked.template and row["provenance"]["masker"] == "rules"
        assert MaskedAnswer.parse(row["rejected"], masked.template) is not None  # fixed text verbatim


def test_histogram_counts_every_scored_refill(accepting: Path) -> None:
    histogram = json.loads((accepting / HISTOGRAM_FILE).read_text())
    counts = counts_of(accepting)
    assert len(histogram["edges"]) == len(histogram["tried"]) + 1
    assert sum(histogram["tried"]) == tried(counts)
    assert sum(histogram["accepted"]) == counts["kept"]


def test_resumes_one_shard_identically_and_pins_settings(accepting: Path, world: Path, checkpoint: str) -> None:
    first = read_pairs(accepting)
    shards = sorted(accepting.glob("pairs-*.jsonl"))
    assert len(shards) == RECORDS // SHARD
    shards[1].unlink()
    workdir = str(accepting.parent)
    run(config_for(world, checkpoint, tau=1.01), workdir)
    assert read_pairs(accepting) == first
    assert len(json.loads((accepting / HISTOGRAM_FILE).read_text())["tried"]) == 20
    with pytest.raises(ValueError, match=r"other settings \(\['tau'\] differ\)"):
        run(config_for(world, checkpoint, tau=0.5), workdir)


def test_tau_below_minus_one_drops_all_with_the_llm_masker(world: Path, checkpoint: str, llm_server,
                                                            masker: RuleMasker, tmp_path: Path) -> None:
    """Every record tries all k neighbours and is dropped; one record the LLM masks badly is
    counted apart; the LLM path runs end to end."""
    records = read_records(str(world / "train" / "captions.jsonl"))[:RECORDS]
    spoiled = records[4]["chosen"]
    llm_server.reply = lambda answer: chat_reply(  # a rewrite, not a masking
        "[MASK] something else." if answer == spoiled else masker.mask(answer).template)
    config = config_for(world, checkpoint, tau=-1.01, masker="llm")
    config.pairs.llm.base_url, config.pairs.llm.model = base_url(llm_server), "masker-1"
    run(config, str(tmp_path))
    counts = counts_of(tmp_path / "pairs")
    assert read_pairs(tmp_path / "pairs") == []
    assert counts["dropped_bad_llm_mask"] == 1
    assert counts["dropped_all_neighbours_similar"] == RECORDS - 1
    assert tried(counts) + counts.get("empty_fills", 0) == (RECORDS - 1) * K
    histogram = json.loads((tmp_path / "pairs" / HISTOGRAM_FILE).read_text())
    assert sum(histogram["tried"]) == tried(counts) and sum(histogram["accepted"]) == 0


def own_data(world: Path, root: Path, count: int) -> Path:
    """The world's first captions as a user's data: a JSONL in one folder, images under
    another (`data.image_root`), a synonym table of their own."""
    (root / "photos").mkdir(parents=True)
    records = read_records(str(world / "train" / "captions.jsonl"))[:count]
    lines = []
    for record in records:
        name = os.path.basename(record["image"])
        shutil.copy(world / "train" / record["image"], root / "photos" / name)
        lines.append(json.dumps({"id": record["id"], "image": f"photos/{name}", "question": record["question"],
                                 "chosen": record["chosen"]}))
    (root / "meta").mkdir()
    (root / "meta" / "sft.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(world / "synonyms.txt", root / "meta" / "objects.txt")
    return root


def test_runs_on_your_own_jsonl_and_image_folder(world: Path, checkpoint: str, tmp_path: Path) -> None:
    data = own_data(world, tmp_path / "data", 10)
    config = config_for(world, checkpoint, tau=1.01, max_records=0)
    config.data.path = str(data / "meta" / "sft.jsonl")
    config.data.image_root = str(data)
    config.pairs.synonyms = str(data / "meta" / "objects.txt")
    run(config, str(tmp_path / "work"))
    pairs_dir = tmp_path / "work" / "pairs"
    pairs = read_pairs(pairs_dir)
    assert len(pairs) >= 8 and not (tmp_path / "work" / "world").exists()
    for row in pairs:
        assert os.path.samefile(pairs_dir / row["image"], data / "photos" / os.path.basename(row["image"]))
        assert os.path.isfile(pairs_dir / row["rejected_image"]) and row["rejected_image"] != row["image"]
