"""CHAIR (Rohrbach et al., EMNLP 2018): object hallucination in captions.

CHAIR_i = hallucinated object mentions / all object mentions; CHAIR_s = captions with at
least one hallucinated object / all captions; recall = ground-truth objects mentioned /
ground-truth objects; mean length in words (CHAIR alone rewards saying nothing).

Follows the official code, LisaAnne/Hallucination `utils/chair.py` (`CHAIR.caption_to_words`,
`compute_chair`, `data/synonyms.txt`), and for recall the widely used Python 3 port
(Maxlinn/CHAIR-metric-standalone). Deliberate differences:
- no nltk / pattern: a regex tokeniser ('hot-dog' stays one token as nltk keeps it) and
  `singularize` (data/text.py), which covers regular plurals and the irregular nouns COCO
  needs where the official code calls `pattern.en.singularize`;
- multi-word synonyms of any length match greedily, longest first (the official code only
  joins the word pairs in its hard-coded list, so 'stove top oven' counts twice there);
- synonyms.txt entries are split on ',' and stripped (the official `split(', ')` keeps a
  leading space in 'scooter,  motor bike' and 'cake,  cheesecake', so those never match);
- CHAIR_i counts every mention, as `compute_chair` does (its `caption_to_words` keeps
  repeats); `distinct=True` counts each object once per caption (the 2018 top-level script).
Those differences are the `corrected` protocol; `protocol="official"` reads captions as the
official code does, quirks included (eval/chair_official.py), which published numbers need.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# CHAIR's word rules and synonyms.txt reader live in data/text.py, where the builders read them too.
from realign_jax.data.text import load_synonyms, singular_phrase, singularize, synonym_lookup, tokenize
from realign_jax.eval import chair_official

PROTOCOLS = ("official", "corrected")

# The official hard-coded rules (utils/chair.py, CHAIR.__init__; chair_official.DOUBLE_WORDS):
# phrases read as one object, qualifiers that must not fire 'person' ('baby bird' -> bird), and
# phrases that are not the object they contain ('train track' is not a train, 'toilet seat' is
# not a chair). Read here on whole words, so 'stove top oven' is one phrase and no 'wine glas'.
COCO_PHRASES: dict[str, str] = {**{k: v for k, v in chair_official.DOUBLE_WORDS.items() if k != "wine glas"},
                                "stove top oven": "stove top oven"}


def _mentions(caption: str, inverse: Mapping[str, str], coco_rules: bool) -> list[str]:
    words = [singularize(w) for w in tokenize(caption)]
    phrases = {k: k for k in inverse if " " in k}
    if coco_rules:
        phrases.update(COCO_PHRASES)
    longest = max((len(p.split()) for p in phrases), default=1)
    merged, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 1, -1):
            phrase = " ".join(words[i:i + n])
            if phrase in phrases:
                merged.append(phrases[phrase])
                i += n
                break
        else:
            merged.append(words[i])
            i += 1
    if coco_rules and "toilet" in merged:  # "the seat of the toilet" is no chair
        merged = [w for w in merged if w != "seat"]
    return [inverse[w] for w in merged if w in inverse]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"CHAIR protocol {protocol!r}: choose from {PROTOCOLS}")


def read_synonyms(path: str, protocol: str = "corrected") -> dict[str, list[str]]:
    """synonyms.txt as `protocol` reads it: the official split keeps the entries that never match."""
    _check_protocol(protocol)
    return chair_official.read_synonyms(path) if protocol == "official" else load_synonyms(path)


@dataclasses.dataclass(frozen=True)
class Reading:
    """One protocol's reading: the objects a caption mentions, and a ground-truth name's canonical name."""

    mentions: Callable[[str], list[str]]
    canonical: Callable[[str], str]


def reading(synonyms: Mapping[str, Sequence[str]], protocol: str = "corrected", *, coco_rules: bool = True) -> Reading:
    """How `protocol` reads captions against `synonyms` (`read_synonyms(path, protocol)` reads them).

    `official` always applies the official COCO rules (it is that code); `coco_rules` chooses
    them for `corrected` only.
    """
    _check_protocol(protocol)
    if protocol == "official":
        literal = chair_official.inverse_synonyms(synonyms)
        return Reading(lambda text: chair_official.caption_objects(text, literal), lambda o: literal.get(o, o))
    inverse = synonym_lookup(synonyms)
    return Reading(lambda text: _mentions(text, inverse, coco_rules), lambda o: inverse.get(singular_phrase(o), o))


def mentioned_objects(caption: str, synonyms: Mapping[str, Sequence[str]], *, coco_rules: bool = True,
                      protocol: str = "corrected") -> list[str]:
    """Canonical objects a caption mentions, in order, repeats kept (see module docstring).

    `coco_rules` applies the official COCO special cases (COCO_PHRASES and toilet/seat).
    """
    return reading(synonyms, protocol, coco_rules=coco_rules).mentions(caption)


def _ground_truth_for(ground_truth: Mapping[Any, Sequence[str]], image: Any) -> Sequence[str]:
    """Ground truth by the record's image key, or by its file name (runners write full paths)."""
    if image in ground_truth:
        return ground_truth[image]
    if isinstance(image, str) and os.path.basename(image) in ground_truth:
        return ground_truth[os.path.basename(image)]
    raise KeyError(f"no ground truth for image {image!r}")


def chair(captions: Sequence[Mapping[str, Any]], ground_truth: Mapping[Any, Sequence[str]],
          synonyms: Mapping[str, Sequence[str]], *, coco_rules: bool = True,
          distinct: bool = False, protocol: str = "corrected") -> dict[str, Any]:
    """CHAIR_s, CHAIR_i, recall and mean length over caption records {"image", "text"}.

    ("caption" is read where a record has no "text", as in the official caption files.)
    Mean length counts whitespace-separated words (the Python 3 port counts nltk tokens,
    punctuation included, and prints it divided by 100).

    `ground_truth` maps an image key to its object names (mapped to canonical names through
    `synonyms` where listed). Returns the overall numbers plus "captions": per caption the
    mentioned and hallucinated canonical objects. Recall is pooled over captions (distinct
    ground-truth objects mentioned / ground-truth objects), as in the Python 3 port. With no
    object mention at all CHAIR_i is 0.0 (the official code divides by zero). `protocol`
    chooses the caption reading (module docstring); give it synonyms read the same way.
    """
    if not captions:
        raise ValueError("no captions to score")
    read = reading(synonyms, protocol, coco_rules=coco_rules)
    details, n_mentions, n_hallucinated, n_bad_captions, n_gt, n_recalled, n_words = [], 0, 0, 0, 0, 0, 0
    for record in captions:
        gt = {read.canonical(o) for o in _ground_truth_for(ground_truth, record["image"])}
        text = record["text"] if "text" in record else record["caption"]
        mentioned = read.mentions(text)
        if distinct:
            mentioned = list(dict.fromkeys(mentioned))
        hallucinated = [o for o in mentioned if o not in gt]
        n_mentions += len(mentioned)
        n_hallucinated += len(hallucinated)
        n_bad_captions += bool(hallucinated)
        n_gt += len(gt)
        n_recalled += len(gt & set(mentioned))
        n_words += len(text.split())
        details.append({"image": record["image"], "mentioned": mentioned, "hallucinated": hallucinated,
                        "ground_truth": sorted(gt)})
    return {"chair_s": n_bad_captions / len(captions), "chair_i": n_hallucinated / n_mentions if n_mentions else 0.0,
            "recall": n_recalled / n_gt if n_gt else 0.0, "mean_length": n_words / len(captions),
            "mentions": n_mentions, "hallucinated": n_hallucinated, "n": len(captions), "captions": details}


def coco_ground_truth(instances_json_path: str, image_ids: Sequence[int] | None = None, *,
                      captions_json_path: str | None = None, synonyms: Mapping[str, Sequence[str]] | None = None,
                      key: str = "file_name", protocol: str = "corrected") -> dict[Any, list[str]]:
    """Objects per image from a COCO `instances_*.json` (category names, first-seen order).

    The official CHAIR ground truth is the union of the instance categories and the objects
    named in the image's reference captions: pass `captions_json_path` (a `captions_*.json`)
    and `synonyms` to add those. Keys are image file names (`key="id"` for COCO ids); images
    without annotations get an empty list. Category names are mapped to canonical names
    through `synonyms` when given (COCO's names are the canonical ones in synonyms.txt).
    `protocol` reads the names and reference captions as `chair` does.
    """
    with open(instances_json_path) as f:
        coco = json.load(f)
    read = reading(synonyms or {}, protocol)
    wanted = None if image_ids is None else set(image_ids)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    keys = {im["id"]: im[key] for im in coco["images"] if wanted is None or im["id"] in wanted}
    objects: dict[Any, list[str]] = {k: [] for k in keys.values()}

    def add(image_id: int, name: str) -> None:
        if image_id in keys and name not in objects[keys[image_id]]:
            objects[keys[image_id]].append(name)

    for ann in coco["annotations"]:
        name = names[ann["category_id"]]
        add(ann["image_id"], read.canonical(name))
    if captions_json_path is not None:
        if synonyms is None:
            raise ValueError("objects in reference captions need a synonym table")
        with open(captions_json_path) as f:
            for ann in json.load(f)["annotations"]:
                for name in read.mentions(ann["caption"]):
                    add(ann["image_id"], name)
    return objects
