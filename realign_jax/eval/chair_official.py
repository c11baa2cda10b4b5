"""The official CHAIR code's reading of a caption, quirks included (`eval.chair_protocol=official`).

Published CHAIR numbers come from LisaAnne/Hallucination `utils/chair.py`: `nltk.word_tokenize`
(nltk 3.2.5: Punkt sentences, then the Treebank rules), `pattern.en.singularize` (pattern 3.6),
a synonym table split on ', ', and a two-word merge. Neither library is a dependency here, so
their rules are written out below. What that reading does differently from chair.py's
corrected one, and what this module therefore reproduces:
- 'bus' -> 'bu', 'glass' -> 'glas', 'tennis' -> 'tenni', 'ties' -> 'ty' (pattern strips a
  final 's'; its 'tie' exception never fires), 'tvs' -> 'tv';
- entries after a double space in synonyms.txt ('  motor bike', '  cheesecake') keep a
  leading space and never match;
- only the hard-coded two-word phrases merge, so 'stove top oven' is 'stove' + 'oven';
- tokens keep attached punctuation the Treebank rules do not split ('dog/cat', 'hot-dog').
Punkt's learnt abbreviations are not reproduced: every '.', '?' or '!' before whitespace ends
a sentence, which changes an object list only if an object word were such an abbreviation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# --- nltk 3.2.5 word_tokenize ---------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.?!][\"')\]}»”’]*(\s+)")
_CLOSERS = "\\]\\)}>\"'"  # what may follow a sentence's final period and stay with it
_TREEBANK_BEFORE_PARENS: tuple[tuple[str, str], ...] = (
    # starting quotes (nltk's improved unicode quotes first)
    (r"([«“‘])", r" \1 "), (r'^"', r"``"), (r"(``)", r" \1 "), (r'([ (\[{<])"', r"\1 `` "),
    # punctuation: the improved final period, then the Treebank list
    (rf"([^\.])(\.)([{_CLOSERS}»”’ ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"), (r"([:,])$", r" \1 "), (r"\.\.\.", r" ... "), (r"[;@#$%&]", r" \g<0> "),
    (rf"([^\.])(\.)([{_CLOSERS}]*)\s*$", r"\1 \2\3 "), (r"[?!]", r" \g<0> "), (r"([^'])' ", r"\1 ' "),
    # parentheses and brackets, double dashes
    (r"[\]\[\(\)\{\}\<\>]", r" \g<0> "), (r"--", r" -- "),
)
_TREEBANK_AFTER_PADDING: tuple[tuple[str, str], ...] = (
    # ending quotes and clitics
    (r"([»”’])", r" \1 "), (r'"', " '' "), (r"(\S)('')", r"\1 \2 "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "), (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
    # MacIntyre's contractions
    *((rf"(?i)\b({a})({b})\b", r" \1 \2 ") for a, b in (("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"),
                                                        ("got", "ta"), ("lem", "me"), ("mor", "'n"))),
    (r"(?i)\b(wan)(na)\s", r" \1 \2 "), (r"(?i) ('t)(is)\b", r" \1 \2 "), (r"(?i) ('t)(was)\b", r" \1 \2 "),
)
_BEFORE = tuple((re.compile(p), r) for p, r in _TREEBANK_BEFORE_PARENS)
_AFTER = tuple((re.compile(p), r) for p, r in _TREEBANK_AFTER_PADDING)


def sentences(text: str) -> list[str]:
    """Punkt's split as it falls on captions: after '.', '?' or '!' (and closing quotes) and whitespace."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        out.append(text[start:match.start(1)])
        start = match.end(1)
    return [s for s in (*out, text[start:]) if s]


def treebank_tokenize(sentence: str) -> list[str]:
    """nltk 3.2.5's Treebank word tokenizer with the unicode-quote rules `word_tokenize` adds."""
    for pattern, replacement in _BEFORE:
        sentence = pattern.sub(replacement, sentence)
    sentence = f" {sentence} "
    for pattern, replacement in _AFTER:
        sentence = pattern.sub(replacement, sentence)
    return sentence.split()


def word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize` (3.2.5): sentences, then each sentence's Treebank tokens."""
    return [token for sentence in sentences(text) for token in treebank_tokenize(sentence)]


# --- pattern 3.6 singularize ---------------------------------------------------------------

_PREPOSITIONS = frozenset((
    "about", "above", "across", "after", "among", "around", "at", "athwart", "before", "behind", "below", "beneath",
    "beside", "besides", "between", "betwixt", "beyond", "but", "by", "during", "except", "for", "from", "in",
    "into", "near", "of", "off", "on", "onto", "out", "over", "since", "till", "to", "under", "until", "unto",
    "upon", "with"))
# pattern returns a word unchanged when it is the END of one of these ('wine' ends 'swine').
_UNCHANGED = (
    "bison", "debris", "headquarters", "pincers", "trout", "bream", "diabetes", "herpes", "pliers", "tuna",
    "breeches", "djinn", "high-jinks", "proceedings", "whiting", "britches", "eland", "homework", "rabies",
    "wildebeest", "carp", "elk", "innings", "salmon", "chassis", "flounder", "jackanapes", "scissors", "christmas",
    "gallows", "mackerel", "series", "clippers", "georgia", "measles", "shears", "cod", "graffiti", "mews",
    "species", "contretemps", "mumps", "swine", "corps", "news", "swiss",
    # uncountable
    "advice", "equipment", "happiness", "luggage", "software", "bread", "fruit", "information", "mathematics",
    "progress", "understanding", "butter", "furniture", "ketchup", "mayonnaise", "research", "water", "cheese",
    "garbage", "knowledge", "meat", "rice", "electricity", "gravel", "love", "mustard", "sand")
# Words whose '-s' plural pattern returns unchanged (meant to keep '-ie': 'collies' stays
# 'collies'). It also lists '^pie' and '^tie', but compares them with `endswith` as plain
# strings, so they never match: 'ties' -> 'ty', 'pies' -> 'py'.
_IE_WORDS = (
    "alergie", "cutie", "hoagie", "newbie", "softie", "veggie", "auntie", "doggie", "hottie", "nightie", "sortie",
    "weenie", "beanie", "eyrie", "indie", "oldie", "stoolie", "yuppie", "birdie", "freebie", "junkie", "sweetie",
    "zombie", "bogie", "goonie", "laddie", "pixie", "techie", "bombie", "groupie", "laramie", "quickie", "collie",
    "hankie", "lingerie", "reverie", "toughie", "cookie", "hippie", "meanie", "rookie", "valkyrie")
_IRREGULAR = {  # plural ending -> singular ending ('policemen' -> 'policeman', 'four' -> 'fmy')
    "atlantes": "atlas", "atlases": "atlas", "axes": "axe", "beeves": "beef", "brethren": "brother",
    "children": "child", "corpora": "corpus", "corpuses": "corpus", "ephemerides": "ephemeris", "feet": "foot",
    "ganglia": "ganglion", "geese": "goose", "genera": "genus", "genii": "genie", "graffiti": "graffito",
    "helves": "helve", "kine": "cow", "leaves": "leaf", "loaves": "loaf", "men": "man", "mongooses": "mongoose",
    "monies": "money", "moves": "move", "mythoi": "mythos", "numena": "numen", "occipita": "occiput",
    "octopodes": "octopus", "opera": "opus", "opuses": "opus", "our": "my", "oxen": "ox", "penes": "penis",
    "penises": "penis", "people": "person", "sexes": "sex", "soliloquies": "soliloquy", "teeth": "tooth",
    "testes": "testis", "trilbys": "trilby", "turves": "turf", "zoa": "zoon"}
_SUFFIX_RULES = tuple((re.compile(p), r) for p, r in (  # the first that matches applies
    (r"(?i)(.)ae$", r"\1a"), (r"(?i)(.)itis$", r"\1itis"), (r"(?i)(.)eaux$", r"\1eau"), (r"(?i)(quiz)zes$", r"\1"),
    (r"(?i)(matr)ices$", r"\1ix"), (r"(?i)(ap|vert|ind)ices$", r"\1ex"), (r"(?i)^(ox)en", r"\1"),
    (r"(?i)(alias|status)es$", r"\1"), (r"(?i)([octop|vir])i$", r"\1us"), (r"(?i)(cris|ax|test)es$", r"\1is"),
    (r"(?i)(shoe)s$", r"\1"), (r"(?i)(o)es$", r"\1"), (r"(?i)(bus)es$", r"\1"), (r"(?i)([m|l])ice$", r"\1ouse"),
    (r"(?i)(x|ch|ss|sh)es$", r"\1"), (r"(?i)(m)ovies$", r"\1ovie"), (r"(?i)(.)ombies$", r"\1ombie"),
    (r"(?i)(s)eries$", r"\1eries"), (r"(?i)([^aeiouy]|qu)ies$", r"\1y"),
    (r"([aeo]l)ves$", r"\1f"), (r"([^d]ea)ves$", r"\1f"), (r"arves$", "arf"), (r"erves$", "erve"),
    (r"([nlw]i)ves$", r"\1fe"), (r"(?i)([lr])ves$", r"\1f"), (r"([aeo])ves$", r"\1ve"), (r"(?i)(sive)s$", r"\1"),
    (r"(?i)(tive)s$", r"\1"), (r"(?i)(hive)s$", r"\1"), (r"(?i)([^f])ves$", r"\1fe"),
    (r"(?i)(^analy)ses$", r"\1sis"),
    (r"(?i)((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis"),
    (r"(?i)(.)opses$", r"\1opsis"), (r"(?i)(.)yses$", r"\1ysis"), (r"(?i)(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
    (r"(?i)(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"), (r"(?i)(.)oses$", r"\1osis"),
    (r"(?i)([ti])a$", r"\1um"), (r"(?i)(n)ews$", r"\1ews"), (r"(?i)s$", "")))


def singularize(word: str) -> str:
    """`pattern.en.singularize` (pattern 3.6) for a noun, its misreadings included."""
    head, *rest = word.split("-")
    if rest and rest[0] in _PREPOSITIONS:  # mothers-in-law
        return f"{singularize(head)}-{'-'.join(rest)}"
    if word.endswith("'"):
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    if any(w.endswith(lower) for w in _UNCHANGED):
        return word
    if any(lower.endswith(w + "s") for w in _IE_WORDS):
        return lower
    for plural, singular in _IRREGULAR.items():
        if lower.endswith(plural):
            return re.sub(f"(?i){plural}$", singular, word)
    for pattern, replacement in _SUFFIX_RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word)
    return word


# --- synonyms and the caption's objects ----------------------------------------------------

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# The official two-word phrases read as one word. Its list also holds 'stove top oven', which
# a two-word lookup never meets; 'wine glas' is how 'wine glass' reads once singularised.
DOUBLE_WORDS: dict[str, str] = {
    **{w: w for w in ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                      "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                      "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                      "mobile phone", "teddy bear", "hair drier", "potted plant", "laptop computer", "home plate",
                      "train track")},
    **{f"{q} {a}": a for q in ("baby", "adult") for a in _ANIMALS},
    "passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
    "wine glas": "wine glass",
}


def read_synonyms(path: str) -> dict[str, list[str]]:
    """synonyms.txt split as the official code splits it (on ', ', after stripping the line):
    {canonical: every entry of its lines}, leading spaces kept, so '  motor bike' never matches."""
    table: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                names = line.strip().split(", ")
                table.setdefault(names[0], []).extend(names)
    return table


def inverse_synonyms(synonyms: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Entry -> canonical, the entries taken literally (the official dict; a later line wins)."""
    return {name: canonical for canonical, names in synonyms.items() for name in (canonical, *names)}


def caption_objects(caption: str, inverse: Mapping[str, str]) -> list[str]:
    """`CHAIR.caption_to_words`'s canonical objects, in order, repeats kept."""
    words = [singularize(w) for w in word_tokenize(caption.lower())]
    merged, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in DOUBLE_WORDS:
            merged.append(DOUBLE_WORDS[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    if "toilet" in merged and "seat" in merged:  # "the seat of the toilet" is no chair
        merged = [w for w in merged if w != "seat"]
    return [inverse[w] for w in merged if w in inverse]
