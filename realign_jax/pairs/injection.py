"""POVID's textual hallucination injection, rule-based (docs/methods.md section 3).

POVID has GPT-4V rewrite a ground-truth answer with plausible hallucinations. Here no hosted
model is needed: `InjectionStats` learns from the chosen answers of the data set itself which
objects are mentioned together and which colour, size, relation and number words it uses;
`inject` then adds (or swaps in) an absent object that co-occurs with the mentioned ones more
often than chance (the mistake a language prior makes), swaps an attribute or a relation,
changes a count, or flips a yes/no verdict. Objects are recognised through a CHAIR synonym
table (canonical name -> surface words, `data.text.load_synonyms`), so any data set's text
works, and CHAIR counts the injected objects exactly as the builder meant them.

`inject_records` turns SFT-style records into preference records, deterministic in
(seed, record id) so a rerun or a resumed run writes the same pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from realign_jax.settings.sections import INJECTION_KINDS
from realign_jax.data.text import (
    COLOR_WORDS,
    NUMBER_VALUES,
    OPPOSITE,
    SIDE_PHRASES,
    VERDICT_RE,
    cased,
    with_article,
)
from realign_jax.pairs.answers import VERBS, Lexicon, Mention, ParsedAnswer, overlaps
from realign_jax.pairs.seeds import record_rng

BUILDER = "povid_injection"
KINDS = INJECTION_KINDS
# English word classes an edit stays within (data/text.py); which members a data set uses is
# learnt from its text. A centre ("in the middle") has no opposite: it is swapped for a side.

_Piece = tuple[int, int, str]  # replace text[start:end] of the original answer


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change, for provenance: `before` is "" for an inserted object."""

    kind: str
    before: str
    after: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "from": self.before, "to": self.after}


@dataclasses.dataclass(frozen=True)
class Injection:
    text: str  # the rejected answer
    edits: tuple[Edit, ...]


@dataclasses.dataclass(frozen=True)
class InjectionStats:
    """What the injector may say, learnt from a data set's chosen answers (never from a world's
    config): object frequencies and co-occurrence (objects mentioned in one answer, negated
    ones left out), and the colour, size, relation and count words in use."""

    synonyms: dict[str, list[str]]
    objects: dict[str, int]
    cooccurrence: dict[str, dict[str, int]]
    colors: dict[str, int]
    sizes: dict[str, int]
    relations: dict[str, int]
    numbers: dict[str, int]
    num_answers: int

    @functools.cached_property
    def lexicon(self) -> Lexicon:
        return Lexicon(self.synonyms)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]],
                     synonyms: Mapping[str, Sequence[str]]) -> InjectionStats:
        """Counts over the records' `chosen` answers; `synonyms` as `chair.load_synonyms` reads it."""
        lexicon = Lexicon(synonyms)
        objects: Counter[str] = Counter()
        pairs: dict[str, Counter[str]] = {}
        colors: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        relations: Counter[str] = Counter()
        numbers: Counter[str] = Counter()
        num_answers = 0
        for record in records:
            if not record.get("chosen"):
                continue
            num_answers += 1
            doc = ParsedAnswer(record["chosen"], lexicon)
            present = sorted({m.name for m in doc.mentions if not doc.negated(m)})
            objects.update(present)
            for a in present:
                pairs.setdefault(a, Counter()).update(b for b in present if b != a)
            for i in doc.attribute_positions():
                (colors if doc.tokens[i].word in COLOR_WORDS else sizes)[doc.tokens[i].word] += 1
            relations.update(m.group().lower() for m in doc.relation_matches())
            numbers.update(doc.tokens[i].word for i in doc.count_positions())
        return cls({k: list(v) for k, v in synonyms.items()}, dict(objects),
                   {a: dict(c) for a, c in pairs.items()}, dict(colors), dict(sizes), dict(relations),
                   dict(numbers), num_answers)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> InjectionStats:
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


class _Site(NamedTuple):
    """A place an edit can go: the spans it touches, and how to make it (None when it cannot)."""

    spans: tuple[tuple[int, int], ...]
    make: Callable[[], tuple[list[_Piece], Edit] | None]
    preferred: bool = False


def _article_piece(doc: ParsedAnswer, i: int, next_word: str) -> _Piece:
    """Token i ('a'/'an') made to agree with the word that now follows it."""
    return doc.tokens[i].start, doc.tokens[i].end, cased(doc.source(i), with_article(next_word).split(" ")[0])


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_object(stats: InjectionStats, context: Sequence[str], taken: set[str],
                   rng: np.random.Generator) -> str | None:
    """An unmentioned object drawn in proportion to its association with the mentioned ones: the
    companion a language prior would add (by plain frequency when nothing is associated)."""
    names = [n for n in sorted(stats.objects) if n not in taken]
    if not names:
        return None
    weights = np.array([sum(_association(stats, m, n) for m in context) for n in names])
    if not weights.any():
        weights = np.array([stats.objects[n] for n in names], float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _association(stats: InjectionStats, a: str, b: str) -> float:
    """Local mutual information, count * log(observed / expected), kept where positive. Raw
    counts would favour whatever is frequent (COCO's 'person' co-occurs with everything) over
    the pairs seen together more often than chance (cup and saucer)."""
    together = stats.cooccurrence.get(a, {}).get(b, 0)
    if not together:
        return 0.0
    return together * max(0.0, math.log(together * stats.num_answers / (stats.objects[a] * stats.objects[b])))


def _object_sites(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator, taken: set[str]) -> list[_Site]:
    live = [m for m in doc.mentions if not doc.negated(m)]
    context = sorted({m.name for m in live})
    sites = [_replace_site(doc, stats, rng, m, context, taken) for m in live]
    listed = [m for m in live if doc.indefinite(m)]
    if listed:
        sites.insert(0, _add_site(doc, stats, rng, listed[-1], context, taken))
    return sites


def _add_site(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator, last: Mention,
              context: Sequence[str], taken: set[str]) -> _Site:
    """A new item at the end of the list that holds `last`: 'a cup and a saucer' -> 'a cup, a saucer and a knife'."""
    end = doc.tokens[last.last - 1].end
    d = last.det
    conj = d - 1 if d is not None and d >= 2 and doc.tokens[d - 1].word == "and" and doc.adjacent(d - 1) else None
    join = None if conj is None else (doc.tokens[conj - 1].end, doc.tokens[conj].end)  # " and" or ", and"
    oxford = join is not None and "," in doc.text[join[0]:join[1]]

    def make() -> tuple[list[_Piece], Edit] | None:
        name = _sample_object(stats, context, taken, rng)
        if name is None:
            return None
        taken.add(name)
        phrase = with_article(name)
        pieces: list[_Piece] = [(end, end, f"{',' if oxford else ''} and {phrase}")]
        if join is not None:
            pieces.append((*join, ","))
        return pieces, Edit("object", "", phrase)

    return _Site(((end, end),) if join is None else (join, (end, end)), make, preferred=True)


def _replace_site(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator, m: Mention,
                  context: Sequence[str], taken: set[str]) -> _Site:
    """The mentioned noun swapped for an absent, co-occurring object (in the same number)."""
    start, end = doc.tokens[m.first].start, doc.tokens[m.last - 1].end
    article = m.det if m.det == m.first - 1 and doc.tokens[m.first - 1].word in ("a", "an") else None

    def make() -> tuple[list[_Piece], Edit] | None:
        name = _sample_object(stats, context, taken, rng)
        if name is None:
            return None
        taken.add(name)
        surface = doc.text[start:end]
        word = stats.lexicon.inflect(name, True) if stats.lexicon.is_plural(surface) else name
        pieces: list[_Piece] = [(start, end, cased(surface, word))]
        if article is not None:
            pieces.append(_article_piece(doc, article, word))
        return pieces, Edit("object", surface, word)

    return _Site(((doc.tokens[article].start if article is not None else start, end),), make)


def _attribute_sites(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator) -> list[_Site]:
    sites = []
    for i in doc.attribute_positions():
        word = doc.tokens[i].word
        vocabulary = stats.colors if word in COLOR_WORDS else stats.sizes
        options = sorted(w for w in vocabulary if w != word)
        if options:
            sites.append(_swap_site(doc, i, options, rng))
    return sites


def _swap_site(doc: ParsedAnswer, i: int, options: Sequence[str], rng: np.random.Generator) -> _Site:
    """Colour for colour, size for size; 'an orange cup' -> 'a red cup'."""
    article = i - 1 if i and doc.tokens[i - 1].word in ("a", "an") and doc.adjacent(i - 1) else None

    def make() -> tuple[list[_Piece], Edit]:
        new = _pick(rng, options)
        pieces: list[_Piece] = [(doc.tokens[i].start, doc.tokens[i].end, cased(doc.source(i), new))]
        if article is not None:
            pieces.append(_article_piece(doc, article, new))
        return pieces, Edit("attribute", doc.source(i), new)

    start = doc.tokens[article if article is not None else i].start
    return _Site(((start, doc.tokens[i].end),), make)


def _relation_sites(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator) -> list[_Site]:
    """'left of' <-> 'right of', 'above' <-> 'below', ...; a centre becomes a side the data uses."""
    sites = []
    for match in doc.relation_matches():
        key = match.group().lower()
        options = [OPPOSITE[key]] if key in OPPOSITE else sorted(p for p in SIDE_PHRASES if stats.relations.get(p))
        if options:
            sites.append(_relation_site(match, options, rng))
    return sites


def _relation_site(match: re.Match[str], options: Sequence[str], rng: np.random.Generator) -> _Site:
    def make() -> tuple[list[_Piece], Edit]:
        new = cased(match.group(), _pick(rng, options))
        return [(match.start(), match.end(), new)], Edit("relation", match.group(), new)

    return _Site(((match.start(), match.end()),), make)


def _count_sites(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator) -> list[_Site]:
    sites = []
    for i in doc.count_positions():
        value = NUMBER_VALUES[doc.tokens[i].word]
        # "there are no cups" reads well, "a dish and no cups" does not: zero only after a verb
        after_verb = i > 0 and doc.tokens[i - 1].word in VERBS and doc.adjacent(i - 1)
        options = sorted(w for w in stats.numbers if NUMBER_VALUES.get(w, value) != value
                         and (after_verb or NUMBER_VALUES[w] > 0))
        if options:
            sites.append(_number_site(doc, i, options, rng, stats.lexicon))
    return sites


def _number_site(doc: ParsedAnswer, i: int, options: Sequence[str], rng: np.random.Generator,
                 lexicon: Lexicon) -> _Site:
    """Another number; across one/many the noun and a verb just before follow ('is one cup' -> 'are two cups')."""
    noun = doc.noun_after(i)
    verb = i - 1 if i and doc.tokens[i - 1].word in VERBS and doc.adjacent(i - 1) else None
    spans = [(doc.tokens[i].start, doc.tokens[i].end)]
    if noun is not None:
        spans.append((doc.tokens[noun[0]].start, doc.tokens[noun[1] - 1].end))
    if verb is not None:
        spans.append((doc.tokens[verb].start, doc.tokens[verb].end))

    def make() -> tuple[list[_Piece], Edit]:
        new = _pick(rng, options)
        written = cased(doc.source(i), new)
        pieces: list[_Piece] = [(*spans[0], written)]
        singular = NUMBER_VALUES[new] == 1
        if singular != (NUMBER_VALUES[doc.tokens[i].word] == 1):
            if noun is not None:
                surface = doc.text[slice(*spans[1])]
                pieces.append((*spans[1], lexicon.inflect(surface, not singular)))
            if verb is not None:
                pieces.append((*spans[-1], cased(doc.source(verb), VERBS[doc.tokens[verb].word])))
        return pieces, Edit("count", doc.source(i), written)

    return _Site(tuple(spans), make)


def _sites(doc: ParsedAnswer, stats: InjectionStats, rng: np.random.Generator, kinds: Iterable[str],
           taken: set[str]) -> dict[str, list[_Site]]:
    finders = {"object": lambda: _object_sites(doc, stats, rng, taken),
               "attribute": lambda: _attribute_sites(doc, stats, rng),
               "relation": lambda: _relation_sites(doc, stats, rng),
               "count": lambda: _count_sites(doc, stats, rng)}
    return {kind: finders[kind]() for kind in kinds if kind in finders}


def _choose(sites: dict[str, list[_Site]], n: int, rng: np.random.Generator) -> tuple[list[_Piece], list[Edit]]:
    """Up to n edits at places that do not overlap: a kind at random among those still possible,
    then a place (an object is added to a list before one is replaced)."""
    pieces: list[_Piece] = []
    edits: list[Edit] = []
    used: list[tuple[int, int]] = []
    while len(edits) < n:
        free = {k: [s for s in v if not overlaps(s.spans, used)] for k, v in sites.items()}
        kinds = [k for k, v in free.items() if v]
        if not kinds:
            break
        kind = _pick(rng, kinds)
        preferred = [s for s in free[kind] if s.preferred]
        site = preferred[0] if preferred else free[kind][int(rng.integers(len(free[kind])))]
        sites[kind].remove(site)
        made = site.make()
        if made is not None:
            used.extend(site.spans)
            pieces.extend(made[0])
            edits.append(made[1])
    return pieces, edits


def _flip(doc: ParsedAnswer, verdict: re.Match[str]) -> tuple[list[_Piece], list[Edit], bool]:
    """Yes <-> No, and 'there is a cup' <-> 'there is no cup' after it; the bool says whether the
    statement was an existence one (else the caller makes it agree by another edit)."""
    word = verdict.group(1)
    flipped = cased(word, "no" if word.lower() == "yes" else "yes")
    pieces: list[_Piece] = [(verdict.start(1), verdict.end(1), flipped)]
    edits = [Edit("verdict", word, flipped)]
    t = doc.tokens
    for i in range(len(t) - 3):
        if not (t[i].word == "there" and t[i + 1].word in VERBS and doc.adjacent(i) and doc.adjacent(i + 1)):
            continue
        det = doc.source(i + 2)
        if word.lower() == "yes" and (t[i + 2].word in ("a", "an", "some") or NUMBER_VALUES.get(t[i + 2].word, 0) > 0):
            pieces.append((t[i + 2].start, t[i + 2].end, "no"))
            edits.append(Edit("verdict", det, "no"))
            return pieces, edits, True
        if word.lower() == "no" and t[i + 2].word == "no" and doc.adjacent(i + 2):
            if t[i + 1].word in ("is", "was"):
                article = with_article(doc.source(i + 3)).split(" ")[0]
                pieces.append((t[i + 2].start, t[i + 2].end, article))
            else:  # "there are no cups" -> "there are cups"
                article = ""
                pieces.append((t[i + 2].start, t[i + 3].start, ""))
            edits.append(Edit("verdict", det, article))
            return pieces, edits, True
        break
    return pieces, edits, False


def _apply(text: str, pieces: Iterable[_Piece]) -> str:
    for start, end, new in sorted(pieces, key=lambda p: (p[0], p[1]), reverse=True):
        text = text[:start] + new + text[end:]
    return text


def inject(answer: str, stats: InjectionStats, rng: np.random.Generator, kinds: Sequence[str] = KINDS,
           max_edits: int = 2) -> Injection | None:
    """A hallucinated rewrite of a ground-truth answer, or None when no edit of `kinds` applies.

    A yes/no answer gets its verdict flipped (with the statement after it made to agree) when
    "verdict" is in `kinds`; any other answer gets 1..max_edits edits of random kinds.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown injection kinds {unknown}; choose from {KINDS}")
    if max_edits < 1:
        raise ValueError(f"max_edits={max_edits} must be >= 1")
    doc = ParsedAnswer(answer, stats.lexicon)
    taken = {m.name for m in doc.mentions}
    verdict = VERDICT_RE.match(answer) if "verdict" in kinds else None
    if verdict is not None:
        pieces, edits, done = _flip(doc, verdict)
        if not done:  # "Yes, the cup is left of the dish" -> "No, the cup is right of the dish"
            body = _sites(doc, stats, rng, [k for k in kinds if k in ("attribute", "relation", "count")], taken)
            more_pieces, more_edits = _choose(body, 1, rng)
            pieces += more_pieces
            edits += more_edits
    else:
        pieces, edits = _choose(_sites(doc, stats, rng, kinds, taken), int(rng.integers(1, max_edits + 1)), rng)
    text = _apply(answer, pieces)
    return Injection(text, tuple(edits)) if edits and text != answer else None


def inject_records(records: Iterable[Mapping[str, Any]], stats: InjectionStats, seed: int, *,
                   kinds: Sequence[str] = KINDS, max_edits: int = 2,
                   counts: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """Preference records: `chosen` kept, `rejected` the injected answer, the edits in `provenance`.

    Records without a chosen answer, or with nothing to edit, are skipped and counted in
    `counts` ("dropped_no_chosen", "dropped_nothing_to_edit"; "kept" and "edits_<kind>" for the
    rest). A record without an id is keyed by its position, which a resumed run only
    reproduces when it reads the same records from the start.
    """
    counts = Counter() if counts is None else counts
    for index, record in enumerate(records):
        chosen = record.get("chosen")
        if not chosen:
            counts["dropped_no_chosen"] += 1
            continue
        injection = inject(chosen, stats, record_rng(seed, str(record.get("id", index))), kinds, max_edits)
        if injection is None:
            counts["dropped_nothing_to_edit"] += 1
            continue
        counts["kept"] += 1
        counts.update(f"edits_{e.kind}" for e in injection.edits)
        provenance = {**(record.get("provenance") or {}), "builder": BUILDER,
                      "edits": [e.to_json() for e in injection.edits]}
        yield {**record, "rejected": injection.text, "provenance": provenance}
