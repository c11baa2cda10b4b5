"""AMBER (Wang et al., 2023): yes/no questions scored with "No" positive, and free descriptions
scored for hallucinated objects (CHAIR, Cover, Hal, Cog).

Checked against the official junyangwang0410/AMBER `inference.py`. Discriminative part:
precision is the share of "No" answers whose truth is no, recall the share of no-truth
questions answered "No", accuracy over all questions, reported overall and per question type.
The defaults are the official ones; today's earlier variants stay as options:
- parsing: `strict` accepts only the exact strings "Yes" and "No" (anything else is wrong
  whatever the truth and never a "No"); `pope` reads answers with POPE's rule;
- attribute pooling: `official` reports Attribute as state + number + action pooled, and each
  of the three; `split` reports state + action as attribute and number as count;
- scores: `official` does the script's arithmetic: every counter starts from metrics.txt
  (denominators at 0.001), each ratio is rounded to 0.1 point, and F1 comes from the rounded
  precision and recall with 1e-4 (existence: 1e-3) added to its denominator; `exact` gives
  plain ratios, 0.0 where undefined.
Generative part (`amber_generative`) differences: nltk's POS tagger, WordNet lemmatiser and
spaCy's word-vector similarity (> 0.8) are not dependencies here. Every token is a candidate
noun (the official keeps NN* tags only), lemmatised by data/text.py's `singularize`, and a
noun matches a safe or hallucination word only exactly (the official also accepts a similar
word).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from realign_jax.data.text import singularize
from realign_jax.eval.chair_official import word_tokenize
from realign_jax.eval.pope import check_labels, confusion_metrics, parse_answer

PARSINGS = ("strict", "pope")
POOLINGS = ("official", "split")
SCORES = ("official", "exact")

# Official type names -> row names; other names (the synthetic world's) are kept as given.
AMBER_TYPES = {"discriminative-hallucination": "existence", "discriminative-attribute-state": "state",
               "discriminative-attribute-action": "action", "discriminative-attribute-number": "number",
               "discriminative-relation": "relation", "relation": "relation"}
_SPLIT_ROWS = {"state": "attribute", "action": "attribute", "number": "count"}
_POOLED = ("state", "number", "action")  # the official Attribute row
_PREFIXES = {"overall": ("qa",), "existence": ("ha",), "state": ("as",), "number": ("an",), "action": ("aa",),
             "relation": ("asso",), "attribute": ("as", "an", "aa")}  # metrics.txt counter prefixes
_F1_EPSILON = {"existence": 1e-3}  # the official adds 1e-4 everywhere else


def parse_strict(text: str) -> str:
    """The official AMBER reading: exactly "Yes" -> yes, exactly "No" -> no, else 'invalid'."""
    return {"Yes": "yes", "No": "no"}.get(text, "invalid")


def _check(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"AMBER {what} {value!r}: choose from {choices}")


def _start(starts: Mapping[str, float], name: str) -> float:
    """A counter's starting value: metrics.txt's, else the official one (denominators 0.001)."""
    return starts.get(name, 0.001 if name.endswith("_num") else 0.0)


def _official_ratio(score: float, num: float, row: str, field: str, starts: Mapping[str, float]) -> float:
    """score / num in percent, rounded to 0.1, with the row's metrics.txt counters added."""
    prefixes = _PREFIXES.get(row)  # a row of other type names has counters of its own name
    names = [field if p == "qa" else f"{p}_{field}" for p in prefixes] if prefixes else [f"{row}_{field}"]
    score += sum(_start(starts, f"{n}_score") for n in names)
    num += sum(_start(starts, f"{n}_num") for n in names)
    return round(score / num * 100, 1)


def _official_scores(counts: dict[str, Any], row: str, starts: Mapping[str, float]) -> dict[str, float]:
    tp, fp, tn, fn, n = (counts[k] for k in ("tp", "fp", "tn", "fn", "n"))
    accuracy = _official_ratio(tp + tn, n, row, "qa_correct", starts)
    precision = _official_ratio(tp, tp + fp, row, "qa_ans_no", starts)
    recall = _official_ratio(tp, tp + fn, row, "qa_no", starts)
    p, r = precision / 100, recall / 100
    f1 = round(2 * p * r / (p + r + _F1_EPSILON.get(row, 1e-4)) * 100, 1)
    return {"accuracy": accuracy / 100, "precision": p, "recall": r, "f1": f1 / 100}


def _rows(names: Sequence[str], pooling: str) -> dict[str, list[int]]:
    """Row name -> question indices, rows in first-seen order (the pooled row before its members)."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if pooling == "split":
            rows.setdefault(_SPLIT_ROWS.get(name, name), []).append(i)
            continue
        if name in _POOLED:
            rows.setdefault("attribute", []).append(i)
        rows.setdefault(name, []).append(i)
    return rows


def amber_metrics(answers: Sequence[str], labels: Sequence[str], types: Sequence[str], *, parsing: str = "strict",
                  pooling: str = "official", scores: str = "official",
                  starts: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 with "no" positive: {"overall": {...}, "by_type": {row: {...}}}.

    `types` are per question (official AMBER names are mapped through AMBER_TYPES, others kept
    as given, e.g. the synthetic world's existence/attribute/count/relation). `starts` are
    metrics.txt's counters (`read_metrics`) for official scores. Each row also has its
    confusion counts.
    """
    _check(parsing, PARSINGS, "parsing")
    _check(pooling, POOLINGS, "attribute pooling")
    _check(scores, SCORES, "scores")
    if not len(answers) == len(labels) == len(types):
        raise ValueError(f"{len(answers)} answers, {len(labels)} labels, {len(types)} types")
    parsed = [(parse_strict if parsing == "strict" else parse_answer)(a) for a in answers]
    labels = check_labels(labels)

    def row_metrics(row: str, rows: Sequence[int]) -> dict[str, Any]:
        counts = confusion_metrics([parsed[i] for i in rows], [labels[i] for i in rows], positive="no")
        return counts | _official_scores(counts, row, starts or {}) if scores == "official" else counts

    by_type = {row: row_metrics(row, rows) for row, rows in _rows([AMBER_TYPES.get(t, t) for t in types],
                                                                   pooling).items()}
    return {"overall": row_metrics("overall", range(len(answers))), "by_type": by_type}


# --- the generative part ---------------------------------------------------------------------


def _candidate_nouns(response: str, vocabulary: set[str]) -> list[str]:
    """The response's words in AMBER's object vocabulary, lemmatised, in order, repeats kept."""
    return [w for w in (singularize(t) for t in word_tokenize(response)) if w in vocabulary]


def _entries(objects: Sequence[str], association: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Word -> the object it stands for: the objects' related words first, then the objects
    themselves, the first listing winning (the official `safe_words` / `ha_words` search)."""
    listed = [(word, i) for i, obj in enumerate(objects) for word in association[obj]]
    listed += [(obj, i) for i, obj in enumerate(objects)]
    entries: dict[str, int] = {}
    for word, i in listed:
        entries.setdefault(word, i)
    return entries


def _score_response(response: str, truth: Sequence[str], hallu: Sequence[str], association: Mapping[str, Any],
                    vocabulary: set[str], safe_words: set[str]) -> dict[str, Any]:
    nouns = _candidate_nouns(response, vocabulary)
    safe, risky = _entries(truth, association), _entries(hallu, association)
    covered, recognised, hallucinated = set(), set(), []
    for noun in nouns:
        if noun in safe_words:
            continue
        if noun in safe:
            covered.add(safe[noun])
            continue
        if noun in risky:
            recognised.add(risky[noun])
        hallucinated.append(noun)
    return {"nouns": nouns, "hallucinated": hallucinated, "covered": sorted(truth[i] for i in covered),
            "hallucination_words_named": sorted(hallu[i] for i in recognised), "n_truth": len(truth),
            "n_hallu": len(hallu)}


def amber_generative(responses: Sequence[str], annotations: Sequence[Mapping[str, Any]],
                     association: Mapping[str, Sequence[str]], safe_words: Sequence[str], *,
                     scores: str = "official", starts: Mapping[str, float] | None = None) -> dict[str, Any]:
    """CHAIR (hallucinated object nouns / object nouns), Cover (truth objects named / truth
    objects), Hal (responses with a hallucinated noun / responses) and Cog (hallucination-prone
    objects named / such objects), as fractions; per response its nouns and findings.

    `annotations` are the responses' AMBER entries ({"truth": [...], "hallu": [...]}),
    `association` relation.json (an object -> its related words: the vocabulary is both),
    `safe_words` safe_words.txt's words (never a hallucination, never cover).
    """
    _check(scores, SCORES, "scores")
    if not responses or len(responses) != len(annotations):
        raise ValueError(f"{len(responses)} responses for {len(annotations)} annotations")
    vocabulary = set(association) | {w for words in association.values() for w in words}
    details = [_score_response(r, a["truth"], a["hallu"], association, vocabulary, set(safe_words))
               for r, a in zip(responses, annotations)]
    counts = {"chair": (sum(len(d["hallucinated"]) for d in details), sum(len(d["nouns"]) for d in details)),
              "safe_cover": (sum(len(d["covered"]) for d in details), sum(d["n_truth"] for d in details)),
              "hallu_cover": (sum(len(d["hallucination_words_named"]) for d in details),
                              sum(d["n_hallu"] for d in details)),
              "non_hallu": (sum(not d["hallucinated"] for d in details), len(details))}
    ratio = {name: _generative_ratio(name, *pair, scores, starts or {}) for name, pair in counts.items()}
    if scores == "official":  # the script's prints: percentages rounded to 0.1 point
        out = {"chair": _percent(ratio["chair"]), "cover": _percent(ratio["safe_cover"]),
               "hal": round(100 - ratio["non_hallu"] * 100, 1) / 100, "cog": _percent(ratio["hallu_cover"])}
    else:
        out = {"chair": ratio["chair"], "cover": ratio["safe_cover"], "hal": 1 - ratio["non_hallu"],
               "cog": ratio["hallu_cover"]}
    return out | {"n": len(details), "responses": details}


def _generative_ratio(name: str, score: int, num: int, scores: str, starts: Mapping[str, float]) -> float:
    """score / num: official from metrics.txt's starting counters; exact 0.0 when num is 0."""
    if scores == "official":
        return (score + _start(starts, f"{name}_score")) / (num + _start(starts, f"{name}_num"))
    return score / num if num else 0.0


def _percent(ratio: float) -> float:
    return round(ratio * 100, 1) / 100


# --- AMBER's files ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AmberFiles:
    """An AMBER data folder as the official repository lays it out (its `data/`)."""

    annotations: list[dict[str, Any]]  # annotations.json: entry i is query id i + 1
    association: dict[str, list[str]]  # relation.json
    safe_words: list[str]  # safe_words.txt
    starts: dict[str, float]  # metrics.txt
    queries: list[dict[str, Any]]  # query/query_all.json: {"id", "image", "query"}

    def annotation(self, query_id: int) -> dict[str, Any]:
        """The query's entry, by position as the official script finds it (`ground_truth[id - 1]`)."""
        if not 1 <= query_id <= len(self.annotations):
            raise ValueError(f"query id {query_id}: annotations.json has {len(self.annotations)} entries")
        return self.annotations[query_id - 1]


def read_metrics(path: str) -> dict[str, float]:
    """metrics.txt's 'name=value' lines: the counters' starting values."""
    starts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split("=")
            if len(parts) == 2:
                starts[parts[0].strip()] = float(parts[1].strip())
    return starts


def read_amber_dir(folder: str) -> AmberFiles:
    """annotations.json, relation.json, safe_words.txt, metrics.txt (official starts when absent)
    and query/query_all.json from `folder`."""
    def load(name: str) -> Any:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return json.load(f)

    with open(os.path.join(folder, "safe_words.txt"), encoding="utf-8") as f:
        safe_words = [line.split("\n")[0] for line in f]
    metrics = os.path.join(folder, "metrics.txt")
    starts = read_metrics(metrics) if os.path.exists(metrics) else {}
    return AmberFiles(load("annotations.json"), load("relation.json"), safe_words, starts,
                      load(os.path.join("query", "query_all.json")))
