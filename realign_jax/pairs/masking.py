"""Re-Align's masked answers (docs/methods.md section 2, step 2): the ground-truth answer with
the spans about objects, attributes and relations replaced by [MASK], for the VLM to fill from a
retrieved image.

`MaskedAnswer` keeps the fixed text pieces and the masked original spans, so the original is
always recoverable and any filling keeps the fixed text verbatim.

`RuleMasker` needs no model. It masks segments, not words or sentences (the paper found
segment-level masking best):
- an object mention together with the size/colour words and the count word just before it:
  "two white blades" -> one [MASK], so the filler picks the count, attributes and object that
  agree with each other;
- a relation phrase ("to the left of"), a colour or size word standing alone ("is blue"), a
  count word not before an object.
Articles ("a", "an", "the") and all other words stay outside the masks: the template keeps the
answer's grammar, and after "an" the filler is steered to a noun phrase that fits it. Two
segments separated only by whitespace become one mask (two masks in a row cannot be filled
apart).

`LLMMasker` asks an OpenAI-compatible chat endpoint for the masking instead (as the paper
does) and accepts a reply only when it is a masking of the answer (`MaskedAnswer.parse`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from realign_jax.data.text import ATTRIBUTE_WORDS, load_synonyms
from realign_jax.pairs.answers import Lexicon, ParsedAnswer
from realign_jax.pairs.llm import ChatEndpoint

MASK = "[MASK]"


@dataclasses.dataclass(frozen=True)
class MaskedAnswer:
    """fixed[0] + MASK + fixed[1] + ... + MASK + fixed[-1]; `spans[j]` is what mask j hid."""

    fixed: tuple[str, ...]
    spans: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.fixed) != len(self.spans) + 1:
            raise ValueError(f"a masked answer needs one more fixed piece than spans, got {len(self.fixed)} "
                             f"and {len(self.spans)}")

    @classmethod
    def from_offsets(cls, text: str, offsets: Sequence[tuple[int, int]]) -> MaskedAnswer:
        """`text` with text[start:end] masked for each (start, end), sorted and disjoint."""
        fixed, spans, position = [], [], 0
        for start, end in offsets:
            fixed.append(text[position:start])
            spans.append(text[start:end])
            position = end
        fixed.append(text[position:])
        return cls(tuple(fixed), tuple(spans))

    @classmethod
    def parse(cls, original: str, masked: str) -> MaskedAnswer | None:
        """The masking `masked` (text with [MASK]s) describes, when it is one of `original`: its
        fixed pieces appear in `original` in order, from its start to its end, each mask hiding
        some non-blank text. Whitespace at a span's edges goes to the fixed text. None otherwise.
        Where the fixed text repeats ("is [MASK] the [MASK]" over "is to the left of the cup")
        the earliest fit is taken: the template is the same, only the spans split differently."""
        pieces = masked.split(MASK)
        if len(pieces) < 2:
            return None
        match = re.fullmatch("(.+?)".join(re.escape(p) for p in pieces), original, re.DOTALL)
        if match is None:
            return None
        offsets = []
        for j in range(1, len(pieces)):
            span = match.group(j)
            start = match.start(j) + len(span) - len(span.lstrip())
            end = match.end(j) - (len(span) - len(span.rstrip()))
            if start >= end:
                return None
            offsets.append((start, end))
        return cls.from_offsets(original, offsets)

    @property
    def num_masks(self) -> int:
        return len(self.spans)

    @property
    def template(self) -> str:
        return MASK.join(self.fixed)

    def fill(self, values: Sequence[str]) -> str:
        """The fixed text with mask j replaced by values[j]."""
        if len(values) != self.num_masks:
            raise ValueError(f"{self.num_masks} masks but {len(values)} fills")
        return "".join(piece + value for piece, value in zip(self.fixed, values)) + self.fixed[-1]

    def original(self) -> str:
        return self.fill(self.spans)

    def prefix(self, j: int, values: Sequence[str]) -> str:
        """The text before mask j, masks 0..j-1 filled with values."""
        return "".join(piece + value for piece, value in zip(self.fixed[:j], values[:j])) + self.fixed[j]


class Masker(Protocol):
    """What the Re-Align builder needs of a masker: its name (for provenance and the manifest),
    the drop reason when it cannot mask a record, and the masks of a batch of records."""

    name: str
    drop_reason: str

    def mask_all(self, records: Sequence[Mapping[str, Any]]) -> list[MaskedAnswer | None]: ...


class RuleMasker:
    """Segment masks from a CHAIR synonym table and the injector's attribute/relation/count words."""

    name = "rules"
    drop_reason = "nothing_to_mask"

    def __init__(self, synonyms: Mapping[str, Sequence[str]]):
        self.lexicon = Lexicon(synonyms)

    @classmethod
    def from_file(cls, path: str) -> RuleMasker:
        return cls(load_synonyms(path))

    def mask(self, text: str) -> MaskedAnswer | None:
        """The answer's segments masked, or None when it has none."""
        offsets = self.segments(text)
        return MaskedAnswer.from_offsets(text, offsets) if offsets else None

    def mask_all(self, records: Sequence[Mapping[str, Any]]) -> list[MaskedAnswer | None]:
        return [self.mask(record["chosen"]) for record in records]

    def segments(self, text: str) -> list[tuple[int, int]]:
        """Character ranges to mask, sorted, disjoint and never separated by whitespace only."""
        doc = ParsedAnswer(text, self.lexicon)
        counts = set(doc.count_positions())
        ranges = [_token_range(doc, _object_start(doc, m.first, counts), m.last - 1) for m in doc.mentions]
        ranges += [_token_range(doc, i, i) for i in (*doc.attribute_positions(), *counts)]
        ranges += [(r.start(), r.end()) for r in doc.relation_matches()]
        return _merge(text, ranges)


def _object_start(doc: ParsedAnswer, first: int, counts: set[int]) -> int:
    """The first token of an object's segment: its adjectives and its count word join it."""
    while first > 0 and doc.tokens[first - 1].word in ATTRIBUTE_WORDS and doc.adjacent(first - 1):
        first -= 1
    return first - 1 if first - 1 in counts else first


def _token_range(doc: ParsedAnswer, first: int, last: int) -> tuple[int, int]:
    return doc.tokens[first].start, doc.tokens[last].end


def _merge(text: str, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and (start <= merged[-1][1] or not text[merged[-1][1]:start].strip()):
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


LLM_INSTRUCTIONS = (
    "You mask answers about images. Replace every segment of the answer that states an object, an "
    "attribute of an object (colour, size, count) or a relation between objects with [MASK], one [MASK] "
    "per segment. Keep every other character exactly as it is, including articles and punctuation. "
    "Reply with the masked answer only.")


class LLMMasker:
    """Masks from an OpenAI-compatible chat endpoint (pairs/llm.py). A reply that is not a
    masking of the answer gives None (the builder counts `dropped_bad_llm_mask`); a failed
    request or a reply without a message raises naming the record."""

    name = "llm"
    drop_reason = "bad_llm_mask"

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint

    @classmethod
    def from_config(cls, llm: Any) -> LLMMasker:
        return cls(ChatEndpoint.from_config(llm, "pairs.masker='llm'"))

    def mask(self, record: Mapping[str, Any]) -> MaskedAnswer | None:
        user = f"Question: {record.get('question', '')}\nAnswer: {record['chosen']}"
        reply = self.endpoint.ask(LLM_INSTRUCTIONS, user, str(record.get("id", "?")), "masking")
        return MaskedAnswer.parse(record["chosen"], reply.strip())

    def mask_all(self, records: Sequence[Mapping[str, Any]]) -> list[MaskedAnswer | None]:
        return self.endpoint.map(self.mask, records)
