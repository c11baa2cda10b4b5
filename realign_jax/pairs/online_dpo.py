"""Online DPO and mixed DPO (arXiv 2407.02477, the BDHS paper), the round sampler behind
`online_dpo.every` (train/online.py runs the rounds).

Online DPO: the current policy samples `online_dpo.samples` (k) answers to each record's image
and question, an annotator (pairs/annotators.py) scores them, and the best and the worst
answer become the record's chosen and rejected answer. Mixed DPO trains on
`alpha * L(y_w, y_l) + (1 - alpha) * L(y~_w, y~_l)` with `alpha ~ Bernoulli(offline_share)`
drawn per record: alpha = 1 keeps the record's own pair (y_w, y_l), alpha = 0 trains on the
sampled one. Drawing alpha before sampling is the same objective as drawing it in the step, and
the policy then samples and the step scores only the pair that counts.

A record whose k answers all score the same carries no preference and is dropped (counted
`dropped_tied`), as is one whose best or worst answer is empty (`dropped_empty_answer`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from realign_jax.models.answering import Answerer, Prompt
from realign_jax.pairs.annotators import Annotator, make_annotator
from realign_jax.pairs.builder_inputs import has_question, image_path, rebase_image
from realign_jax.pairs.llm import ChatEndpoint
from realign_jax.pairs.seeds import record_rng, stable_seed
from realign_jax.settings.sections import OnlineDpoSettings

BUILDER = "online_dpo"
# What a record may carry that a sampled pair makes stale: another rejected answer or image,
# and reference log-probs of the old answers.
STALE_FIELDS = ("rejected_image", "rejected_sampled", "ref_logps")


@dataclasses.dataclass
class OnlineDpoSampler:
    """A round's pairs: per record, its own pair with probability `offline_share`, else the best
    and worst of k answers the policy samples (module docstring)."""

    settings: OnlineDpoSettings
    annotator: Annotator
    annotator_name: str = "world"

    def pairs(self, answerer: Answerer, records: Sequence[Mapping[str, Any]], image_root: str, output: str,
              seed: int, counts: Counter) -> list[dict[str, Any]]:
        """Rows for the records that give a pair, images relative to `output` (the rest counted)."""
        usable = [r for r in records if has_question(r, counts)]
        ids = [str(r.get("id", i)) for i, r in enumerate(usable)]
        own_pair = [self._keeps_own_pair(r, record_id, seed) for r, record_id in zip(usable, ids)]
        sampled = [i for i, own in enumerate(own_pair) if not own]
        answers = dict(zip(sampled, self._sample(answerer, [image_path(usable[i], image_root) for i in sampled],
                                                 [usable[i]["question"] for i in sampled],
                                                 stable_seed(seed, BUILDER, *ids))))
        rows: list[dict[str, Any]] = []
        for index, record in enumerate(usable):
            if own_pair[index]:
                counts["offline"] += 1
                row: dict[str, Any] | None = dict(record)
            else:
                row = self._ranked(record, image_path(record, image_root), answers[index], counts)
            if row is not None:
                rows.append(rebase_image(row, image_root, output))
        return rows

    def _keeps_own_pair(self, record: Mapping[str, Any], record_id: str, seed: int) -> bool:
        """Mixed DPO's alpha for this record and round; its own pair must then have both answers."""
        share = self.settings.offline_share
        if share == 0 or record_rng(seed, record_id).random() >= share:
            return False
        for field in ("chosen", "rejected"):
            if not str(record.get(field) or "").strip():
                raise ValueError(f"record {record_id!r}: online_dpo.offline_share={share} drew its own pair, but "
                                 f"field {field!r} is empty (mixed DPO reads preference pairs)")
        return True

    def _sample(self, answerer: Answerer, images: Sequence[str], questions: Sequence[str],
                call_seed: int) -> list[list[str]]:
        """k answers per (image, question), all in one generation call."""
        s = self.settings
        prompts = [Prompt(image, question) for image, question in zip(images, questions) for _ in range(s.samples)]
        texts = answerer.complete(prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                  seed=call_seed, desc="online dpo samples", progress=False)
        return [texts[n * s.samples : (n + 1) * s.samples] for n in range(len(images))]

    def _ranked(self, record: Mapping[str, Any], image: str, answers: Sequence[str],
                counts: Counter) -> dict[str, Any] | None:
        """The record with its best sampled answer as chosen and its worst as rejected, or None.
        The annotator reads the record with its image path absolute (`image`)."""
        scores = self.annotator.scores({**record, "image": image}, answers)
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] == scores[worst]:
            counts["dropped_tied"] += 1
            return None
        chosen, rejected = answers[best].strip(), answers[worst].strip()
        if not chosen or not rejected:
            counts["dropped_empty_answer"] += 1
            return None
        counts["kept"] += 1
        provenance = {**(record.get("provenance") or {}), "builder": BUILDER, "annotator": self.annotator_name,
                      "scores": [float(x) for x in scores], "chosen_index": best, "rejected_index": worst}
        row = {k: v for k, v in record.items() if k not in STALE_FIELDS}
        return {**row, "chosen": chosen, "rejected": rejected, "provenance": provenance}


def online_dpo_sampler(online: OnlineDpoSettings, world: str) -> Callable[..., list[dict[str, Any]]]:
    """The round sampler (train/online.py `RoundSampler`) for the `online_dpo` section; `world`
    is the synthetic world's folder the "world" annotator reads (empty when there is none)."""
    endpoint = None
    if online.annotator == "judge":
        endpoint = ChatEndpoint.from_config(online.llm, "online_dpo.annotator='judge'", prefix="online_dpo.llm.")
    annotator = make_annotator(online.annotator, world=world, endpoint=endpoint)
    return OnlineDpoSampler(online, annotator, online.annotator).pairs
