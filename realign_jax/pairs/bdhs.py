"""BDHS: rejected answers the model writes itself with the image mostly hidden
(docs/methods.md section 4, arXiv 2407.02477), so the hallucinations come from its own
language prior rather than from rules or another model.

Each round, for every record still waiting:
- the ground-truth answer y_w is split into sentences (`split_sentences`, exactly recoverable),
  each cut after a random word (`cut_sentence`) and completed by the model from the
  ground-truth sentences before it plus the kept words; all sentences of all records go to the
  model as one batch. Only the first sentence of each completion is kept, so y~ has y_w's
  sentences, each rewritten from its cut on.
- a yes/no answer instead has its verdict flipped with probability `flip_probability` (drawn
  once per record, so the filter cannot select for flips): the flipped "Yes"/"No" is the kept
  prefix and the model writes the whole rest of the answer.
- every image token is hidden from the language model's attention unless its uniform draw
  is >= rho_th (`Answerer.complete(hide_image_fraction=rho_th)`).
- y~ is accepted when cos(embed(y~), embed(y_w)) < eps_s; otherwise cuts and masks are drawn
  again next round. The last of `rounds` rounds writes a whole answer with no prefix
  (image still hidden) and accepts it.

`BdhsSampler` does this for any `Answerer` (online BDHS can call it with the current policy);
`build_bdhs` is `pairs.builder=bdhs` of `mode=build_pairs`. Cuts and flips are drawn from the
record's own stream (seed, record id); masks and samples from (seed, round, ids of the records
in the call) and the batch a prompt lands in, so the same records with the same batch size, e.g.
a rebuilt shard, give the same pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from realign_jax.settings.runs import PairsRun
from realign_jax.settings.sections import BdhsSampling
from realign_jax.data.chat import ChatCodec
from realign_jax.data.text import VERDICT_RE, cased
from realign_jax.models.answering import Answerer, Prompt
from realign_jax.pairs.builder_inputs import has_question, image_path, rebase_image, with_chosen
from realign_jax.pairs.seeds import record_rng, stable_seed
from realign_jax.pairs.sentence_embedder import SentenceEmbedder
from realign_jax.pairs.shards import build_in_shards

BUILDER = "bdhs"
# A sentence ends at . ! or ? (closing quotes/brackets included) followed by whitespace, which
# stays with the sentence it follows. "e.g. a cup" splits too: harmless, the piece is just short.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*\s+")
_WORD_RE = re.compile(r"\S+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, each with the whitespace after it: "".join(result) == text."""
    pieces, start = [], 0
    for match in _SENTENCE_END_RE.finditer(text):
        pieces.append(text[start:match.end()])
        start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def cut_sentence(sentence: str, rng: np.random.Generator) -> tuple[str, str]:
    """(kept prefix, trailing whitespace) of a sentence cut after a random word.

    The prefix keeps 1..n-1 of its n words, so the model always has at least one word to write
    and is steered by at least one; a one-word sentence ("Yes.") keeps nothing and is rewritten.
    """
    body = sentence.rstrip()
    words = list(_WORD_RE.finditer(body))
    keep = int(rng.integers(1, len(words))) if len(words) >= 2 else 0
    prefix = body[:words[keep - 1].end()] if keep else body[:len(body) - len(body.lstrip())]
    return prefix, sentence[len(body):]


def first_sentence(text: str) -> str:
    """The first sentence of a completion (the model goes on past the sentence it was given)."""
    pieces = split_sentences(text)
    return pieces[0].rstrip() if pieces else ""


def flipped_verdict(answer: str) -> str | None:
    """The answer's opening up to its yes/no verdict, flipped ("Yes, there is..." -> "No"), or
    None when the answer does not open with a verdict."""
    verdict = VERDICT_RE.match(answer)
    if verdict is None:
        return None
    word = verdict.group(1)
    return answer[:verdict.start(1)] + cased(word, "no" if word.lower() == "yes" else "yes")


# The sampler's keys a shard's manifest records (a rerun with other values rebuilds it).
SAMPLING_KEYS = ("rho_th", "eps_s", "rounds", "flip_probability", "max_new_tokens", "temperature", "top_p")


@dataclasses.dataclass(frozen=True)
class BdhsResult:
    """A record's rejected answer and how it was got: `round` is 1-based."""

    text: str
    round: int
    similarity: float
    flipped: bool
    unguided: bool


@dataclasses.dataclass(frozen=True)
class Segment:
    """One completion a draft needs: the model continues `prompt_prefix`; the draft keeps
    `kept` + the completion (its first sentence unless `whole`) + `tail`."""

    prompt_prefix: str
    kept: str
    tail: str
    whole: bool


def draw_flip(answer: str, rng: np.random.Generator, probability: float) -> bool:
    """Whether the record's yes/no verdict is flipped; never for an answer without one."""
    return flipped_verdict(answer) is not None and bool(rng.random() < probability)


def guided_segments(answer: str, rng: np.random.Generator, flip: bool) -> list[Segment]:
    """One round's completions for an answer: the rest after its flipped verdict, or every
    sentence from a fresh random cut."""
    flipped = flipped_verdict(answer) if flip else None
    if flipped is not None:
        return [Segment(flipped.strip(), flipped, "", whole=True)]
    sentences, segments = split_sentences(answer), []
    for index, sentence in enumerate(sentences):
        kept, tail = cut_sentence(sentence, rng)
        segments.append(Segment(("".join(sentences[:index]) + kept).strip(), kept, tail, whole=False))
    return segments


def _assemble(segments: Sequence[Segment], completions: Sequence[str]) -> str:
    """The draft: each segment's kept words, its completion (which the Answerer returns with its
    own leading space, so it joins exactly) and its trailing whitespace."""
    return "".join(s.kept + (c if s.whole else first_sentence(c)) + s.tail for s, c in zip(segments, completions))


class BdhsSampler:
    """BDHS rejected answers from an `Answerer` (any model: the SFT base, or the current policy)."""

    def __init__(self, answerer: Answerer, embedder: SentenceEmbedder, settings: BdhsSampling,
                 progress: bool = False):
        self.answerer, self.embedder, self.settings, self.progress = answerer, embedder, settings, progress

    def rejected(self, records: Sequence[Mapping[str, Any]], images: Sequence[str], seed: int) -> list[BdhsResult]:
        """One result per record (`id`, `question`, non-empty `chosen`), in order; `images[i]` is
        the path of record i's image. A record without an id is keyed by its position here."""
        if len(records) != len(images):
            raise ValueError(f"BDHS needs one image per record: got {len(records)} records and {len(images)} images")
        ids = [str(r.get("id", i)) for i, r in enumerate(records)]
        rngs = [record_rng(seed, record_id) for record_id in ids]
        flips = [draw_flip(r["chosen"], rng, self.settings.flip_probability) for r, rng in zip(records, rngs)]
        results: list[BdhsResult | None] = [None] * len(records)
        pending = list(range(len(records)))
        for round_index in range(1, self.settings.rounds + 1):
            if not pending:
                break
            unguided = round_index == self.settings.rounds
            call_seed = stable_seed(seed, round_index, *[ids[i] for i in pending])
            if unguided:
                texts = self._unguided(records, images, pending, call_seed, round_index)
            else:
                segments = [guided_segments(records[i]["chosen"], rngs[i], flips[i]) for i in pending]
                texts = self._guided(records, images, pending, segments, call_seed, round_index)
            similarity = self.embedder.similarity(texts, [records[i]["chosen"] for i in pending])
            waiting = []
            for i, text, cosine in zip(pending, texts, similarity):
                if unguided or cosine < self.settings.eps_s:
                    results[i] = BdhsResult(text, round_index, float(cosine), flips[i] and not unguided, unguided)
                else:
                    waiting.append(i)
            pending = waiting
        return results  # type: ignore[return-value]  # the unguided round fills every slot left

    def pairs(self, records: Sequence[Mapping[str, Any]], image_root: str, output: str, seed: int,
              counts: Counter) -> list[dict[str, Any]]:
        """Preference records for those of `records` BDHS can rewrite (the rest counted in
        `counts`), images relative to `output`, where they will be written."""
        usable = [r for r in with_chosen(records, counts) if has_question(r, counts)
                  and _has_rejected(r, self.settings.write_to, counts)]
        results = self.rejected(usable, [image_path(dict(r), image_root) for r in usable], seed)
        built = (_pair(rebase_image(dict(r), image_root, output), res, self.settings, counts)
                 for r, res in zip(usable, results))
        return [row for row in built if row is not None]

    def _complete(self, prompts: Sequence[Prompt], call_seed: int, round_index: int) -> list[str]:
        s = self.settings
        return self.answerer.complete(prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                      top_p=s.top_p, hide_image_fraction=s.rho_th, seed=call_seed,
                                      desc=f"bdhs round {round_index}", progress=self.progress)

    def _guided(self, records: Sequence[Mapping[str, Any]], images: Sequence[str], pending: Sequence[int],
                segments: Sequence[Sequence[Segment]], call_seed: int, round_index: int) -> list[str]:
        """Every pending record's segments completed in one batch, reassembled per record."""
        prompts = [Prompt(images[i], records[i]["question"], segment.prompt_prefix)
                   for i, own in zip(pending, segments) for segment in own]
        completions = iter(self._complete(prompts, call_seed, round_index))
        return [_assemble(own, [next(completions) for _ in own]) for own in segments]

    def _unguided(self, records: Sequence[Mapping[str, Any]], images: Sequence[str], pending: Sequence[int],
                  call_seed: int, round_index: int) -> list[str]:
        return self._complete([Prompt(images[i], records[i]["question"]) for i in pending], call_seed, round_index)


def online_sampler(online: BdhsSampling) -> Callable[..., list[dict[str, Any]]]:
    """Online BDHS's round sampler (train/online_bdhs.py `RoundSampler`) for the `online_bdhs`
    section: `BdhsSampler.pairs` with the answerer the loop builds on the current policy."""
    settings, embedder = online, SentenceEmbedder.load(online.sentence_model or None)

    def sample(answerer: Answerer, records: Sequence[Mapping[str, Any]], image_root: str, output: str, seed: int,
               counts: Counter) -> list[dict[str, Any]]:
        return BdhsSampler(answerer, embedder, settings).pairs(records, image_root, output, seed, counts)

    return sample


def _has_rejected(record: Mapping[str, Any], write_to: str, counts: Counter) -> bool:
    """Writing to rejected_sampled keeps the record's own rejected answer: one without is skipped."""
    if write_to == "rejected_sampled" and not str(record.get("rejected") or "").strip():
        counts["dropped_no_rejected"] += 1
        return False
    return True


def _count(result: BdhsResult, counts: Counter) -> None:
    """How the sampler got there, for every record sampled (kept or not)."""
    counts[f"accepted_round_{result.round}"] += 1
    counts["flipped_yes_no"] += result.flipped
    counts["unguided"] += result.unguided


def _pair(record: Mapping[str, Any], result: BdhsResult, settings: BdhsSampling,
          counts: Counter) -> dict[str, Any] | None:
    """The preference record, or None (counted) when the model gave nothing or y_w itself. Into
    rejected_sampled, the record's own provenance stays and BDHS's goes under `sampled`."""
    _count(result, counts)
    text = result.text.strip()
    if not text:
        counts["dropped_empty_rejected"] += 1
        return None
    if text == record["chosen"].strip():
        counts["dropped_rejected_is_chosen"] += 1
        return None
    counts["kept"] += 1
    sampled = {"builder": BUILDER, "round": result.round, "rho_th": settings.rho_th, "similarity": result.similarity,
               "flipped": result.flipped, "unguided": result.unguided}
    provenance = dict(record.get("provenance") or {})
    if settings.write_to == "rejected":
        provenance.update(sampled)
    else:
        provenance["sampled"] = sampled
    return {**record, settings.write_to: text, "provenance": provenance}


def build_bdhs(config: PairsRun, records: Sequence[dict[str, Any]], image_root: str, output: str) -> dict[str, Any]:
    """`pairs.builder=bdhs`: rejected answers from the model at `model.path` with its image hidden."""
    pairs, model = config.pairs, config.model
    settings = pairs
    records = records[:pairs.max_records] if pairs.max_records else records

    @functools.cache
    def sampler() -> BdhsSampler:  # the model loads only when a shard is left to build
        answerer = Answerer.load(model.path, ChatCodec.load, dtype=model.dtype, param_dtype=model.param_dtype,
                                 batch_size=pairs.batch_size)
        return BdhsSampler(answerer, SentenceEmbedder.load(pairs.sentence_model or None), settings, progress=True)

    def build(part: Sequence[Mapping[str, Any]], counts: Counter) -> list[dict[str, Any]]:
        return sampler().pairs(part, image_root, output, pairs.seed, counts)

    manifest = {"builder": BUILDER, "records_path": os.path.abspath(config.data.path),
                "model": os.path.abspath(model.path), "dtype": model.dtype, "param_dtype": model.param_dtype,
                "sentence_model": pairs.sentence_model, "seed": pairs.seed, "batch_size": pairs.batch_size,
                "max_records": pairs.max_records, **{name: getattr(pairs, name) for name in SAMPLING_KEYS}}
    return build_in_shards(records, output, pairs.shard_size, build, manifest, desc="bdhs")
