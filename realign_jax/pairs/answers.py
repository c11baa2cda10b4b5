"""What the pair builders read in an answer: its word tokens with their offsets, the objects it
mentions through a CHAIR synonym table (`Lexicon`), their determiners and whether they are
negated, and the attribute, relation and count words around them (`ParsedAnswer`).

Shared by POVID's injection (pairs/injection.py) and Re-Align's masking (pairs/masking.py), so
neither builder imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from realign_jax.data.text import (
    ATTRIBUTE_WORDS,
    CENTRE_PHRASES,
    NUMBER_VALUES,
    OPPOSITE,
    plural,
    singular_phrase,
    singularize,
    synonym_lookup,
    tokenize,
)

VERBS = {"is": "are", "are": "is", "was": "were", "were": "was"}  # and their other number
RELATION_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in sorted([*OPPOSITE, *CENTRE_PHRASES], key=len,
                                                                             reverse=True)) + r")\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*", re.IGNORECASE)  # chair.tokenize's words, with their offsets
_NOT_A_COUNT_AFTER = frozenset(("the", "no", "this", "that", "each", "every", "any", "which"))  # "the one", "no one"
_DETERMINERS = frozenset(("a", "an", "the", "some", *NUMBER_VALUES))


class Token(NamedTuple):
    word: str  # lower case
    start: int
    end: int


class Mention(NamedTuple):
    name: str  # canonical object
    first: int  # token indices [first, last)
    last: int
    det: int | None  # token index of the noun phrase's determiner ("a", "the", "two", "no", ...)


class Lexicon:
    """The synonym table as lookups: surface phrase -> object, and noun inflection."""

    def __init__(self, synonyms: Mapping[str, Sequence[str]]):
        self.inverse = synonym_lookup(synonyms)  # a later line wins, as in chair.py
        surfaces = [" ".join(tokenize(name)) for canonical, names in synonyms.items() for name in (canonical, *names)]
        self.longest = max((k.count(" ") + 1 for k in self.inverse), default=1)
        # The table's own plurals ("person, people") beat the rule-based ones ("persons").
        self.plural_of = {s: plural(s) for s in surfaces if singular_phrase(s) == s}
        self.plural_of.update({singular_phrase(s): s for s in surfaces if singular_phrase(s) != s})
        self.singular_of = {p: s for s, p in self.plural_of.items() if p != s}

    def mentions(self, tokens: Sequence[Token]) -> list[tuple[str, int, int]]:
        """Greedy longest match on singularised words, as `chair.mentioned_objects` (no COCO rules)."""
        words = [singularize(t.word) for t in tokens]
        found, i = [], 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                name = self.inverse.get(" ".join(words[i:i + n]))
                if name is not None:
                    found.append((name, i, i + n))
                    i += n
                    break
            else:
                i += 1
        return found

    def is_plural(self, noun: str) -> bool:
        noun = noun.lower()
        if noun in self.singular_of or noun in self.plural_of:
            return noun in self.singular_of
        last = noun.rpartition(" ")[2]
        return singularize(last) != last

    def inflect(self, noun: str, to_plural: bool) -> str:
        key = noun.lower()
        if to_plural:
            return self.plural_of.get(key) or plural(noun)
        head, _, last = noun.rpartition(" ")
        return self.singular_of.get(key) or (f"{head} {singularize(last)}" if head else singularize(last))


class ParsedAnswer:
    """An answer's word tokens with their offsets, and the objects it mentions."""

    def __init__(self, text: str, lexicon: Lexicon):
        self.text = text
        self.tokens = [Token(m.group().lower(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]
        self.mentions = [Mention(name, a, b, self._determiner(a)) for name, a, b in lexicon.mentions(self.tokens)]
        self._in_mention = {i for m in self.mentions for i in range(m.first, m.last)}

    def adjacent(self, i: int) -> bool:
        """Tokens i and i+1 are separated by whitespace only (same phrase, no punctuation)."""
        return 0 <= i < len(self.tokens) - 1 and self.text[self.tokens[i].end:self.tokens[i + 1].start].isspace()

    def source(self, i: int) -> str:
        return self.text[self.tokens[i].start:self.tokens[i].end]

    def _determiner(self, first: int) -> int | None:
        k = first - 1
        while k >= 0 and self.tokens[k].word in ATTRIBUTE_WORDS and self.adjacent(k):
            k -= 1
        return k if k >= 0 and self.adjacent(k) and self.tokens[k].word in _DETERMINERS else None

    def negated(self, m: Mention) -> bool:
        return m.det is not None and NUMBER_VALUES.get(self.tokens[m.det].word, 1) == 0

    def indefinite(self, m: Mention) -> bool:
        """'a cup', 'two cups': the phrases that list what is there."""
        return m.det is not None and (self.tokens[m.det].word in ("a", "an", "some")
                                      or NUMBER_VALUES.get(self.tokens[m.det].word, 0) > 0)

    def attribute_positions(self) -> list[int]:
        return [i for i, t in enumerate(self.tokens) if t.word in ATTRIBUTE_WORDS and i not in self._in_mention]

    def relation_matches(self) -> list[re.Match[str]]:
        spans = [(self.tokens[m.first].start, self.tokens[m.last - 1].end) for m in self.mentions]
        return [r for r in RELATION_RE.finditer(self.text) if not overlaps(((r.start(), r.end()),), spans)]

    def count_positions(self) -> list[int]:
        """Number words that count the noun after them ('two cups', 'are no cups'; not 'one of')."""
        out = []
        for i, t in enumerate(self.tokens):
            if t.word not in NUMBER_VALUES or not self.adjacent(i) or self.tokens[i + 1].word == "of":
                continue
            before = self.tokens[i - 1].word if i and self.adjacent(i - 1) else None
            if before in _NOT_A_COUNT_AFTER or (t.word == "no" and before not in VERBS):
                continue
            out.append(i)
        return out

    def noun_after(self, i: int) -> tuple[int, int] | None:
        """Token range of the noun that a number at i counts (an object, else the next word)."""
        j = i + 1
        while j < len(self.tokens) and self.tokens[j].word in ATTRIBUTE_WORDS and self.adjacent(j - 1):
            j += 1
        if j >= len(self.tokens) or not self.adjacent(j - 1):
            return None
        return next(((m.first, m.last) for m in self.mentions if m.first == j), (j, j + 1))


def overlaps(spans: Iterable[tuple[int, int]], used: Sequence[tuple[int, int]]) -> bool:
    return any(a < d and c < b for a, b in spans for c, d in used)
