"""Online DPO's annotators (realign_jax/pairs/annotators.py): the world's ground truth scores
answers as the project's CHAIR reads them, and the LLM judge asks a real HTTP server once per
answer and reads its score."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from realign_jax.data.text import load_synonyms
from realign_jax.eval import chair
from realign_jax.pairs.annotators import JUDGE_SYSTEM, WorldAnnotator, make_annotator
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.llm import ChatEndpoint
from realign_jax.synthetic.benchmarks import object_lists
from realign_jax.synthetic.vocabulary import CATEGORIES

MODEL = "judge-model"


@pytest.fixture(scope="module")
def annotator(small_world: Path) -> WorldAnnotator:
    return WorldAnnotator(str(small_world), str(small_world / "train"))


def _captions(small_world: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(str(small_world / "train" / "sft.jsonl")) if r["provenance"]["task"] == "caption"]


def _truth(small_world: Path, record: dict[str, Any]) -> list[str]:
    """The record's objects as the CHAIR evaluation gets them (synthetic/benchmarks.py)."""
    by_image = {i["image"]: i["objects"] for i in object_lists(str(small_world), "train")}
    return by_image[str(small_world / "train" / record["image"])]


def _absent(truth: list[str]) -> list[str]:
    return [c.name for c in CATEGORIES if c.name not in truth]


def test_true_objects_beat_an_added_hallucination_which_beats_absent_objects(small_world: Path,
                                                                             annotator: WorldAnnotator) -> None:
    record = _captions(small_world)[0]
    truth, absent = _truth(small_world, record), _absent(_truth(small_world, record))
    exact = "The image shows " + ", ".join(f"a {name}" for name in truth) + "."
    answers = [exact, exact + f" There is also a {absent[0]}.", f"A {absent[0]} and a {absent[1]}."]
    scores = annotator.scores(record, answers)
    assert scores[0] == 1.0 and scores[2] == -1.0
    assert scores[0] > scores[1] > scores[2]


def test_reward_by_hand_with_synonyms_plurals_and_repeats(small_world: Path, annotator: WorldAnnotator) -> None:
    record = _captions(small_world)[0]
    truth = _truth(small_world, record)
    table = load_synonyms(str(small_world / "synonyms.txt"))  # canonical -> [its plural, synonym, its plural, ...]
    absent = _absent(truth)[0]
    answer = f"A {truth[0]}, two more {table[truth[0]][0]}? No: {table[truth[1]][-1]}, and a {absent}."
    # mentions: truth[0] twice, truth[1], absent -> recall 2/len(truth), hallucinated 1 of 4 mentions
    assert annotator.scores(record, [answer]) == [pytest.approx(2 / len(truth) - 1 / 4)]


def test_reward_is_chairs_recall_minus_chair_i_on_the_worlds_captions(small_world: Path,
                                                                      annotator: WorldAnnotator) -> None:
    """The same reading as mode=eval's CHAIR on the world (protocol corrected, COCO rules on)."""
    synonyms = chair.read_synonyms(str(small_world / "synonyms.txt"), "corrected")
    for record in _captions(small_world):
        truth = _truth(small_world, record)
        for text in (record["chosen"], f"{record['chosen']} A {_absent(truth)[0]} too, and a {truth[0]}."):
            scored = chair.chair([{"image": "x", "text": text}], {"x": truth}, synonyms, protocol="corrected")
            assert annotator.scores(record, [text]) == [pytest.approx(scored["recall"] - scored["chair_i"])]


def test_images_are_found_by_absolute_path_and_under_any_split(small_world: Path, annotator: WorldAnnotator) -> None:
    record = _captions(small_world)[0]
    absolute = {**record, "image": str(small_world / "train" / record["image"])}
    text = record["chosen"]
    assert annotator.scores(absolute, [text]) == annotator.scores(record, [text]) == [1.0]
    evaluation = read_records(str(small_world / "eval" / "sft.jsonl"))[0]
    assert WorldAnnotator(str(small_world), str(small_world / "eval")).scores(evaluation, [evaluation["chosen"]])[0] > 0


def test_an_image_without_ground_truth_names_the_record(small_world: Path, annotator: WorldAnnotator) -> None:
    record = {"id": "stray-7", "image": "images/999999.png", "question": "What is there?"}
    with pytest.raises(ValueError, match=r"record 'stray-7'.*images/999999\.png.*no ground truth"):
        annotator.scores(record, ["a cup"])


def test_a_folder_without_a_world_is_refused(tmp_path: Path) -> None:
    (tmp_path / "synonyms.txt").write_text("cup, cups\n")
    with pytest.raises(ValueError, match="no <split>/annotations.jsonl"):
        WorldAnnotator(str(tmp_path), "")


class _Judge(http.server.BaseHTTPRequestHandler):
    """POST /v1/chat/completions: records the body, replies `server.reply(candidate answer)`."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((self.path, body))  # type: ignore[attr-defined]
        candidate = body["messages"][1]["content"].rpartition("Candidate answer: ")[2]
        content = self.server.reply(candidate)  # type: ignore[attr-defined]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def judge_server() -> Iterator[Callable[[Callable[[str], str]], tuple[ChatEndpoint, list]]]:
    """Starts judges on 127.0.0.1 (port 0): (endpoint, recorded (path, body)) per reply function."""
    servers = []

    def start(reply: Callable[[str], str]) -> tuple[ChatEndpoint, list]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
        server.reply, server.bodies = reply, []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return ChatEndpoint(f"http://127.0.0.1:{server.server_port}/v1", MODEL, timeout=10, workers=2), server.bodies

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


RECORD = {"id": "rec-1", "image": "images/000000.png", "question": "What is on the table?",
          "chosen": "A red cup on a saucer."}


def test_the_judge_scores_each_answer_by_its_reply_in_order(judge_server) -> None:
    endpoint, bodies = judge_server(lambda candidate: f"Score: {candidate.count('cup')} / 10")
    answers = ["one cup", "cup cup cup", "nothing", "cup cup"]
    assert make_annotator("judge", endpoint=endpoint).scores(RECORD, answers) == [1.0, 3.0, 0.0, 2.0]
    assert len(bodies) == len(answers)
    for path, body in bodies:
        assert path == "/v1/chat/completions" and body["model"] == MODEL
        system, user = body["messages"]
        assert system == {"role": "system", "content": JUDGE_SYSTEM}
        assert RECORD["question"] in user["content"] and RECORD["chosen"] in user["content"]
    candidates = sorted(body["messages"][1]["content"].rpartition("Candidate answer: ")[2] for _, body in bodies)
    assert candidates == sorted(answers)


@pytest.mark.parametrize("reply", ["no idea", "I would say 12."])
def test_a_reply_without_a_score_names_the_record_and_the_reply(judge_server, reply: str) -> None:
    endpoint, _ = judge_server(lambda candidate: reply)
    with pytest.raises(ValueError, match=rf"record 'rec-1'.*{reply}"):
        make_annotator("judge", endpoint=endpoint).scores(RECORD, ["a cup"])


def test_an_unreachable_judge_names_the_record() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = ChatEndpoint(f"http://127.0.0.1:{port}/v1", MODEL, timeout=5)
    with pytest.raises(ValueError, match=r"record 'rec-1'.*failed"):
        make_annotator("judge", endpoint=endpoint).scores(RECORD, ["a cup"])


def test_the_judge_needs_a_reference_answer(judge_server) -> None:
    endpoint, bodies = judge_server(lambda candidate: "5")
    with pytest.raises(ValueError, match=r"record 'rec-1'.*'chosen'"):
        make_annotator("judge", endpoint=endpoint).scores({**RECORD, "chosen": ""}, ["a cup"])
    assert not bodies


def test_make_annotator_names_the_settings_it_misses(small_world: Path) -> None:
    with pytest.raises(ValueError, match=r"online_dpo\.annotator='oracle'.*'world', 'judge'"):
        make_annotator("oracle")
    with pytest.raises(ValueError, match=r"online_dpo\.annotator='world' needs online_dpo\.world"):
        make_annotator("world")
    with pytest.raises(ValueError, match=r"online_dpo\.annotator='judge' needs online_dpo\.llm\.base_url"):
        make_annotator("judge")
    made = make_annotator("world", world=str(small_world), image_root=str(small_world / "train"))
    assert isinstance(made, WorldAnnotator) and made.world_dir == str(small_world)
