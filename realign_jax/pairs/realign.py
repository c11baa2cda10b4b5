"""Re-Align's dual-preference pairs (docs/methods.md section 2, arXiv 2502.13146): the rejected
answer is the ground truth with its object/attribute/relation segments refilled by the VLM from a
retrieved, similar but different image, which becomes the rejected image.

Per shard of records:
1. mask each chosen answer (`masking.RuleMasker`, or `LLMMasker`);
2. look up its image's k nearest images by the VLM's own vision tower (`ImageIndex`, built once
   over every distinct image of the records and kept in `<output>/index`; never the image itself
   nor one more similar than `pairs.ceiling`);
3. for t = 1..k: fill the masks left to right with the VLM looking at neighbour t (all records
   still waiting, one batched generation per mask position); accept the first filling whose
   sentence-embedding cosine with the chosen answer is below tau.

Counts: "kept", "dropped_<reason>", `tried_at_<t>` / `accepted_at_<t>` per neighbour rank,
`empty_fills` (candidates with a mask the model left empty, never scored). The cosines of every
scored candidate and of the accepted ones go to `<output>/similarity_histogram.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from realign_jax.data.chat import ChatCodec
from realign_jax.models.answering import Answerer, Prompt
from realign_jax.settings.runs import PairsRun
from realign_jax.settings.sections import RealignPairs
from realign_jax.pairs.image_index import (
    ImageEmbedder,
    ImageIndex,
    Neighbour,
)
from realign_jax.pairs.builder_inputs import image_path, rebase_image, synonyms_path, with_chosen
from realign_jax.pairs.masking import LLMMasker, MaskedAnswer, Masker, RuleMasker
from realign_jax.pairs.seeds import stable_seed
from realign_jax.pairs.sentence_embedder import SentenceEmbedder
from realign_jax.pairs.shards import build_in_shards

BUILDER = "realign"
FILL_SLACK = 3  # a fill may run this many words past the span it replaces ("below" -> "to the left of")
HISTOGRAM_BINS = 20  # over cosine similarity in [-1, 1]
HISTOGRAM_FILE = "similarity_histogram.json"
_HISTOGRAM_KEY = re.compile(r"similarity_(tried|accepted)_(\d+)$")
_PUNCTUATION = re.compile(r"[,.;:!?()\[\]\"\n]")
# Words that open a phrase: a fill never ends on one ("to" of "to the left of the cup").
_OPEN_WORDS = frozenset(("a", "an", "the", "to", "and", "or", "at", "in", "on", "some", "with"))
_CONJUNCTIONS = frozenset(("and", "or", "but"))


# The builder's keys a shard's manifest records (a rerun with other values rebuilds it).
SEARCH_KEYS = ("k", "tau", "ceiling", "max_fill_tokens", "temperature", "seed")


def cut_fill(continuation: str, following: str, span: str) -> str:
    """The text a model continuation fills a mask with, the mask having hidden `span` and being
    followed by the template's fixed text `following`. Cut at punctuation, before a conjunction
    the span did not have (the model went on listing), at the first place where `following`'s
    first two words begin, else after the span's word count + FILL_SLACK words; words that open
    a phrase are not left dangling at the end. May be empty."""
    words = _PUNCTUATION.split(continuation, maxsplit=1)[0].split()
    lowered = [w.lower() for w in words]
    conjunctions = _CONJUNCTIONS - {w.lower() for w in span.split()}
    stop = [w.lower() for w in _PUNCTUATION.split(following, maxsplit=1)[0].split()[:2]]
    end = min(len(words), len(span.split()) + FILL_SLACK)
    for i in range(1, end):
        if lowered[i] in conjunctions or (stop and lowered[i:i + len(stop)] == stop
                                          and lowered[i - 1] not in _OPEN_WORDS):
            end = i
            break
    fill = words[:end]
    while fill and fill[-1].lower() in _OPEN_WORDS:
        fill.pop()
    return " ".join(fill)


@dataclasses.dataclass(frozen=True)
class _Job:
    """One candidate: a record's masked answer to fill while the model looks at `image`."""

    question: str
    masked: MaskedAnswer
    image: str


def fill_masks(answerer: Answerer, jobs: Sequence[_Job], settings: RealignPairs, rank: int) -> list[str | None]:
    """Each job's filled answer (None when the model left a mask empty). Masks are filled left to
    right, mask j of every job in one batched generation continuing the answer so far. Samples
    (temperature > 0) are seeded by (seed, neighbour rank, j), so a rebuilt shard repeats them."""
    fills: list[list[str]] = [[] for _ in jobs]
    for j in range(max((job.masked.num_masks for job in jobs), default=0)):
        active = [n for n, job in enumerate(jobs) if job.masked.num_masks > j and all(fills[n])]
        prompts = [Prompt(jobs[n].image, jobs[n].question, jobs[n].masked.prefix(j, fills[n]).rstrip())
                   for n in active]
        outputs = answerer.complete(prompts, max_new_tokens=settings.max_fill_tokens,
                                    temperature=settings.temperature, seed=stable_seed(settings.seed, rank, j),
                                    progress=False)
        for n, prompt, output in zip(active, prompts, outputs, strict=True):
            masked = jobs[n].masked
            # A continuation that finishes the prefix's last word ("a" + "utomobile") fills nothing.
            merged = bool(prompt.prefix) and bool(output) and not output[0].isspace()
            fills[n].append("" if merged else cut_fill(output, masked.fixed[j + 1], masked.spans[j]))
    return [job.masked.fill(f) if len(f) == job.masked.num_masks and all(f) else None
            for job, f in zip(jobs, fills, strict=True)]


def _count(counts: Counter, key: str, n: int) -> None:
    """Adds n under key; zero adds no key, so the counts list only what happened."""
    if n:
        counts[key] += n


def _bin(similarity: float) -> int:
    return int(np.clip(np.floor((similarity + 1) / 2 * HISTOGRAM_BINS), 0, HISTOGRAM_BINS - 1))


@dataclasses.dataclass
class _Tools:
    answerer: Answerer
    index: ImageIndex
    embedder: SentenceEmbedder


def _image_index(answerer: Answerer, keys: Sequence[str], output: str, batch_size: int, whiten: bool) -> ImageIndex:
    """`<output>/index` when a run already built it, else every image embedded by the model's tower."""
    folder = os.path.join(output, "index")
    if os.path.isdir(folder):
        index = ImageIndex.load(folder)
        missing = sorted(set(keys) - set(index.keys))
        if missing:
            raise ValueError(f"{folder} lacks {len(missing)} of the records' images (e.g. {missing[0]!r}); "
                             "delete it to rebuild")
        return index
    embedder = ImageEmbedder(answerer.model, answerer.codec.processing, batch_size=batch_size)
    index = ImageIndex.build(keys, embedder.embed_images([os.path.join(output, key) for key in keys]), whiten=whiten)
    index.save(folder)
    return index


class _ShardBuilder:
    """Builds one shard's pairs with the loaded tools (see the module docstring)."""

    def __init__(self, tools: _Tools, masker: Masker, settings: RealignPairs, output: str):
        self.tools, self.masker, self.settings, self.output = tools, masker, settings, output

    def __call__(self, part: Sequence[Mapping[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        usable = with_chosen(part, counts)
        masks = self.masker.mask_all(usable)
        live = [(r, m) for r, m in zip(usable, masks, strict=True) if m is not None]
        _count(counts, f"dropped_{self.masker.drop_reason}", len(usable) - len(live))
        _count(counts, "masks", sum(m.num_masks for _, m in live))
        found = self.tools.index.neighbours_batch([r["image"] for r, _ in live], self.settings.k,
                                                  self.settings.ceiling)
        _count(counts, "dropped_no_neighbours", sum(not n for n in found))
        accepted: dict[int, dict[str, Any]] = {}
        pending = [i for i, n in enumerate(found) if n]
        for t in range(self.settings.k):
            trying = [i for i in pending if len(found[i]) > t]
            if not trying:
                break
            for i, row in self._try_rank(live, found, trying, t, counts).items():
                accepted[i] = row
            pending = [i for i in pending if i not in accepted]
        _count(counts, "dropped_all_neighbours_similar", len(pending))
        _count(counts, "kept", len(accepted))
        return [accepted[i] for i in sorted(accepted)]

    def _try_rank(self, live: Sequence[tuple[Mapping[str, Any], MaskedAnswer]], found: Sequence[list[Neighbour]],
                  trying: Sequence[int], t: int, counts: Counter) -> dict[int, dict[str, Any]]:
        """Fill the masks of records `trying` from their neighbour t; the accepted rows by record."""
        jobs = [_Job(str(live[i][0].get("question", "")), live[i][1], os.path.join(self.output, found[i][t].key))
                for i in trying]
        texts = fill_masks(self.tools.answerer, jobs, self.settings, t)
        scored = [(i, text) for i, text in zip(trying, texts, strict=True) if text is not None]
        _count(counts, "empty_fills", len(trying) - len(scored))
        _count(counts, f"tried_at_{t + 1}", len(scored))
        if not scored:
            return {}
        similarity = self.tools.embedder.similarity([live[i][0]["chosen"] for i, _ in scored],
                                                    [text for _, text in scored])
        rows = {}
        for (i, text), cosine in zip(scored, similarity, strict=True):
            counts[f"similarity_tried_{_bin(cosine):02d}"] += 1
            if cosine < self.settings.tau:
                counts[f"similarity_accepted_{_bin(cosine):02d}"] += 1
                counts[f"accepted_at_{t + 1}"] += 1
                rows[i] = self._row(live[i][0], live[i][1], found[i][t], t, text, float(cosine))
        return rows

    def _row(self, record: Mapping[str, Any], masked: MaskedAnswer, neighbour: Neighbour, t: int, text: str,
             cosine: float) -> dict[str, Any]:
        provenance = {**(record.get("provenance") or {}), "builder": BUILDER, "masker": self.masker.name,
                      "masked": masked.template, "neighbour_rank": t + 1,
                      "neighbour_similarity": neighbour.similarity, "text_similarity": cosine}
        return {**record, "rejected": text, "rejected_image": neighbour.key, "provenance": provenance}


def _masker(config: Any) -> tuple[Masker, dict[str, Any]]:
    """The configured masker and what of its settings the manifest pins."""
    pairs = config.pairs
    if pairs.masker == "rules":
        path = synonyms_path(pairs.synonyms, config.data.path)
        return RuleMasker.from_file(path), {"masker": "rules", "synonyms": path}
    if pairs.masker == "llm":
        llm = pairs.llm
        return LLMMasker.from_config(llm), {"masker": "llm", "llm_base_url": llm.base_url, "llm_model": llm.model}
    raise ValueError(f"pairs.masker={pairs.masker!r}: choose 'rules' or 'llm'")


def _histogram(counts: dict[str, Any], output: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Moves the similarity bins out of the counts into `<output>/similarity_histogram.json`;
    returns (the other counts, a summary). Bins travel in the shard counts so a resumed run's
    histogram still covers every shard."""
    bins = {"tried": [0] * HISTOGRAM_BINS, "accepted": [0] * HISTOGRAM_BINS}
    rest = {}
    for key, value in counts.items():
        match = _HISTOGRAM_KEY.match(key)
        if match:
            bins[match.group(1)][int(match.group(2))] += value
        else:
            rest[key] = value
    edges = np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    path = os.path.join(output, HISTOGRAM_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"edges": edges.round(6).tolist(), **bins}, f, indent=1)
    summary: dict[str, Any] = {"histogram": path}
    for name, values in bins.items():
        total = sum(values)
        summary[name] = total
        summary[f"{name}_mean"] = float(np.dot(values, centres) / total) if total else None  # of bin centres
    return rest, summary


def build_realign(config: PairsRun, records: Sequence[dict[str, Any]], image_root: str, output: str) -> dict[str, Any]:
    """`pairs.builder=realign`: rejected answers refilled from retrieved images (module docstring).

    Returns `build_in_shards`' result with the similarity histogram summarised under "similarity".
    """
    pairs, model = config.pairs, config.model
    settings = pairs
    masker, masker_manifest = _masker(config)
    rebased = [rebase_image(dict(r), image_root, output) for r in records]
    for record in rebased:
        image_path(record, output)  # a record without an image fails here, naming it
    keys = list(dict.fromkeys(r["image"] for r in rebased))  # relative to the output folder, as in the pairs

    @functools.cache
    def shard_builder() -> _ShardBuilder:  # the model loads only when a shard is left to build
        answerer = Answerer.load(model.path, ChatCodec.load, dtype=model.dtype, param_dtype=model.param_dtype,
                                 batch_size=pairs.batch_size)
        tools = _Tools(answerer, _image_index(answerer, keys, output, pairs.batch_size, pairs.whiten),
                       SentenceEmbedder.load(pairs.sentence_model or None))
        return _ShardBuilder(tools, masker, settings, output)

    manifest = {"builder": BUILDER, "records_path": os.path.abspath(config.data.path),
                "model": os.path.abspath(model.path), "dtype": model.dtype, "param_dtype": model.param_dtype,
                "sentence_model": pairs.sentence_model, "max_records": pairs.max_records, "whiten": pairs.whiten,
                **masker_manifest, **{name: getattr(pairs, name) for name in SEARCH_KEYS}}
    os.makedirs(output, exist_ok=True)
    selected = rebased[:pairs.max_records] if pairs.max_records else rebased
    result = build_in_shards(selected, output, pairs.shard_size, lambda part, counts: shard_builder()(part, counts),
                             manifest, desc="re-align")
    result["counts"], result["similarity"] = _histogram(result["counts"], output)
    return result
