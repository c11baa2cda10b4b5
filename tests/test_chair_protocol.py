"""CHAIR's official protocol (eval.chair_protocol=official): the official code's object lists,
quirks included, against lists worked out by hand from LisaAnne/Hallucination `utils/chair.py`
(nltk 3.2.5 `word_tokenize`, pattern 3.6 `singularize`, the ', ' synonym split, the two-word
merge), and how the corrected protocol reads the same captions."""

import json

import pytest

from realign_jax.eval import chair, chair_official, suite
from realign_jax.settings.sections import EvalSettings

# Lines as the official synonyms.txt writes them: note the double spaces before 'motor bike'
# and 'cheesecake'.
SYNONYMS_TXT = """person, girl, boy, man, woman, people, baby, passenger
dog, puppy
cat, kitten
motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped
bus, minibus, trolley
tie, bow, bow tie
tv, monitor, televison, television
cake,  cheesecake, cupcake, shortcake, coffeecake, pancake
oven, stovetop, stove, stove top oven
dining table, table, desk
wine glass
tennis racket, racket
toilet, urinal
chair, seat, stool
"""

# caption -> (official objects, corrected objects)
QUIRKS = {
    # pattern: 'buses' -> 'bus' but 'bus' -> 'bu'
    "Two buses wait behind a bus.": (["bus"], ["bus", "bus"]),
    # pattern: 'ties' -> 'ty' (its 'tie' exception never fires); 'bow tie' merges to tie
    "A man wearing ties and a bow tie.": (["person", "tie"], ["person", "tie", "tie"]),
    # pattern: 'tvs' -> 'tv', and so does the corrected reading
    "Two tvs on a desk.": (["tv", "dining table"], ["tv", "dining table"]),
    # the official split keeps ' motor bike', so the merged 'motor bike' is no object
    "A man rides a motor bike next to a scooter.": (["person", "motorcycle"], ["person", "motorcycle", "motorcycle"]),
    # ... and ' cheesecake'
    "A cheesecake next to a cupcake.": (["cake"], ["cake", "cake"]),
    # only two-word phrases merge: 'stove' and 'oven' are two ovens
    "A stove top oven.": (["oven", "oven"], ["oven"]),
    # the Treebank rules split neither '/' nor '-'
    "A dog/cat and a hot-dog.": ([], ["dog", "cat"]),
    # 'glass' -> 'glas', which the official 'wine glas' entry catches after 'wine' only
    "A wine glass and a glass.": (["wine glass"], ["wine glass"]),
    # 'tennis' -> 'tenni'; 'racket' alone still names the racket
    "Tennis rackets.": (["tennis racket"], ["tennis racket"]),
    "The seat of the toilet.": (["toilet"], ["toilet"]),
}


@pytest.fixture
def synonyms_path(tmp_path):
    path = tmp_path / "synonyms.txt"
    path.write_text(SYNONYMS_TXT)
    return str(path)


def test_official_synonym_split_keeps_the_leading_spaces(synonyms_path):
    official = chair.read_synonyms(synonyms_path, "official")
    assert " motor bike" in official["motorcycle"] and "motor bike" not in official["motorcycle"]
    assert " cheesecake" in official["cake"]
    assert "motor bike" in chair.read_synonyms(synonyms_path, "corrected")["motorcycle"]
    with pytest.raises(ValueError, match="protocol"):
        chair.read_synonyms(synonyms_path, "paper")


@pytest.mark.parametrize("caption", QUIRKS)
def test_object_lists_per_protocol(synonyms_path, caption):
    official, corrected = QUIRKS[caption]
    read = {p: chair.read_synonyms(synonyms_path, p) for p in chair.PROTOCOLS}
    assert chair.mentioned_objects(caption, read["official"], protocol="official") == official
    assert chair.mentioned_objects(caption, read["corrected"]) == corrected


def test_quirk_captions_tell_the_protocols_apart():
    differ = [c for c, (official, corrected) in QUIRKS.items() if official != corrected]
    assert len(differ) == 6  # "tvs" now reads "tv" under both


def test_pattern_singularize():
    cases = {"bus": "bu", "buses": "bus", "ties": "ty", "tie": "tie", "tvs": "tv", "glass": "glas",
             "glasses": "glass", "tennis": "tenni", "people": "person", "policemen": "policeman", "knives": "knife",
             "scissors": "scissors", "skis": "ski", "collies": "collies", "wine": "wine", "four": "fmy",
             "microwaves": "microwave", "gloves": "glove", "calves": "calf", "mice": "mouse", "oxen": "ox",
             "hot-dogs": "hot-dog", "mothers-in-law": "mother-in-law", "dogs'": "dog's"}
    assert {w: chair_official.singularize(w) for w in cases} == cases


def test_nltk_word_tokenize():
    tokens = chair_official.word_tokenize("A dog's bowl, a cat/dog and a hot-dog. Then (two) dogs can't: 1,000!")
    assert tokens == ["A", "dog", "'s", "bowl", ",", "a", "cat/dog", "and", "a", "hot-dog", ".", "Then", "(", "two",
                      ")", "dogs", "ca", "n't", ":", "1,000", "!"]
    assert chair_official.word_tokenize('He said "a bus." then left') == ["He", "said", "``", "a", "bus", ".", "''",
                                                                           "then", "left"]


CAPTIONS = [{"image": "a.jpg", "text": "A man wearing ties and a bow tie."},
            {"image": "b.jpg", "text": "A stove top oven."},
            {"image": "c.jpg", "text": "A bus by a desk."}]
TRUTH = {"a.jpg": ["tie"], "b.jpg": ["oven"], "c.jpg": ["dining table"]}


def test_chair_numbers_per_protocol(synonyms_path):
    official = chair.chair(CAPTIONS, TRUTH, chair.read_synonyms(synonyms_path, "official"), protocol="official")
    # mentions: [person, tie], [oven, oven], [dining table] ('bus' reads 'bu'); person hallucinated
    assert (official["mentions"], official["hallucinated"]) == (5, 1)
    assert (official["chair_i"], official["chair_s"], official["recall"]) == (pytest.approx(1 / 5), 1 / 3, 1.0)
    corrected = chair.chair(CAPTIONS, TRUTH, chair.read_synonyms(synonyms_path, "corrected"))
    # mentions: [person, tie, tie], [oven], [bus, dining table]; person and bus hallucinated
    assert (corrected["mentions"], corrected["hallucinated"]) == (6, 2)
    assert (corrected["chair_i"], corrected["chair_s"], corrected["recall"]) == (pytest.approx(2 / 6), 2 / 3, 1.0)


def write_coco(tmp_path):
    instances = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 72, "name": "tv"}],
                 "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 72}]}
    captions = {"annotations": [{"image_id": 1, "caption": "A bus and a man in ties."},
                                {"image_id": 2, "caption": "A cheesecake near the television and a man."}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return str(tmp_path / "instances.json"), str(tmp_path / "captions.json")


def test_coco_ground_truth_from_reference_captions(tmp_path, synonyms_path):
    instances, captions = write_coco(tmp_path)

    def truth(protocol):
        return chair.coco_ground_truth(instances, key="id", captions_json_path=captions, protocol=protocol,
                                       synonyms=chair.read_synonyms(synonyms_path, protocol))

    # official: 'bus' -> 'bu', 'ties' -> 'ty' and ' cheesecake' name nothing
    assert truth("official") == {1: ["person"], 2: ["tv", "person"]}
    assert truth("corrected") == {1: ["person", "bus", "tie"], 2: ["tv", "cake", "person"]}


class FixedCaptions:
    """An Answerer stand-in: the same caption for every image."""

    def __init__(self, caption):
        self.caption = caption

    def answer(self, items, max_new_tokens, desc):
        return [self.caption for _ in items]


def test_suite_reads_coco_captions_and_defaults_to_official(tmp_path, synonyms_path):
    instances, captions = write_coco(tmp_path)
    settings = dict(coco_instances=instances, coco_captions=captions, synonyms=synonyms_path, image_folder="/img")
    answerer = FixedCaptions("Two buses and a man.")
    official = suite.run_chair(answerer, EvalSettings(**settings), str(tmp_path))
    # official: ground truth {person}, {tv, person}; mentions [bus, person] per image: each bus hallucinated
    assert (official["protocol"], official["mentions"], official["hallucinated"]) == ("official", 4, 2)
    corrected = suite.run_chair(answerer, EvalSettings(**settings, chair_protocol="corrected"), str(tmp_path))
    # corrected: ground truth {person, bus, tie}, {tv, cake, person}: only image 2's bus is hallucinated
    assert (corrected["protocol"], corrected["mentions"], corrected["hallucinated"]) == ("corrected", 4, 1)
    without_captions = suite.run_chair(answerer, EvalSettings(**{**settings, "coco_captions": ""}), str(tmp_path))
    assert without_captions["hallucinated"] == 3  # image 2's person is named by its reference caption only
    rows = [json.loads(line) for line in open(tmp_path / "chair.jsonl")]
    assert rows[0]["image"] == "/img/COCO_val2014_000000000001.jpg"


def test_coco_captions_need_instances_and_synonyms():
    with pytest.raises(ValueError, match="eval.coco_captions needs"):
        EvalSettings(coco_captions="captions.json").check("eval.")
