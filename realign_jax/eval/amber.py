"""AMBER's discriminative part (Wang et al., 2023): yes/no questions scored with "No" positive.

Checked against the official junyangwang0410/AMBER `inference.py`: precision is the share
of "No" answers whose truth is no, recall the share of no-truth questions answered "No",
accuracy over all questions, reported overall and per question type. Its types map onto
ours through AMBER_TYPES (existence = 'discriminative-hallucination'; AMBER's Attribute row
pools state, action and number, which we report as attribute and count).
Differences: answers are parsed with POPE's rule by default, where the official script
accepts only the exact strings "Yes" and "No" (`strict=True` reproduces that: anything else
is wrong whatever the truth and never counts as a "No"); F1 is exact, where the official
one adds 1e-4 to the denominator and uses precision and recall rounded to 0.1%.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from realign_jax.eval.pope import check_labels, confusion_metrics, parse_answer

AMBER_TYPES = {"discriminative-hallucination": "existence", "discriminative-attribute-state": "attribute",
               "discriminative-attribute-action": "attribute", "discriminative-attribute-number": "count",
               "discriminative-relation": "relation"}


def parse_strict(text: str) -> str:
    """The official AMBER reading: exactly "Yes" -> yes, exactly "No" -> no, else 'invalid'."""
    return {"Yes": "yes", "No": "no"}.get(text, "invalid")


def amber_metrics(answers: Sequence[str], labels: Sequence[str], types: Sequence[str], *,
                  strict: bool = False) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 with "no" positive: {"overall": {...}, "by_type": {type: {...}}}.

    `types` are per question (official AMBER names are mapped through AMBER_TYPES, others
    kept as given, e.g. the synthetic world's existence/attribute/count/relation).
    """
    if not len(answers) == len(labels) == len(types):
        raise ValueError(f"{len(answers)} answers, {len(labels)} labels, {len(types)} types")
    parsed = [(parse_strict if strict else parse_answer)(a) for a in answers]
    labels = check_labels(labels)
    names = [AMBER_TYPES.get(t, t) for t in types]
    by_type = {}
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        by_type[name] = confusion_metrics([parsed[i] for i in rows], [labels[i] for i in rows], positive="no")
    return {"overall": confusion_metrics(parsed, labels, positive="no"), "by_type": by_type}
