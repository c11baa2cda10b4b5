"""Ground truth -> SFT records in the project schema (data/records.py): one caption record
per prompt variant drawn, then the image's QA, each with the image path relative to the
JSONL and a `provenance` saying which task and object it is about (for analysis and for the
evaluators that need labels, e.g. yes/no)."""

from __future__ import annotations

from typing import Any

import numpy as np

from realign_jax.synthetic.captions import CAPTION_PROMPTS, caption
from realign_jax.synthetic.language import pick
from realign_jax.synthetic.questions import QA, exist_no, exist_yes, questions
from realign_jax.synthetic.truth import ImageTruth


def image_records(truth: ImageTruth, rng: np.random.Generator, captions_per_image: int,
                  attribute_probability: float, relation_probability: float,
                  absent_companion_rate: float) -> list[dict[str, Any]]:
    """The JSON records of one image (question + chosen; no rejected: this is SFT data)."""
    records = []
    for k in range(captions_per_image):
        records.append({
            "id": f"{truth.id}-caption{k}", "image": truth.image, "question": pick(rng, CAPTION_PROMPTS),
            "chosen": caption(truth, rng, attribute_probability, relation_probability),
            "provenance": {"world": "synthetic", "image_id": truth.id, "task": "caption"},
        })
    seen: dict[str, int] = {}
    for qa in questions(truth, rng, absent_companion_rate):
        k = seen[qa.task] = seen.get(qa.task, -1) + 1
        records.append(_qa_record(truth, qa, f"{qa.task}{k}"))
    return records


def _qa_record(truth: ImageTruth, qa: QA, suffix: str) -> dict[str, Any]:
    """One question's SFT record, id `<image id>-<suffix>`, the QA's labels in `provenance`."""
    return {"id": f"{truth.id}-{suffix}", "image": truth.image, "question": qa.question, "chosen": qa.answer,
            "provenance": {"world": "synthetic", "image_id": truth.id, "task": qa.task, **qa.meta}}


def existence_records(truth: ImageTruth, rng: np.random.Generator, pairs: int) -> list[dict[str, Any]]:
    """`pairs` (yes, no) existence questions about the image, the "no" ones about any absent
    category: the dense yes/no signal of the grounding curriculum (see world.py)."""
    return [_qa_record(truth, qa, f"ground{k}{qa.meta['label']}") for k in range(pairs)
            for qa in (exist_yes(truth, rng), exist_no(truth, rng, absent_companion_rate=0.0))]
