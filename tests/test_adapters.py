"""Dataset adapters on tiny local files in the public layouts of RLAIF-V (parquet with embedded
images), POVID (LLaVA-style JSON list + COCO folder) and VLFeedback (JSONL + merged_images)."""

from __future__ import annotations

import io
import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from realign_jax.data.adapters import PovidSource, RlaifVSource, VLFeedbackSource
from realign_jax.data.records import BadRecord

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assert_bad(source, index: int, field: str, problem: str = "") -> None:
    with pytest.raises(BadRecord) as caught:
        source[index]
    assert (caught.value.where, caught.value.field) == (source.where(index), field)
    assert problem in caught.value.problem


# --- RLAIF-V -------------------------------------------------------------------------------------


def rlaif_row(i: int, **changes) -> dict:
    row = {"ds_name": "RLAIF-V", "image": {"bytes": png((10 * i, 0, 0)), "path": f"{i}.png"},
           "question": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}.",
           "origin_dataset": "COCO", "origin_split": json.dumps({"model": "llava"}), "idx": str(100 + i),
           "image_path": f"coco/{i}.jpg"}
    return {**row, **changes}


def write_parquet(path, rows, row_group_size=2) -> str:
    schema = pa.schema([("ds_name", pa.string()), ("image", IMAGE_TYPE), ("question", pa.string()),
                        ("chosen", pa.string()), ("rejected", pa.string()), ("origin_dataset", pa.string()),
                        ("origin_split", pa.string()), ("idx", pa.string()), ("image_path", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return str(path)


def test_rlaif_v_folder_random_access(tmp_path):
    first = write_parquet(tmp_path / "RLAIF-V-Dataset_000.parquet", [rlaif_row(i) for i in range(3)])
    second = write_parquet(tmp_path / "RLAIF-V-Dataset_001.parquet", [rlaif_row(i) for i in range(3, 5)])
    source = RlaifVSource(str(tmp_path))
    assert len(source) == 5
    for i in (4, 0, 3, 1, 2, 0):
        record = source[i]
        assert record.id == str(100 + i)
        assert record.messages == (user(f"<image>\nQuestion {i}?"),)
        assert (record.chosen, record.rejected) == (f"Good answer {i}.", f"Bad answer {i}.")
        assert record.image == png((10 * i, 0, 0))
        assert Image.open(io.BytesIO(record.image)).size == (6, 4)
        assert record.provenance == {"dataset": "openbmb/RLAIF-V-Dataset", "ds_name": "RLAIF-V",
                                     "origin_dataset": "COCO", "origin_split": '{"model": "llava"}',
                                     "idx": str(100 + i), "image_path": f"coco/{i}.jpg"}
    assert source.where(2) == f"{first}:record 2"
    assert source.where(3) == f"{second}:record 0"
    assert source[-1] == source[4]
    with pytest.raises(IndexError):
        source[5]
    assert pickle.loads(pickle.dumps(source))[3] == source[3]  # Grain worker processes get a copy


def test_rlaif_v_reads_images_one_row_group_at_a_time(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "one.parquet", [rlaif_row(i) for i in range(5)])
    reads = []
    original = pq.ParquetFile.read_row_group

    def counting(self, group, *args, **kwargs):
        reads.append((group, kwargs.get("columns")))
        return original(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    source = RlaifVSource(path)  # a single file works as well as a folder
    assert reads == []  # building the source reads no image
    source[0], source[1], source[4], source[2]
    assert reads == [(0, ["image"]), (2, ["image"]), (1, ["image"])]


def test_rlaif_v_bad_rows(tmp_path):
    rows = [rlaif_row(0, image={"bytes": None, "path": "x.jpg"}), rlaif_row(1, image=None), rlaif_row(2, chosen=""),
            rlaif_row(3, rejected="Good answer 3."), rlaif_row(4, chosen=None), rlaif_row(5, question=None),
            rlaif_row(6)]
    source = RlaifVSource(write_parquet(tmp_path / "bad.parquet", rows))
    assert_bad(source, 0, "image", "no image bytes")
    assert_bad(source, 1, "image")
    assert_bad(source, 2, "chosen", "non-empty")
    assert_bad(source, 3, "rejected", "identical to chosen")
    assert_bad(source, 4, "chosen", "missing")
    assert_bad(source, 5, "question")
    assert source[6].chosen == "Good answer 6."


def test_rlaif_v_wrong_layout(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="no column"):
        RlaifVSource(str(tmp_path / "other.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet"):
        RlaifVSource(str(tmp_path / "empty"))


# --- POVID ---------------------------------------------------------------------------------------


def povid_item(i: int, **changes) -> dict:
    prompt = [{"from": "human", "value": "<image>\nDescribe this image in detail."}]
    item = {"id": f"COCO_train2014_{i:012d}", "image": f"COCO_train2014_{i:012d}.jpg",
            "conversations": prompt + [{"from": "gpt", "value": f"A horse and {i} people."}],
            "rejected_conversations": prompt + [{"from": "gpt", "value": f"A horse, a cart and {i} dogs."}]}
    return {**item, **changes}


def write_povid(tmp_path, items, images=3):
    (tmp_path / "coco").mkdir()
    for i in range(images):
        Image.new("RGB", (8, 8), (0, 40 * i, 0)).save(tmp_path / "coco" / f"COCO_train2014_{i:012d}.jpg")
    path = tmp_path / "POVID_preference_data_for_VLLMs.json"
    path.write_text(json.dumps(items))
    return PovidSource(str(path), str(tmp_path / "coco")), str(path)


def test_povid_records(tmp_path):
    multi_turn = [{"from": "human", "value": "<image>\nWhat animal is this?"}, {"from": "gpt", "value": "A horse."},
                  {"from": "human", "value": "Who is near it?"}]
    item = povid_item(2, conversations=multi_turn + [{"from": "gpt", "value": "Two riders."}],
                      rejected_conversations=multi_turn + [{"from": "gpt", "value": "A dog."}])
    source, path = write_povid(tmp_path, [povid_item(0), povid_item(1), item])
    assert len(source) == 3
    for i in (2, 0, 1):
        record = source[i]
        assert record.id == f"COCO_train2014_{i:012d}"
        assert record.image == str(tmp_path / "coco" / f"COCO_train2014_{i:012d}.jpg")
        assert record.provenance == {"dataset": "YiyangAiLab/POVID_preference_data_for_VLLMs",
                                     "image": f"COCO_train2014_{i:012d}.jpg"}
    assert source[0].messages == (user("<image>\nDescribe this image in detail."),)
    assert (source[1].chosen, source[1].rejected) == ("A horse and 1 people.", "A horse, a cart and 1 dogs.")
    assert source[2].messages == (user("<image>\nWhat animal is this?"), {"role": "assistant", "content": "A horse."},
                                  user("Who is near it?"))
    assert (source[2].chosen, source[2].rejected) == ("Two riders.", "A dog.")
    assert source.where(1) == f"{path}:record 1"
    assert pickle.loads(pickle.dumps(source))[1] == source[1]
    name = "coco/COCO_train2014_000000000000.jpg"
    (tmp_path / "beside.json").write_text(json.dumps([povid_item(0, image=name)]))
    assert PovidSource(str(tmp_path / "beside.json"))[0].image == str(tmp_path / name)  # default: the JSON's folder


def test_povid_bad_rows(tmp_path):
    other_prompt = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."}]
    no_answer = [{"from": "human", "value": "<image>\nDescribe this image in detail."}]
    items = [povid_item(0, image=None), povid_item(7), {k: v for k, v in povid_item(0).items() if k != "image"},
             {k: v for k, v in povid_item(0).items() if k != "rejected_conversations"},
             povid_item(0, rejected_conversations=other_prompt), povid_item(0, conversations=no_answer),
             povid_item(0, conversations=no_answer + [{"from": "gpt", "value": "  "}]),
             povid_item(0, rejected_conversations=povid_item(0)["conversations"]),
             povid_item(0, conversations=[{"from": "robot", "value": "hi"}]), "not an object", povid_item(1)]
    source, _ = write_povid(tmp_path, items)
    assert_bad(source, 0, "image", "must name an image file")
    assert_bad(source, 1, "image", "no such image file")
    assert_bad(source, 2, "image")
    assert_bad(source, 3, "rejected_conversations", "non-empty list")
    assert_bad(source, 4, "rejected_conversations", "differ from conversations")
    assert_bad(source, 5, "conversations", "must end with the answer")
    assert_bad(source, 6, "chosen", "non-empty")
    assert_bad(source, 7, "rejected", "identical to chosen")
    assert_bad(source, 8, "conversations[0]")
    assert_bad(source, 9, "<record>")
    assert source[10].id == "COCO_train2014_000000000001"


# --- VLFeedback ----------------------------------------------------------------------------------


def completion(model: str, response: str, *ratings: str) -> dict:
    aspects = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
    return {"model": model, "response": response,
            "annotations": {a: {"Rating": r, "Rationale": "..."} for a, r in zip(aspects, ratings)}}


def feedback_row(row_id: str, *completions: dict, prompt: str = "What is shown in the image?") -> dict:
    return {"id": row_id, "prompt": prompt, "models": [c["model"] for c in completions],
            "completions": list(completions)}


def write_feedback(tmp_path, lines, ids=("a", "b", "c", "d", "e")):
    (tmp_path / "merged_images").mkdir()
    for i, row_id in enumerate(ids):
        Image.new("RGB", (5, 5), (0, 0, 50 * i)).save(tmp_path / "merged_images" / f"{row_id}.jpg")
    path = tmp_path / "vlfeedback_80k.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return VLFeedbackSource(str(path), str(tmp_path / "merged_images")), str(path)


def test_vlfeedback_pairs_highest_and_lowest_mean_rating(tmp_path):
    rows = [
        feedback_row("a", completion("gpt-4v", "A cat on a mat.", "5", "5", "5"),
                     completion("llava", "A dog.", "2", "1", "5"), completion("qwen", "A cat.", "4", "4", "5"),
                     completion("fuyu", "Nothing.", "1", "1", "5")),  # fuyu: 7/3 = llava's 8/3 - 1/3, lowest
        feedback_row("b", completion("m1", "Same.", "3", "3", "3"), completion("m2", "Tied.", "4", "2", "3")),
        feedback_row("c", completion("m1", "Rated.", "4", "4", "4"), completion("m2", "Unrated.", "N/A", "4", "4")),
        feedback_row("d", completion("m1", "Worse.", "2", "2", "4"), completion("m2", "Unrated.", "N/A", "5", "5"),
                     completion("m3", "Better.", "5", "4", "5")),
        "",  # blank lines are not rows
        feedback_row("e", completion("m1", "Low.", "1", "1", "1"), completion("m2", "High.", "5", "5", "5")),
    ]
    source, path = write_feedback(tmp_path, rows)
    assert (len(source), source.skipped_ties, source.skipped_unrated) == (3, 1, 1)
    assert [source.where(i) for i in range(3)] == [f"{path}, line {n}" for n in (1, 4, 6)]
    for i in (2, 0, 1):
        record = source[i]
        assert record.id == ("a", "d", "e")[i]
        assert record.image == str(tmp_path / "merged_images" / f"{record.id}.jpg")
        assert record.messages == (user("<image>\nWhat is shown in the image?"),)
    first = source[0]
    assert (first.chosen, first.rejected) == ("A cat on a mat.", "Nothing.")
    assert first.provenance == {"dataset": "MMInstruction/VLFeedback", "chosen_model": "gpt-4v",
                                "rejected_model": "fuyu", "chosen_score": 5.0, "rejected_score": 7 / 3}
    assert (source[1].chosen, source[1].rejected) == ("Better.", "Worse.")
    assert (source[2].chosen, source[2].rejected) == ("High.", "Low.")
    assert pickle.loads(pickle.dumps(source))[2] == source[2]
    assert VLFeedbackSource(path)[0] == first  # default image_root: merged_images/ beside the JSONL


def test_vlfeedback_bad_rows(tmp_path):
    good = (completion("m1", "Good.", "5", "5", "5"), completion("m2", "Bad.", "1", "1", "1"))
    rows = [feedback_row("missing-image", *good), "{not json", {"id": "a", "prompt": "Q?"},
            feedback_row("a", *good, prompt=""), feedback_row("a", good[0], completion("m2", "", "1", "1", "1")),
            feedback_row("a", good[0], completion("m2", "Good.", "1", "1", "1")),
            {k: v for k, v in feedback_row("a", *good).items() if k != "id"},
            feedback_row("a", good[0], {"model": "m2", "response": "Bad."}), feedback_row("b", *good)]
    source, _ = write_feedback(tmp_path, rows)
    assert len(source) == len(rows)  # malformed rows stay in the index, so reading them says what is wrong
    assert_bad(source, 0, "image", "no such image file")
    assert_bad(source, 1, "<json>")
    assert_bad(source, 2, "completions")
    assert_bad(source, 3, "question")
    assert_bad(source, 4, "rejected", "non-empty")
    assert_bad(source, 5, "rejected", "identical to chosen")
    assert_bad(source, 6, "id")
    assert_bad(source, 7, "completions[1].annotations")
    assert source[8].chosen == "Good."


def test_vlfeedback_without_usable_rows(tmp_path):
    tie = feedback_row("a", completion("m1", "One.", "3", "3", "3"), completion("m2", "Two.", "3", "3", "3"))
    with pytest.raises(ValueError, match="1 ties"):
        write_feedback(tmp_path, [tie])
