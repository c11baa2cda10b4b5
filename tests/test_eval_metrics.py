"""POPE, CHAIR and AMBER-style metrics against the official rules, written out here, and hand counts."""

import json
import random

import pytest
from PIL import Image

from realign_jax.eval import amber, chair, pope

# --- POPE -------------------------------------------------------------------------------

# Answers with the edge cases of POPE's parser, and what the official rule gives for each.
ANSWERS = {
    "Yes.": "yes",
    "Yes, there is a dog in the image.": "yes",
    "No, there is not": "no",
    "No.": "no",
    "no": "no",
    "There is a cat": "yes",
    "": "yes",  # the official code: ''.split(' ') == [''], none of No/not/no
    "Not sure": "yes",  # 'Not' is not one of the three words (case-sensitive)
    "yes, there is no...": "no",  # the first sentence is 'yes, there is no'
    "Nope": "yes",
    "NO": "yes",
    "no\n": "yes",  # split on ' ' only
    "I do not see one.": "no",
    "There is a dog. No cat.": "yes",  # only the first sentence counts
    "There is no.thing": "no",
}


def official_parse(text):
    """RUCAIBox/POPE evaluate.py, transcribed."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def official_metrics(answers, labels):
    """RUCAIBox/POPE evaluate.py's counting, with 0 where it would divide by zero."""
    pred = [0 if official_parse(a) == "no" else 1 for a in answers]
    lab = [0 if x == "no" else 1 for x in labels]
    tp = sum(p == 1 and t == 1 for p, t in zip(pred, lab))
    fp = sum(p == 1 and t == 0 for p, t in zip(pred, lab))
    tn = sum(p == 0 and t == 0 for p, t in zip(pred, lab))
    fn = sum(p == 0 and t == 1 for p, t in zip(pred, lab))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(lab), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": pred.count(1) / len(pred)}


def test_parse_answer_follows_official_rule():
    for text, expected in ANSWERS.items():
        assert pope.parse_answer(text) == official_parse(text) == expected, text


def test_pope_metrics_hand_computed():
    answers = ["Yes.", "No, there is not", "There is a cat", "", "Not sure", "yes, there is no...", "Nope", "No."]
    labels = ["yes", "no", "yes", "no", "yes", "yes", "no", "no"]
    # parsed:  yes    no     yes    yes   yes    no     yes    no
    # TP = 3 (0, 2, 4), FP = 2 (3, 6), TN = 2 (1, 7), FN = 1 (5)
    out = pope.pope_metrics(answers, labels)
    assert (out["tp"], out["fp"], out["tn"], out["fn"], out["n"]) == (3, 2, 2, 1, 8)
    assert out["accuracy"] == pytest.approx(5 / 8)
    assert out["precision"] == pytest.approx(3 / 5)
    assert out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert out["yes_ratio"] == pytest.approx(5 / 8)  # share of predictions, not of labels (4/8)
    reference = official_metrics(answers, labels)
    for key, value in reference.items():
        assert out[key] == pytest.approx(value), key


def test_pope_metrics_random_sets_match_official():
    rng = random.Random(0)
    texts = list(ANSWERS)
    for _ in range(20):
        n = rng.randint(1, 30)
        answers = [rng.choice(texts) for _ in range(n)]
        labels = [rng.choice(["yes", "no"]) for _ in range(n)]
        out = pope.pope_metrics(answers, labels)
        for key, value in official_metrics(answers, labels).items():
            assert out[key] == pytest.approx(value), key


def test_pope_metrics_undefined_ratios_and_bad_input():
    out = pope.pope_metrics(["No", "no"], ["yes", "no"])  # nothing predicted yes
    assert (out["precision"], out["recall"], out["f1"], out["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert out["accuracy"] == 0.5
    out = pope.pope_metrics(["No", "no"], ["no", "no"])  # no yes label either
    assert (out["precision"], out["recall"], out["f1"], out["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        pope.pope_metrics(["Yes", "No"], ["yes"])
    with pytest.raises(ValueError, match="'Yes'"):
        pope.pope_metrics(["Yes"], ["Yes"])
    with pytest.raises(ValueError):
        pope.pope_metrics([], [])


IMAGES = [
    {"image": "a.jpg", "objects": ["dog", "frisbee", "person"]},
    {"image": "b.jpg", "objects": ["person", "car", "bicycle"]},
    {"image": "c.jpg", "objects": ["person", "car", "traffic light"]},
    {"image": "d.jpg", "objects": ["cat", "couch", "remote", "apple"]},
    {"image": "e.jpg", "objects": ["dog", "person", "car"]},
    {"image": "f.jpg", "objects": ["apple"]},
]
# Frequencies: person 4, car 3, dog 2, apple 2, then the rest once each.
ALL_OBJECTS = {o for im in IMAGES for o in im["objects"]}


def pairs(questions, image):
    rows = [q for q in questions if q["image"] == image]
    return [(rows[i]["object"], rows[i + 1]["object"]) for i in range(0, len(rows), 2)]


@pytest.mark.parametrize("split", pope.SPLITS)
def test_build_questions_structure(split):
    questions = pope.build_questions(IMAGES, split, seed=0)
    assert [q["question_id"] for q in questions] == list(range(len(questions)))
    assert [q["label"] for q in questions] == ["yes", "no"] * (len(questions) // 2)  # balanced, paired
    assert len(questions) == 2 * (3 * 5 + 1)  # f.jpg has one object only
    present = {im["image"]: set(im["objects"]) for im in IMAGES}
    for q in questions:
        assert set(q) == {"question_id", "image", "text", "label", "object", "split"}
        assert q["split"] == split
        assert (q["object"] in present[q["image"]]) == (q["label"] == "yes")
        assert q["object"] in ALL_OBJECTS
    for im in IMAGES:
        asked = [o for pair in pairs(questions, im["image"]) for o in pair]
        assert len(asked) == len(set(asked))  # no object asked twice about one image
        assert [p for p, _ in pairs(questions, im["image"])] == im["objects"][:3]  # positives in listed order
    texts = {q["object"]: q["text"] for q in questions}
    assert texts["dog"] == "Is there a dog in the image?"
    assert texts["apple"] == "Is there an apple in the image?"
    assert pope.build_questions(IMAGES, split, seed=0) == questions


def test_build_questions_popular_picks_most_frequent_absent():
    questions = pope.build_questions(IMAGES, "popular", seed=0)
    assert pairs(questions, "d.jpg") == [("cat", "person"), ("couch", "car"), ("remote", "dog")]
    assert pairs(questions, "a.jpg") == [("dog", "car"), ("frisbee", "apple"), ("person", "bicycle")]
    assert pairs(questions, "f.jpg") == [("apple", "person")]


def test_build_questions_adversarial_picks_most_co_occurring():
    questions = pope.build_questions(IMAGES, "adversarial", seed=0)
    # person co-occurs with car 3, dog 2, ...; car with person 3, then bicycle, traffic light, dog once each.
    assert pairs(questions, "b.jpg")[:2] == [("person", "dog"), ("car", "traffic light")]
    # dog co-occurs with person 2, then frisbee and car once (first seen first): frisbee is present.
    assert pairs(questions, "a.jpg")[0] == ("dog", "car")
    # cat's companions (couch, remote, apple) are all present: a random absent object instead.
    neg = pairs(questions, "d.jpg")[0][1]
    assert neg in ALL_OBJECTS - set(IMAGES[3]["objects"])
    # Given companions replace the counts.
    questions = pope.build_questions(IMAGES, "adversarial", seed=0, companions={"cat": ["couch", "bicycle"]})
    assert pairs(questions, "d.jpg")[0] == ("cat", "bicycle")


def test_build_questions_random_is_seeded_and_uniform_over_absent():
    absent = ALL_OBJECTS - set(IMAGES[3]["objects"])
    firsts = [pairs(pope.build_questions(IMAGES, "random", seed=s), "d.jpg")[0][1] for s in range(300)]
    assert set(firsts) == absent  # every absent object gets drawn, not only the popular ones
    assert max(firsts.count(o) for o in absent) < 3 * 300 / len(absent)
    assert pope.build_questions(IMAGES, "random", seed=1) != pope.build_questions(IMAGES, "random", seed=2)


def test_build_questions_errors():
    with pytest.raises(ValueError, match="no absent object"):
        pope.build_questions([{"image": "x", "objects": ["a", "b"]}], "random", seed=0)
    with pytest.raises(ValueError, match="split"):
        pope.build_questions(IMAGES, "hard", seed=0)


def test_read_pope_file(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    rows = [{"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882,
             "text": "Is there a dining table in the image?", "label": "yes"},
            {"question_id": 1, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882,
             "text": "Is there a chair in the image?", "label": "no"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    folder = tmp_path / "val2014"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "COCO_val2014_000000548882.jpg")
    records = [record for _, record in pope.read_pope_file(str(path), str(folder))]
    assert [r["image"] for r in records] == [str(folder / "COCO_val2014_000000548882.jpg")] * 2
    assert [(r["question_id"], r["label"], r["image_id"]) for r in records] == [(0, "yes", 548882), (1, "no", 548882)]
    assert records[1]["text"] == "Is there a chair in the image?"

    bad = {"not json": "line 2: not valid JSON",
           json.dumps({"question_id": 1, "image": "x.jpg", "text": "Is there a cat?"}): "line 2: missing field 'label'",
           json.dumps({"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "Yes"}):
               "line 2: field 'label' is 'Yes'",
           json.dumps({"question_id": 1, "image": "", "text": "q", "label": "no"}): "line 2: field 'image'"}
    for line, message in bad.items():
        path.write_text(json.dumps(rows[0]) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=message):
            pope.read_pope_file(str(path), str(folder))


# --- CHAIR ------------------------------------------------------------------------------

SYNONYMS_TXT = """person, girl, boy, man, woman, people, baby, policeman
dog, puppy, hound
cat, kitten
frisbee
motorcycle, scooter,  motor bike
hot dog
dining table, table
wine glass
knife, knive
bus, minibus
chair, seat
toilet
bird
oven, stove, stove top oven
car
couch, sofa
"""


@pytest.fixture
def synonyms(tmp_path):
    path = tmp_path / "synonyms.txt"
    path.write_text(SYNONYMS_TXT)
    return chair.load_synonyms(str(path))


def test_load_synonyms(synonyms):
    assert synonyms["person"] == ["girl", "boy", "man", "woman", "people", "baby", "policeman"]
    assert synonyms["motorcycle"] == ["scooter", "motor bike"]  # the official file's double space stripped
    assert synonyms["frisbee"] == [] and len(synonyms) == 16


def test_mentioned_objects(synonyms):
    def m(text, **kw):
        return chair.mentioned_objects(text, synonyms, **kw)

    assert m("Two hot dogs on a table next to a puppy.") == ["hot dog", "dining table", "dog"]  # a hot dog is no dog
    assert m("Policemen ride motor bikes past buses; knives and wine glasses.") == [
        "person", "motorcycle", "bus", "knife", "wine glass"]
    assert m("A stove top oven.") == ["oven"]  # one mention, longest phrase first
    assert m("A dog chases another dog.") == ["dog", "dog"]  # repeats kept, in order
    # Official COCO rules: a baby bird is no person, a toilet seat is no chair.
    assert m("A baby bird sits on the toilet seat.") == ["bird", "toilet"]
    assert m("The seat of the toilet.") == ["toilet"]
    assert m("A baby bird sits on the toilet seat.", coco_rules=False) == ["person", "bird", "toilet", "chair"]
    assert m("An empty street at night.") == []


def test_singularize_regular_and_irregular_plurals():
    cases = {"dogs": "dog", "puppies": "puppy", "ties": "tie", "benches": "bench", "glasses": "glass",
             "boxes": "box", "buses": "bus", "knives": "knife", "shelves": "shelf", "women": "woman",
             "people": "person", "children": "child", "mice": "mouse", "sheep": "sheep", "scissors": "scissors",
             "skis": "skis", "bus": "bus", "glass": "glass", "horses": "horse", "policemen": "policeman",
             "tvs": "tv"}
    assert {w: chair.singularize(w) for w in cases} == cases


CAPTIONS = [
    {"image": "/data/img1.jpg", "text": "A man and two dogs play with a frisbee. The dog jumps near a cat."},
    {"image": "img2.jpg", "text": "People eating hot dogs at a table with wine glasses."},
    {"image": "img3.jpg", "text": "A kitten sleeping."},
    {"image": "img4.jpg", "text": "Nothing to see here."},
]
GROUND_TRUTH = {"img1.jpg": ["dog", "person", "frisbee"], "img2.jpg": ["person", "dining table", "hot dog"],
                "img3.jpg": ["cat"], "img4.jpg": ["car"]}


def test_chair_hand_counted(synonyms):
    out = chair.chair(CAPTIONS, GROUND_TRUTH, synonyms)
    details = out["captions"]
    assert details[0]["mentioned"] == ["person", "dog", "frisbee", "dog", "cat"]
    assert details[0]["hallucinated"] == ["cat"]
    assert details[1]["mentioned"] == ["person", "hot dog", "dining table", "wine glass"]
    assert details[1]["hallucinated"] == ["wine glass"]
    assert (details[2]["mentioned"], details[2]["hallucinated"]) == (["cat"], [])
    assert (details[3]["mentioned"], details[3]["hallucinated"]) == ([], [])
    # 10 mentions, 2 hallucinated; 2 of 4 captions hallucinate; 7 of 8 ground-truth objects named;
    # 15 + 10 + 3 + 4 words.
    assert (out["mentions"], out["hallucinated"], out["n"]) == (10, 2, 4)
    assert out["chair_i"] == pytest.approx(2 / 10)
    assert out["chair_s"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(7 / 8)
    assert out["mean_length"] == pytest.approx(32 / 4)
    distinct = chair.chair(CAPTIONS, GROUND_TRUTH, synonyms, distinct=True)
    assert distinct["chair_i"] == pytest.approx(2 / 9)  # the first caption's second 'dog' no longer counts
    assert distinct["chair_s"] == out["chair_s"] and distinct["recall"] == out["recall"]


def test_chair_edge_cases(synonyms):
    out = chair.chair([{"image": "img4.jpg", "caption": "Nothing to see here."}], GROUND_TRUTH, synonyms)
    assert (out["chair_i"], out["chair_s"], out["recall"]) == (0.0, 0.0, 0.0)
    gt = {"x.jpg": ["puppy"]}  # ground truth given by a synonym maps to the canonical name
    assert chair.chair([{"image": "x.jpg", "text": "A dog."}], gt, synonyms)["chair_i"] == 0.0
    with pytest.raises(KeyError, match="missing.jpg"):
        chair.chair([{"image": "missing.jpg", "text": "A dog."}], GROUND_TRUTH, synonyms)


def test_coco_ground_truth(tmp_path, synonyms):
    instances = {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
                   {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 67, "name": "dining table"}],
        "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1},
                        {"image_id": 1, "category_id": 18}, {"image_id": 2, "category_id": 67}],
    }
    captions = {"annotations": [{"image_id": 3, "caption": "A kitten on a sofa."},
                                {"image_id": 2, "caption": "A table with wine glasses."}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    path = str(tmp_path / "instances.json")
    assert chair.coco_ground_truth(path) == {"COCO_val2014_000000000001.jpg": ["dog", "person"],
                                             "COCO_val2014_000000000002.jpg": ["dining table"],
                                             "COCO_val2014_000000000003.jpg": []}
    assert chair.coco_ground_truth(path, [2], key="id") == {2: ["dining table"]}
    with_caps = chair.coco_ground_truth(path, key="id", captions_json_path=str(tmp_path / "captions.json"),
                                        synonyms=synonyms)
    assert with_caps == {1: ["dog", "person"], 2: ["dining table", "wine glass"], 3: ["cat", "couch"]}
    with pytest.raises(ValueError, match="synonym"):
        chair.coco_ground_truth(path, captions_json_path=str(tmp_path / "captions.json"))


# --- AMBER ------------------------------------------------------------------------------

AMBER_ROWS = [  # (answer, truth, type)
    ("No", "no", "existence"), ("Yes", "no", "existence"), ("No", "yes", "existence"), ("Yes.", "yes", "existence"),
    ("No, it is not red", "no", "attribute"), ("Yes", "yes", "attribute"), ("No", "no", "attribute"),
    ("No", "yes", "count"), ("No", "yes", "count"),
    ("Maybe", "no", "relation"),
]


def official_amber(rows):
    """AMBER inference.py's discriminative counting (exact 'Yes'/'No' responses)."""
    correct = sum((t == "yes" and a == "Yes") or (t == "no" and a == "No") for a, t, _ in rows)
    answered_no = sum(a == "No" for a, _, _ in rows)
    answered_no_right = sum(a == "No" and t == "no" for a, t, _ in rows)
    truth_no = sum(t == "no" for _, t, _ in rows)
    return {"accuracy": correct / len(rows), "precision": answered_no_right / answered_no if answered_no else 0.0,
            "recall": answered_no_right / truth_no if truth_no else 0.0}


def test_amber_per_type_no_positive():
    """POPE's parsing and exact ratios (the world's defaults; AMBER's own are in test_amber_official.py)."""
    answers, labels, types = zip(*AMBER_ROWS)
    out = amber.amber_metrics(answers, labels, types, parsing="pope", scores="exact")
    ex, attr, count, rel = (out["by_type"][k] for k in ("existence", "attribute", "count", "relation"))
    assert list(out["by_type"]) == ["existence", "attribute", "count", "relation"]
    assert (ex["tp"], ex["fp"], ex["tn"], ex["fn"]) == (1, 1, 1, 1)
    assert (ex["accuracy"], ex["precision"], ex["recall"], ex["f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert (attr["accuracy"], attr["precision"], attr["recall"], attr["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert (count["accuracy"], count["precision"], count["recall"], count["f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert (rel["accuracy"], rel["fn"], rel["precision"]) == (0.0, 1, 0.0)  # 'Maybe' parses as yes
    overall = out["overall"]
    assert (overall["tp"], overall["fp"], overall["tn"], overall["fn"]) == (3, 3, 2, 2)
    assert overall["accuracy"] == pytest.approx(5 / 10)
    assert overall["precision"] == pytest.approx(3 / 6)
    assert overall["recall"] == pytest.approx(3 / 5)
    assert overall["f1"] == pytest.approx(2 * 0.5 * 0.6 / 1.1)
    # Yes as positive (POPE) gives other numbers on the same answers: the class matters.
    assert pope.pope_metrics(answers, labels)["precision"] == pytest.approx(2 / 4)
    assert pope.pope_metrics(answers, labels)["recall"] == pytest.approx(2 / 5)


def test_amber_strict_matches_official_and_type_names():
    rows = AMBER_ROWS + [("No.", "no", "existence"), ("yes", "yes", "relation")]
    answers, labels, _ = zip(*rows)
    types = ["discriminative-hallucination"] * len(rows)
    out = amber.amber_metrics(answers, labels, types, parsing="strict", scores="exact")
    assert list(out["by_type"]) == ["existence"]
    reference = official_amber(rows)
    for key, value in reference.items():
        assert out["overall"][key] == pytest.approx(value), key
        assert out["by_type"]["existence"][key] == pytest.approx(value), key
    lenient = amber.amber_metrics(answers, labels, types, parsing="pope", scores="exact")
    assert lenient["overall"]["accuracy"] > out["overall"]["accuracy"]  # "No." and "yes" count when parsed
    with pytest.raises(ValueError):
        amber.amber_metrics(answers, labels, types[:-1])

