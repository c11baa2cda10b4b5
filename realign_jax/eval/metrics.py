"""Hallucination metrics by name, decoupled from models and trainers (big_vision-style registry).

Each entry is a pure function over parsed records and returns a dict of numbers:
- "pope":  pope_metrics(predictions, labels) -> accuracy, precision, recall, f1, yes_ratio;
- "chair": chair(captions, ground_truth, synonyms) -> chair_s, chair_i, recall, mean_length;
- "amber": amber_metrics(answers, labels, types) -> overall and per-type metrics, "no" positive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from realign_jax.eval.amber import amber_metrics
from realign_jax.eval.chair import chair
from realign_jax.eval.pope import pope_metrics

METRICS: dict[str, Callable[..., dict[str, Any]]] = {"pope": pope_metrics, "chair": chair, "amber": amber_metrics}


def get_metric(name: str) -> Callable[..., dict[str, Any]]:
    """The metric function registered under `name`; KeyError lists the known names."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]
