"""Annotators for online DPO (arXiv 2407.02477, the BDHS paper): the current policy samples k
answers to a record, an annotator scores them, and the best and the worst answer become the
chosen and rejected answer of a pair. `make_annotator` builds one from the run's settings.

- `WorldAnnotator`: the synthetic world's ground truth, read as the project's CHAIR reads the
  world (its synonyms.txt, protocol "corrected").
- `JudgeAnnotator`: an LLM behind an OpenAI-compatible endpoint (pairs/llm.py) that grades each
  answer against the record's reference answer.

pairs/ may not import eval/ or synthetic/ (docs/design.md, "Rooms and who may import whom"), so
the world is read from its files: its synonyms.txt by data/text.py's reader (the one CHAIR's
corrected protocol uses), answers by pairs/answers.py's `Lexicon`, the builders' form of CHAIR's
corrected reading without the COCO special cases (eval/chair.py COCO_PHRASES and toilet/seat).
On the world's words those differ only where an answer writes "hot dog", "home plate" or a "seat" (a chair) beside a
"toilet", which the world's own text never does; tests/test_annotators.py checks the two
readings agree on the world's captions.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from realign_jax.data.jsonl import json_objects
from realign_jax.data.text import load_synonyms, singular_phrase
from realign_jax.pairs.answers import Lexicon, ParsedAnswer
from realign_jax.pairs.builder_inputs import image_path
from realign_jax.pairs.llm import ChatEndpoint
from realign_jax.settings.sections import ANNOTATORS

JUDGE_RANGE = (0.0, 10.0)
JUDGE_SYSTEM = (
    "You grade answers to questions about an image that neither of us can see. You get the question, a "
    "reference answer known to be correct, and a candidate answer. Score from 0 to 10 how faithful and correct "
    "the candidate is: 10 when everything it says agrees with the reference, 0 when it is wrong or claims "
    "things the reference contradicts or does not support. Reply with the score only."
)
_NUMBER_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")


class Annotator(Protocol):
    """Scores a record's sampled answers so online DPO can pair the best with the worst."""

    def scores(self, record: Mapping[str, Any], answers: Sequence[str]) -> list[float]:
        """One score per answer, higher is better."""
        ...


def _named(record: Mapping[str, Any]) -> str:
    return f"record {record.get('id', '?')!r}"


def _world_truth(world_dir: str, lexicon: Lexicon) -> dict[str, frozenset[str]]:
    """Every image of the world's splits (by real path) -> its canonical objects, from each
    <split>/annotations.jsonl, whose image paths are relative to the split's folder."""
    truth: dict[str, frozenset[str]] = {}
    for split in sorted(os.scandir(world_dir), key=lambda entry: entry.name):
        annotations = os.path.join(split.path, "annotations.jsonl")
        if not os.path.isfile(annotations):
            continue
        for where, image in json_objects(annotations):
            try:
                names, path = [o["name"] for o in image["objects"]], os.path.join(split.path, image["image"])
            except (KeyError, TypeError) as error:
                raise ValueError(f"{where}: not a world annotation ({error!r})") from None
            truth[os.path.realpath(path)] = frozenset(lexicon.inverse.get(singular_phrase(n), n) for n in names)
    if not truth:
        raise ValueError(f"{world_dir}: no <split>/annotations.jsonl there (generate a world with "
                         "`python -m realign_jax.synthetic`)")
    return truth


def world_reward(truth: frozenset[str], mentioned: Sequence[str]) -> float:
    """recall - hallucination share: |truth & set(mentioned)| / |truth| minus the share of the
    mentions (repeats counted, as CHAIR_i counts them) that name an object not in `truth`.
    Each term is 0 when its denominator is, so the reward lies in [-1, 1]."""
    recall = len(truth & set(mentioned)) / len(truth) if truth else 0.0
    hallucinated = sum(name not in truth for name in mentioned) / len(mentioned) if mentioned else 0.0
    return recall - hallucinated


class WorldAnnotator:
    """The synthetic world's ground truth as annotator: reward = recall of the image's objects
    minus the CHAIR_i share of the answer's mentions that are not in the image (`world_reward`).

    Objects are read as the project's CHAIR reads the world (the world's synonyms.txt, protocol
    "corrected", module docstring). Saying little scores low through recall, naming absent
    objects through the hallucination share. A record's image (relative to `image_root`, or
    absolute) must be one of the world's images.
    """

    def __init__(self, world_dir: str, image_root: str):
        self.world_dir, self.image_root = world_dir, image_root
        self.lexicon = Lexicon(load_synonyms(os.path.join(world_dir, "synonyms.txt")))
        self.truth = _world_truth(world_dir, self.lexicon)

    def scores(self, record: Mapping[str, Any], answers: Sequence[str]) -> list[float]:
        truth = self._truth_of(record)
        return [world_reward(truth, [m.name for m in ParsedAnswer(a, self.lexicon).mentions]) for a in answers]

    def _truth_of(self, record: Mapping[str, Any]) -> frozenset[str]:
        path = os.path.realpath(image_path(record, self.image_root))
        if path not in self.truth:
            raise ValueError(f"{_named(record)}: image {record['image']!r} ({path}) has no ground truth in the "
                             f"world {self.world_dir}")
        return self.truth[path]


@dataclasses.dataclass(frozen=True)
class JudgeAnnotator:
    """An LLM judge: one request per answer, asking for a 0-10 score of how faithful and correct
    the answer is to the question given the record's reference answer ("chosen").

    The judge is text-only: it never sees the image, so it can only reward agreement with the
    reference. Requests go through `endpoint.map`, `endpoint.workers` at a time.
    """

    endpoint: ChatEndpoint

    def scores(self, record: Mapping[str, Any], answers: Sequence[str]) -> list[float]:
        reference = record.get("chosen")
        if not isinstance(reference, str) or not reference.strip():
            raise ValueError(f"{_named(record)}: the judge needs the reference answer in field 'chosen'")
        return self.endpoint.map(lambda answer: self._score(record, reference, answer), answers)

    def _score(self, record: Mapping[str, Any], reference: str, answer: str) -> float:
        user = f"Question: {record['question']}\n\nReference answer: {reference}\n\nCandidate answer: {answer}"
        return parse_score(self.endpoint.ask(JUDGE_SYSTEM, user, str(record.get("id", "?")), "judge"), record)


def parse_score(reply: str, record: Mapping[str, Any]) -> float:
    """The first number in the judge's reply; ValueError when there is none or it is off the 0-10 scale."""
    match = _NUMBER_RE.search(reply)
    low, high = JUDGE_RANGE
    if match is None or not low <= float(match.group()) <= high:
        raise ValueError(f"{_named(record)}: the judge's reply holds no score from 0 to 10: {reply[:100]!r}")
    return float(match.group())


def make_annotator(kind: str, *, world: str = "", image_root: str = "",
                   endpoint: ChatEndpoint | None = None) -> Annotator:
    """`online_dpo.annotator`'s annotator: "world" needs `online_dpo.world`, "judge" an endpoint."""
    if kind == "world":
        if not world:
            raise ValueError("online_dpo.annotator='world' needs online_dpo.world: the synthetic world's folder, "
                             "whose ground truth scores the answers")
        return WorldAnnotator(world, image_root)
    if kind == "judge":
        if endpoint is None:
            raise ValueError("online_dpo.annotator='judge' needs online_dpo.llm.base_url and online_dpo.llm.model: "
                             "the OpenAI-compatible endpoint of the judge")
        return JudgeAnnotator(endpoint)
    raise ValueError(f"online_dpo.annotator={kind!r}: choose from {ANNOTATORS}")
