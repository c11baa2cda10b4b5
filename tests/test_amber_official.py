"""AMBER as published (junyangwang0410/AMBER `inference.py`): strict Yes/No parsing, the
official Attribute pooling and arithmetic, and the generative part (CHAIR, Cover, Hal, Cog)
on a tiny hand-made AMBER folder, against values worked out by hand from the official code."""

import json
import os

import pytest

from realign_jax.eval import amber, suite
from realign_jax.settings.sections import EvalSettings

ROWS = [  # (response, truth, official type)
    ("No", "no", "discriminative-hallucination"), ("Yes", "no", "discriminative-hallucination"),
    ("No", "yes", "discriminative-hallucination"), ("Yes", "yes", "discriminative-hallucination"),
    ("No.", "no", "discriminative-hallucination"),
    ("No", "no", "discriminative-attribute-state"), ("Yes", "yes", "discriminative-attribute-state"),
    ("No", "yes", "discriminative-attribute-number"), ("2", "no", "discriminative-attribute-number"),
    ("Yes", "no", "discriminative-attribute-action"),
    ("No", "no", "discriminative-relation"), ("Yes", "yes", "relation"),
]


def official_counters(rows):
    """inference.py's discriminative counting, from metrics.txt's starting values."""
    prefix = {"discriminative-attribute-state": "as_", "discriminative-attribute-number": "an_",
              "discriminative-attribute-action": "aa_", "discriminative-hallucination": "ha_"}
    m = {f"{p}qa_{name}_{kind}": 0.001 if kind == "num" else 0
         for p in ("", "as_", "an_", "aa_", "ha_", "asso_") for name in ("correct", "no", "ans_no")
         for kind in ("score", "num")}
    for response, truth, kind in rows:
        for p in ("", prefix.get(kind, "asso_")):
            m[f"{p}qa_correct_num"] += 1
            m[f"{p}qa_correct_score"] += (truth == "yes" and response == "Yes") or (truth == "no" and response == "No")
            m[f"{p}qa_no_num"] += truth == "no"
            m[f"{p}qa_no_score"] += truth == "no" and response == "No"
            m[f"{p}qa_ans_no_num"] += response == "No"
            m[f"{p}qa_ans_no_score"] += response == "No" and truth == "no"
    return m


def official_row(m, prefixes, epsilon=0.0001):
    """inference.py's printed numbers for a row pooling `prefixes`, as fractions."""
    def ratio(name):
        return round(sum(m[f"{p}qa_{name}_score"] for p in prefixes)
                     / sum(m[f"{p}qa_{name}_num"] for p in prefixes) * 100, 1)

    accuracy, precision, recall = ratio("correct"), ratio("ans_no"), ratio("no")
    f1 = round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + epsilon) * 100, 1)
    return {"accuracy": accuracy / 100, "precision": precision / 100, "recall": recall / 100, "f1": f1 / 100}


def test_defaults_are_the_official_discriminative_scores():
    answers, labels, types = zip(*ROWS)
    out = amber.amber_metrics(answers, labels, types)
    assert list(out["by_type"]) == ["existence", "attribute", "state", "number", "action", "relation"]
    m = official_counters(ROWS)
    expected = {"overall": official_row(m, [""]), "existence": official_row(m, ["ha_"], epsilon=0.001),
                "attribute": official_row(m, ["as_", "an_", "aa_"]), "state": official_row(m, ["as_"]),
                "number": official_row(m, ["an_"]), "action": official_row(m, ["aa_"]),
                "relation": official_row(m, ["asso_"])}
    for row, want in expected.items():
        got = out["overall"] if row == "overall" else out["by_type"][row]
        assert {k: got[k] for k in want} == pytest.approx(want), row
    # By hand: existence has 1 right "No" of 2 "No" answers and 3 no-truths; "No." is no answer.
    # P = 1/2.001 -> 50.0, R = 1/3.001 -> 33.3, F1 = 2 * .5 * .333 / (.833 + .001) -> 39.9 (exact: 40.0)
    existence = out["by_type"]["existence"]
    assert (existence["precision"], existence["recall"], existence["f1"]) == pytest.approx((0.5, 0.333, 0.399))
    # Attribute pools state, number and action: 1 of 2 "No" answers right, 1 of 3 no-truths found,
    # each denominator starting at 3 x 0.001: P = 1/2.003 -> 49.9, R = 1/3.003 -> 33.3.
    attribute = out["by_type"]["attribute"]
    assert (attribute["precision"], attribute["recall"], attribute["f1"]) == pytest.approx((0.499, 0.333, 0.399))
    assert (attribute["tp"], attribute["fp"], attribute["tn"], attribute["fn"]) == (1, 1, 1, 2)


def test_earlier_variants_stay_as_options():
    answers, labels, types = zip(*ROWS)
    split = amber.amber_metrics(answers, labels, types, pooling="split", scores="exact")
    assert list(split["by_type"]) == ["existence", "attribute", "count", "relation"]
    attribute = split["by_type"]["attribute"]  # state + action only
    assert (attribute["tp"], attribute["tn"], attribute["fn"], attribute["n"]) == (1, 1, 1, 3)
    assert split["by_type"]["existence"]["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    lenient = amber.amber_metrics(answers, labels, types, parsing="pope", scores="exact")
    assert lenient["by_type"]["existence"]["tp"] == 2  # "No." is a no under POPE's rule
    with pytest.raises(ValueError, match="pooling"):
        amber.amber_metrics(answers, labels, types, pooling="paper")


RELATION = {"dog": ["puppy"], "grass": ["ground"], "ground": [], "cat": ["kitten"], "car": [], "tree": [],
            "bird": [], "frisbee": []}
ANNOTATIONS = [{"id": 1, "type": "generative", "truth": ["dog", "grass", "ground"], "hallu": ["cat", "car"]},
               {"id": 2, "type": "generative", "truth": ["bird"], "hallu": ["frisbee"]},
               {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
               {"id": 4, "type": "discriminative-attribute-state", "truth": "yes"}]
QUERIES = [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
           {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
           {"id": 3, "image": "AMBER_1.jpg", "query": "Is there a cat in this image?"},
           {"id": 4, "image": "AMBER_2.jpg", "query": "Is the bird flying in this image?"}]
RESPONSES = {1: "A puppy runs on the ground near a tree and a kitten. Two cats.", 2: "A bird.", 3: "No", 4: "Yes."}
METRICS_TXT = "".join(f"{name}=0.001\n{name.removesuffix('_num')}_score=0\n"
                      for name in ("chair_num", "safe_cover_num", "hallu_cover_num", "non_hallu_num"))


@pytest.fixture
def amber_dir(tmp_path):
    folder = tmp_path / "amber"
    (folder / "query").mkdir(parents=True)
    (folder / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (folder / "relation.json").write_text(json.dumps(RELATION))
    (folder / "safe_words.txt").write_text("tree\n")
    (folder / "metrics.txt").write_text(METRICS_TXT)
    (folder / "query" / "query_all.json").write_text(json.dumps(QUERIES))
    return str(folder)


def test_generative_by_hand(amber_dir):
    files = amber.read_amber_dir(amber_dir)
    out = amber.amber_generative([RESPONSES[1], RESPONSES[2]], files.annotations[:2], files.association,
                                 files.safe_words, starts=files.starts)
    first, second = out["responses"]
    # Response 1's object words: puppy, ground, tree, kitten, cat. puppy covers dog; ground is
    # listed first as grass's related word, so it covers grass, not ground (the official search);
    # tree is a safe word; kitten (cat's related word) and cat are hallucinations naming cat.
    assert first["nouns"] == ["puppy", "ground", "tree", "kitten", "cat"]
    assert (first["covered"], first["hallucinated"], first["hallucination_words_named"]) == (
        ["dog", "grass"], ["kitten", "cat"], ["cat"])
    assert (second["covered"], second["hallucinated"]) == (["bird"], [])
    # CHAIR 2 / 6.001 -> 33.3; Cover 3 / 4.001 -> 75.0; Hal 100 - 1 / 2.001 -> 50.0; Cog 1 / 3.001 -> 33.3
    assert (out["chair"], out["cover"], out["hal"], out["cog"]) == pytest.approx((0.333, 0.75, 0.5, 0.333))
    exact = amber.amber_generative([RESPONSES[1], RESPONSES[2]], files.annotations[:2], files.association,
                                   files.safe_words, scores="exact")
    assert (exact["chair"], exact["cover"], exact["hal"], exact["cog"]) == pytest.approx((1 / 3, 0.75, 0.5, 1 / 3))
    started = amber.amber_generative([RESPONSES[1]], files.annotations[:1], files.association, files.safe_words,
                                     starts={"chair_num": 4})
    assert started["chair"] == pytest.approx(0.222)  # metrics.txt's starting values count: 2 / (5 + 4)


class QueryAnswers:
    """An Answerer stand-in answering each AMBER query by its image and question."""

    def answer(self, items, max_new_tokens, desc):
        by_query = {(q["image"], q["query"]): RESPONSES[q["id"]] for q in QUERIES}
        return [by_query[(os.path.basename(image), question)] for image, question in items]


def test_suite_runs_the_amber_folder(amber_dir, tmp_path):
    results = suite.run_amber(QueryAnswers(), EvalSettings(amber_dir=amber_dir), str(tmp_path))
    assert (results["parsing"], results["pooling"], results["scores"]) == ("strict", "official", "official")
    generative = results["generative"]
    assert (generative["chair"], generative["cover"], generative["hal"], generative["cog"]) == pytest.approx(
        (0.333, 0.75, 0.5, 0.333))
    assert results["by_type"]["existence"]["tp"] == 1
    assert results["by_type"]["state"]["accuracy"] == 0.0  # "Yes." is no official answer
    assert json.loads((tmp_path / "amber_responses.json").read_text()) == [
        {"id": i, "response": RESPONSES[i]} for i in (1, 2, 3, 4)]
    lines = suite.table({"amber": results})
    assert lines[0].startswith("AMBER generative   CHAIR 0.333") and any("AMBER attribute" in x for x in lines)
    exact = suite.run_amber(QueryAnswers(), EvalSettings(amber_dir=amber_dir, amber_parsing="pope",
                                                         amber_scores="exact"), str(tmp_path))
    assert exact["by_type"]["state"]["accuracy"] == 1.0 and exact["generative"]["chair"] == pytest.approx(1 / 3)
