"""POVID's rule-based hallucination injection on a generated world: the rejected answers
hallucinate objects by CHAIR against the world's ground truth, prefer the absent companion,
edit exactly what they say they edit, and are deterministic per (seed, record id)."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from realign_jax.data.records import from_json
from realign_jax.data.text import COLOR_WORDS, NUMBER_VALUES, OPPOSITE, SIZE_WORDS, with_article
from realign_jax.eval import chair, pope
from realign_jax.pairs.injection import (
    BUILDER,
    InjectionStats,
    inject,
    inject_records,
)
from realign_jax.synthetic import WorldConfig, generate_world
from realign_jax.synthetic.vocabulary import CATEGORIES, COLORS, COMPANIONS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=11, num_train_images=300, num_eval_images=5), out, progress=False)
    with open(out / "train" / "sft.jsonl") as f:
        records = [json.loads(line) for line in f]
    with open(out / "train" / "annotations.jsonl") as f:
        truth = {row["image"]: [o["name"] for o in row["objects"]] for row in map(json.loads, f)}
    return {"records": records, "truth": truth, "synonyms": chair.load_synonyms(str(out / "synonyms.txt"))}


@pytest.fixture(scope="module")
def stats(world):
    return InjectionStats.from_records(world["records"], world["synonyms"])


def _captions(world):
    return [r for r in world["records"] if r["provenance"]["task"] == "caption"]


def _chair(world, rows, field):
    captions = [{"image": r["image"], "text": r[field]} for r in rows]
    return chair.chair(captions, world["truth"], world["synonyms"], coco_rules=False)


def _texts(answer, stats, kinds, seeds=range(40), max_edits=1):
    out = {inject(answer, stats, np.random.default_rng(s), kinds=kinds, max_edits=max_edits) for s in seeds}
    return {i.text if i else None for i in out}


def test_stats_come_from_the_data(world, stats, tmp_path):
    companions = dict(COMPANIONS)
    for anchor, companion in companions.items():  # the prior the world hides, found in its text
        partners = stats.cooccurrence[anchor]
        assert max(partners, key=partners.get) == companion, (anchor, partners)
    assert set(stats.colors) <= set(COLORS) and len(stats.colors) >= 8
    assert set(stats.sizes) == {"small", "large"}
    assert {"to the left of", "to the right of", "above", "below", "on the left", "at the top"} <= set(stats.relations)
    assert {"no", "one", "two"} <= set(stats.numbers) <= set(NUMBER_VALUES)
    assert stats.num_answers == len(world["records"])
    stats.save(str(tmp_path / "stats.json"))
    assert InjectionStats.load(str(tmp_path / "stats.json")) == stats


def test_negated_objects_are_not_counted_as_present(world):
    rows = [{"chosen": "No, there is no saucer in the image."}, {"chosen": "There are no forks."},
            {"chosen": "A cup and a knife."}, {"question": "no answer"}]
    small = InjectionStats.from_records(rows, world["synonyms"])
    assert small.objects == {"cup": 1, "knife": 1}
    assert small.cooccurrence == {"cup": {"knife": 1}, "knife": {"cup": 1}}
    assert small.num_answers == 3


def test_rejected_answers_hallucinate_objects_by_chair(world, stats):
    captions = _captions(world)
    rows = list(inject_records(captions, stats, seed=0))
    chosen, rejected = _chair(world, rows, "chosen"), _chair(world, rows, "rejected")
    print(f"\ncaptions (n={len(rows)}): chosen CHAIR_i={chosen['chair_i']:.3f} CHAIR_s={chosen['chair_s']:.3f} "
          f"({chosen['hallucinated']}/{chosen['mentions']}); rejected CHAIR_i={rejected['chair_i']:.3f} "
          f"CHAIR_s={rejected['chair_s']:.3f} ({rejected['hallucinated']}/{rejected['mentions']})")
    assert len(rows) == len(captions)
    assert chosen["hallucinated"] == 0 and chosen["chair_i"] == 0.0
    assert rejected["chair_i"] > 0.1 and rejected["chair_s"] > 0.4
    assert rejected["hallucinated"] >= 0.4 * len(rows)

    objects_only = _chair(world, list(inject_records(captions, stats, seed=0, kinds=("object",))), "rejected")
    print(f"object edits only: rejected CHAIR_i={objects_only['chair_i']:.3f} CHAIR_s={objects_only['chair_s']:.3f}")
    assert objects_only["chair_s"] == 1.0  # every rejected caption names an object the image lacks

    everything = list(inject_records(world["records"], stats, seed=0))
    all_chosen, all_rejected = _chair(world, everything, "chosen"), _chair(world, everything, "rejected")
    print(f"all answers (n={len(everything)}, CHAIR is blind to 'no'): chosen CHAIR_i={all_chosen['chair_i']:.3f}, "
          f"rejected CHAIR_i={all_rejected['chair_i']:.3f}")
    assert all_rejected["hallucinated"] > 2 * all_chosen["hallucinated"]


def test_added_object_is_the_missing_companion(world, stats):
    companions = dict(COMPANIONS)
    hits = tries = 0
    chance = 0.0
    for seed in range(3):
        for row in inject_records(_captions(world), stats, seed, kinds=("object",), max_edits=1):
            present = set(world["truth"][row["image"]])
            missing = {companions[a] for a in present if a in companions and companions[a] not in present}
            if not missing:
                continue
            (edit,) = row["provenance"]["edits"]
            (added,) = chair.mentioned_objects(edit["to"], world["synonyms"], coco_rules=False)
            tries += 1
            hits += added in missing
            chance += len(missing) / (len(CATEGORIES) - len(present))
    rate, chance = hits / tries, chance / tries
    print(f"\nmissing companion injected in {hits}/{tries} = {rate:.2f} (chance {chance:.3f})")
    assert tries >= 30
    assert rate > 0.4 and rate > 8 * chance


def _article(word, like):
    article = "an" if word[0].lower() in "aeiou" else "a"
    return article.capitalize() if like[0].isupper() else article


def _replaced_once(chosen, rejected, before, after):
    """rejected == chosen with one whole-word `before` replaced by `after` (and an a/an just before made to agree)."""
    for m in re.finditer(rf"\b{re.escape(before)}\b", chosen):
        head, tail = chosen[:m.start()], chosen[m.end():]
        fixed = re.sub(r"\b(a|an) $", lambda a: _article(after, a.group(1)) + " ", head, flags=re.IGNORECASE)
        if rejected in (head + after + tail, fixed + after + tail):
            return True
    return False


@pytest.mark.parametrize("kind", ["attribute", "relation", "count"])
def test_targeted_edits_change_only_their_word(world, stats, kind):
    counts = Counter()
    rows = list(inject_records(world["records"], stats, 3, kinds=(kind,), max_edits=1, counts=counts))
    assert counts["kept"] == len(rows) >= 100
    inflected = 0
    for row in rows:
        (edit,) = row["provenance"]["edits"]
        before, after = edit["from"], edit["to"]
        assert edit["kind"] == kind and before.lower() != after.lower()
        chosen, rejected = row["chosen"], row["rejected"]
        if kind == "attribute":
            assert {before, after} <= COLOR_WORDS or {before, after} <= SIZE_WORDS, edit
        if kind == "relation":
            assert after.lower() == OPPOSITE.get(before.lower(), after.lower()), edit
        if kind == "count" and (NUMBER_VALUES[before.lower()] == 1) != (NUMBER_VALUES[after.lower()] == 1):
            # one <-> many: only the number, the noun's number and the verb before it change
            old, new = chair.tokenize(chosen), chair.tokenize(rejected)
            assert len(old) == len(new)
            changed = [(a, b) for a, b in zip(old, new) if a != b]
            assert (before.lower(), after.lower()) in changed and len(changed) <= 3, (chosen, rejected)
            for a, b in changed:
                same_noun = chair.mentioned_objects(a, world["synonyms"]) == chair.mentioned_objects(
                    b, world["synonyms"]) != [] or chair.singularize(a) == chair.singularize(b)
                assert (a, b) == (before.lower(), after.lower()) or {a, b} <= {"is", "are"} or same_noun, \
                    (chosen, rejected)
            inflected += 1
            continue
        assert _replaced_once(chosen, rejected, before, after), (chosen, rejected, edit)
    if kind == "count":
        assert inflected > 10


def test_counts_keep_plurals_right(stats):
    assert _texts("There is one knife.", stats, ("count",)) == {
        "There are two knives.", "There are three knives.", "There are four knives.", "There are no knives."}
    assert _texts("There are two knives.", stats, ("count",)) == {
        "There is one knife.", "There are three knives.", "There are four knives.", "There are no knives."}
    assert "There is one teacup." in _texts("There are no teacups.", stats, ("count",))
    assert "One white traffic light and a cup." in _texts("Two white traffic lights and a cup.", stats, ("count",))


def test_articles_agree(world, stats):
    for text in _texts("There is an orange car.", stats, ("attribute",)):
        assert re.fullmatch(r"There is a (red|green|blue|yellow|purple|pink|brown|black|white) car\.", text), text
    assert "An orange apple." in _texts("A red apple.", stats, ("attribute",), seeds=range(80))
    assert _texts("There is a large apple.", stats, ("attribute",)) == {"There is a small apple."}
    added = _texts("There is a cloud.", stats, ("object",))
    assert "There is a cloud and an umbrella." in added and len(added) > 2
    assert all(re.fullmatch(r"There is a cloud and (a [^aeiou]|an [aeiou])[a-z ]+\.", t) for t in added), added
    article = re.compile(r"\b(a|an) ([a-z]+)", re.IGNORECASE)
    switched = 0  # object swaps that needed the other article ('a cup' -> 'an apple')
    for seed in range(3):
        for row in inject_records(world["records"], stats, seed):
            for m in article.finditer(row["rejected"]):
                assert (m.group(1).lower() == "an") == (m.group(2)[0].lower() in "aeiou"), row["rejected"]
            for edit in row["provenance"]["edits"]:
                before, after = edit["from"], edit["to"]
                if edit["kind"] == "object" and before and (before[0] in "aeiou") != (after[0] in "aeiou") and \
                        re.search(rf"\b(a|an) {before}\b", row["chosen"], re.IGNORECASE):
                    assert re.search(rf"\b{_article(after, 'a')} {after}\b", row["rejected"], re.IGNORECASE), row
                    switched += 1
    assert switched >= 2


def test_objects_join_the_list(stats):
    for text in _texts("There is a cup and a saucer.", stats, ("object",)):
        assert re.fullmatch(r"There is a cup, a saucer and an? [a-z ]+\.", text), text
    for text in _texts("A cup, a saucer, and a fork on the left.", stats, ("object",)):
        assert re.fullmatch(r"A cup, a saucer, a fork, and an? [a-z ]+ on the left\.", text), text
    for text in _texts("The image shows two houses.", stats, ("object",)):
        assert re.fullmatch(r"The image shows two houses and an? [a-z ]+\.", text), text


def test_yes_no_answers_flip_the_verdict(world, stats):
    cases = {
        "Yes, there is a cup in the image.": "No, there is no cup in the image.",
        "No, there is no saucer in the image.": "Yes, there is a saucer in the image.",
        "No, there is no umbrella in the image.": "Yes, there is an umbrella in the image.",
        "Yes, there are two knives in the image.": "No, there are no knives in the image.",
        "Yes, the cup is to the left of the saucer.": "No, the cup is to the right of the saucer.",
        "No, the dog is below the tree.": "Yes, the dog is above the tree.",
        "Yes.": "No.",
    }
    for answer, flipped in cases.items():
        assert _texts(answer, stats, ("object", "attribute", "relation", "count", "verdict")) == {flipped}
    # without "verdict" a yes/no answer is edited like any other
    recoloured = _texts("Yes, there is a red cup in the image.", stats, ("attribute",))
    assert recoloured == {f"Yes, there is {with_article(c)} cup in the image." for c in stats.colors if c != "red"}
    yes_no = [r for r in world["records"] if re.match(r"(Yes|No),", r["chosen"])]
    for row in inject_records(yes_no, stats, seed=0):
        assert pope.parse_answer(row["rejected"]) != pope.parse_answer(row["chosen"]), row["rejected"]


def test_deterministic_per_seed_and_record(world, stats):
    records = world["records"]
    first = list(inject_records(records, stats, seed=5))
    assert first == list(inject_records(records, stats, seed=5))
    other = list(inject_records(records, stats, seed=6))
    differ = sum(a["rejected"] != b["rejected"] for a, b in zip(first, other, strict=True))
    assert differ > 0.2 * len(first), differ
    resumed = list(inject_records(records[::-1][:200], stats, seed=5))  # another order, a part only
    by_id = {r["id"]: r for r in first}
    assert all(by_id[r["id"]] == r for r in resumed)


def test_nothing_to_edit_is_none_and_counted(world, stats):
    assert inject("I cannot tell.", stats, np.random.default_rng(0)) is None
    assert inject("The cup is blue.", stats, np.random.default_rng(0), kinds=("relation", "count")) is None
    rows = [{"id": "a", "question": "q", "chosen": "I cannot tell."},
            {"id": "b", "question": "q", "chosen": "The cup is blue."}, {"id": "c", "question": "q"}]
    counts = Counter()
    out = list(inject_records(rows, stats, 0, kinds=("attribute",), counts=counts))
    assert [r["id"] for r in out] == ["b"]
    assert counts == {"kept": 1, "edits_attribute": 1, "dropped_nothing_to_edit": 1, "dropped_no_chosen": 1}
    counts = Counter()
    kept = list(inject_records(world["records"], stats, 0, kinds=("relation",), counts=counts))
    relation = re.compile(r"\b(" + "|".join(OPPOSITE) + r"|in the center)\b", re.IGNORECASE)
    dropped = [r for r in world["records"] if not relation.search(r["chosen"])]
    print(f"\nrelation edits only: {counts['kept']} injected, {counts['dropped_nothing_to_edit']} dropped")
    assert counts["dropped_nothing_to_edit"] == len(dropped) > 0 and counts["kept"] == len(kept)
    with pytest.raises(ValueError, match="unknown injection kinds"):
        inject("A cup.", stats, np.random.default_rng(0), kinds=("colour",))


def test_records_follow_the_schema(world, stats):
    sources = {r["id"]: r for r in world["records"]}
    for i, row in enumerate(inject_records(world["records"], stats, seed=2)):
        record = from_json(row, f"pairs:{i}")  # rejected present and different from chosen
        source = sources[row["id"]]
        assert record.chosen == source["chosen"] and record.rejected
        assert row["provenance"]["builder"] == BUILDER and row["provenance"]["task"] == source["provenance"]["task"]
        assert row["provenance"]["edits"] and all(set(e) == {"kind", "from", "to"} for e in row["provenance"]["edits"])
