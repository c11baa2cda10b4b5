"""POVID's textual pairs (docs/methods.md section 3): the chosen answer with hallucinations
injected, by rules learnt from the data set (pairs/injection.py, the default) or by an
OpenAI-compatible LLM (`pairs.injector=llm`, as the paper's GPT-4V rewrite). POVID's second
kind of rejected answer, the model's own response to a noised image, is made inside the
training step (configs/povid_train.py:noise), not here."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from realign_jax.data.text import load_synonyms
from realign_jax.pairs.injection import InjectionStats, inject_records
from realign_jax.pairs.builder_inputs import rebase_image, synonyms_path, with_chosen
from realign_jax.pairs.llm import ChatEndpoint
from realign_jax.pairs.shards import build_in_shards

LLM_INSTRUCTIONS = (
    "You write wrong answers about images for training a model not to hallucinate. Rewrite the answer so "
    "that it contains plausible hallucinations: add an object that is often seen with the mentioned ones "
    "but is not mentioned, change an attribute (colour, size, count) or a relation between objects; if the "
    "answer is yes or no, give the opposite verdict. Keep the style and the length. Reply with the "
    "rewritten answer only.")


class LLMInjector:
    """Rejected answers rewritten by a chat endpoint; a reply that is empty or the chosen
    answer itself is counted (`dropped_bad_llm_rewrite`) and the record dropped."""

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint

    def rewrite(self, record: Mapping[str, Any]) -> str | None:
        user = f"Question: {record.get('question', '')}\nAnswer: {record['chosen']}"
        reply = self.endpoint.ask(LLM_INSTRUCTIONS, user, str(record.get("id", "?")), "injection").strip()
        return reply if reply and reply != record["chosen"].strip() else None

    def pairs(self, records: Sequence[Mapping[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        usable = with_chosen(records, counts)
        rows = []
        for record, rejected in zip(usable, self.endpoint.map(self.rewrite, usable), strict=True):
            if rejected is None:
                counts["dropped_bad_llm_rewrite"] += 1
                continue
            counts["kept"] += 1
            provenance = {**(record.get("provenance") or {}), "builder": "povid_llm", "llm": self.endpoint.model}
            rows.append({**record, "rejected": rejected, "provenance": provenance})
        return rows


def build_povid(config: Any, records: Sequence[dict[str, Any]], image_root: str, output: str) -> dict[str, Any]:
    """POVID's injected rejections; the rules' statistics are learnt once and kept with the pairs."""
    pairs = config.pairs
    if pairs.injector == "llm":
        return _build_with_llm(config, records, image_root, output)
    synonyms = synonyms_path(pairs.synonyms, config.data.path)
    kinds = pairs.kind_list
    os.makedirs(output, exist_ok=True)
    stats_path = os.path.join(output, "injection_stats.json")
    if os.path.exists(stats_path):  # a resumed run injects from the statistics the first run learnt
        stats = InjectionStats.load(stats_path)
    else:
        stats = InjectionStats.from_records(records, load_synonyms(synonyms))
        stats.save(stats_path)

    def build(part: Sequence[dict[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        rebased = [rebase_image(dict(r), image_root, output) for r in part]
        return list(inject_records(rebased, stats, pairs.seed, kinds=kinds, max_edits=pairs.max_edits,
                                   counts=counts))

    manifest = {"builder": "povid", "records_path": os.path.abspath(config.data.path), "synonyms": synonyms,
                "seed": pairs.seed, "kinds": list(kinds), "max_edits": pairs.max_edits,
                "max_records": pairs.max_records}
    selected = records[:pairs.max_records] if pairs.max_records else records  # the statistics saw them all
    return build_in_shards(selected, output, pairs.shard_size, build, manifest, desc="povid injection")


def _build_with_llm(config: Any, records: Sequence[dict[str, Any]], image_root: str, output: str) -> dict[str, Any]:
    llm = config.pairs.llm
    injector = LLMInjector(ChatEndpoint.from_config(llm, "pairs.injector='llm'"))

    def build(part: Sequence[dict[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        return injector.pairs([rebase_image(dict(r), image_root, output) for r in part], counts)

    manifest = {"builder": "povid", "injector": "llm", "records_path": os.path.abspath(config.data.path),
                "llm_base_url": llm.base_url, "llm_model": llm.model, "max_records": config.pairs.max_records}
    selected = records[:config.pairs.max_records] if config.pairs.max_records else records
    return build_in_shards(selected, output, config.pairs.shard_size, build, manifest, desc="povid llm injection")
