"""Sources for public multimodal preference datasets, read from local files (nothing is downloaded).

Each adapter is a random-access source like `JsonlSource` (`len(s)`, `s[i] -> Record`, `s.where(i)`)
and raises `BadRecord` naming the row and field for a row it cannot use. Rows go through
`from_json` so that every source is validated the same way. `where` names the row in its file
(a folder of parquet files names the file), which is what someone fixing the data needs.

Layouts followed, and where they were checked:

RLAIF-V (hub `openbmb/RLAIF-V-Dataset`, files RLAIF-V-Dataset_000.parquet ...): columns ds_name,
image (struct {bytes, path}), question, chosen, rejected, origin_dataset, origin_split (JSON text),
idx, image_path. Sources: the dataset card's features and "Data fields" table; RLHF-V/RLAIF-V
muffin/data/datasets.py (`RLAIFVDataset` decodes image['bytes'], puts '<image>\\n' before the
question and keeps origin_dataset/origin_split/idx/image_path as metadata).

POVID (hub `YiyangAiLab/POVID_preference_data_for_VLLMs`, one JSON list): items {id, image (a COCO
train2014 file name, relative to the image folder), conversations: LLaVA turns [{from: human, value:
'<image>\\n...'}, {from: gpt, value: <chosen>}], rejected_conversations: the same turns ending in
the rejected answer}. There are no top-level chosen/rejected fields. Sources: YiyangZhou/POVID
README ("the format of preference data") and llava/train/train_dpo.py (reads `conversations` and
`rejected_conversations` and joins `image` to --image_folder).

VLFeedback (hub `MMInstruction/VLFeedback`, vlfeedback_80k.jsonl + merged_images.zip): one JSON
object per line {id, prompt, models, completions: [{model, response, annotations: {Helpfulness,
Visual Faithfulness, Ethical Considerations: {Rating: "1".."5" stored as text, Rationale}}}]}. The
image is merged_images/{id}.jpg. Sources: the dataset card's features and the loading script
VLFeedback.py (img_path = images_dir/f"{id}.jpg"). Scores follow vlf-silkie/VLFeedback run_dpo.py:
a completion scores the mean of float(Rating) over its aspects, and a completion whose rating is
not a number is left out. run_dpo.py pairs every two completions whose scores differ. Here each
row gives one pair (highest score chosen, lowest rejected), and rows without one are skipped.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from realign_jax.data.jsonl import decode, parse_line
from realign_jax.data.records import BadRecord, Record, from_json, require

PAIR = ("chosen", "rejected")
_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _image_file(root: str, name: Any, field: str, where: str) -> str:
    """Checks that the image exists now, so the error names the row and dataset field, not a decoder."""
    if not isinstance(name, str) or not name:
        raise BadRecord(where, field, f"must name an image file, got {name!r}")
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise BadRecord(where, field, f"{path}: no such image file")
    return path


def _to_record(obj: dict[str, Any], where: str) -> Record:
    """Shared validation, plus the answers that a preference dataset must have."""
    record = from_json(obj, where)
    require(record, PAIR, where)
    return record


class RlaifVSource:
    """RLAIF-V parquet file, or a folder of them (read in name order).

    The text columns are read when the source is built. Image bytes are read on access, one row
    group at a time, and the last group is kept for the next read. In HF's files a row group holds
    about 100 rows, so a shuffled read costs one row group per record. A long training run is
    better served by converting the data once.
    """

    TEXT = ("question", "chosen", "rejected")
    META = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")

    def __init__(self, path: str):
        if os.path.isdir(path):
            files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(".parquet"))
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f"{path!r}: no such parquet file or folder")
        if not files:
            raise ValueError(f"{path!r}: the folder has no .parquet files")
        self.files = files
        self._tables, self._starts, self._groups = [], [], []
        total = 0
        for file in files:
            with pq.ParquetFile(file) as parquet:
                names = parquet.schema_arrow.names
                missing = [c for c in (*self.TEXT, "image") if c not in names]
                if missing:
                    raise ValueError(f"{file}: not the RLAIF-V layout, it has no column(s) {missing}")
                self._tables.append(parquet.read(columns=[c for c in self.TEXT + self.META if c in names]))
                sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            self._groups.append(list(itertools.accumulate(sizes, initial=0)))  # first row of each group, then the end
            self._starts.append(total)
            total += self._groups[-1][-1]
        if total == 0:
            raise ValueError(f"{path!r}: no rows")
        self._len = total
        self._cached: tuple[tuple[int, int], Any] | None = None  # ((file, row group), image column); swapped whole

    def __len__(self) -> int:
        return self._len

    def _locate(self, index: int) -> tuple[int, int]:
        if not -self._len <= index < self._len:
            raise IndexError(f"record {index} out of range ({self._len} records)")
        index %= self._len
        file = bisect.bisect_right(self._starts, index) - 1
        return file, index - self._starts[file]

    def where(self, index: int) -> str:
        file, row = self._locate(index)
        return f"{self.files[file]}:record {row}"

    def _image(self, file: int, row: int) -> bytes | None:
        group = bisect.bisect_right(self._groups[file], row) - 1
        cached = self._cached  # one read of the attribute: other reader threads may replace it
        if cached is None or cached[0] != (file, group):
            with pq.ParquetFile(self.files[file]) as parquet:
                cached = ((file, group), parquet.read_row_group(group, columns=["image"]).column("image"))
            self._cached = cached
        value = cached[1][row - self._groups[file][group]].as_py()
        return value.get("bytes") if isinstance(value, dict) else value

    def __getitem__(self, index: int) -> Record:
        file, row = self._locate(index)
        where = f"{self.files[file]}:record {row}"
        table = self._tables[file]
        fields = {name: table.column(name)[row].as_py() for name in table.column_names}
        image = self._image(file, row)
        if not image:
            raise BadRecord(where, "image", "the row has no image bytes")
        provenance = {"dataset": "openbmb/RLAIF-V-Dataset"}
        provenance.update((k, fields[k]) for k in self.META if fields.get(k) is not None)
        idx = fields.get("idx")
        return _to_record({"id": where if idx is None else str(idx), "question": fields["question"], "image": image,
                           "chosen": fields["chosen"], "rejected": fields["rejected"], "provenance": provenance}, where)


def _llava_turns(turns: Any, field: str, where: str) -> tuple[list[dict[str, str]], str]:
    """LLaVA turns [{from: human|gpt, value}] -> (the messages before the final answer, that answer)."""
    if not isinstance(turns, list) or not turns:
        raise BadRecord(where, field, "must be a non-empty list of {from, value} turns")
    messages = []
    for i, turn in enumerate(turns):
        role = _LLAVA_ROLES.get(turn.get("from")) if isinstance(turn, Mapping) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise BadRecord(where, f"{field}[{i}]", "must be {from: human|gpt, value: str}")
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] != "assistant":
        raise BadRecord(where, field, "must end with the answer, a gpt turn")
    return messages[:-1], messages[-1]["content"]


class PovidSource:
    """POVID's JSON list. `image_root` is the folder of the COCO train2014 images the rows name
    (default: the JSON file's folder, as for `JsonlSource`)."""

    def __init__(self, path: str, image_root: str | None = None):
        with open(path, "rb") as f:
            try:
                rows = decode(f.read())  # each row is checked as a record when read
            except ValueError as error:
                raise ValueError(f"{path!r}: {error}") from None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{path!r}: expected a non-empty JSON list of POVID items")
        self.path, self._rows = path, rows
        self.image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))

    def __len__(self) -> int:
        return len(self._rows)

    def where(self, index: int) -> str:
        return f"{self.path}:record {index}"

    def __getitem__(self, index: int) -> Record:
        row, where = self._rows[index], self.where(index)
        if not isinstance(row, Mapping):
            raise BadRecord(where, "<record>", f"must be a JSON object, got {type(row).__name__}")
        messages, chosen = _llava_turns(row.get("conversations"), "conversations", where)
        rejected_prompt, rejected = _llava_turns(row.get("rejected_conversations"), "rejected_conversations", where)
        if rejected_prompt != messages:
            raise BadRecord(where, "rejected_conversations", "the turns before its answer differ from conversations'")
        image = _image_file(self.image_root, row.get("image"), "image", where)
        provenance = {"dataset": "YiyangAiLab/POVID_preference_data_for_VLLMs", "image": row["image"]}
        return _to_record({"id": str(row.get("id", where)), "messages": messages, "image": image,
                           "chosen": chosen, "rejected": rejected, "provenance": provenance}, where)


def _silkie_scores(obj: Any, where: str) -> dict[int, float]:
    """Completion index -> mean rating over its aspects; completions without numeric ratings left out."""
    if not isinstance(obj, Mapping):
        raise BadRecord(where, "<record>", f"must be a JSON object, got {type(obj).__name__}")
    completions = obj.get("completions")
    if not isinstance(completions, list) or not completions:
        raise BadRecord(where, "completions", "must be a non-empty list of {model, response, annotations}")
    scores = {}
    for i, completion in enumerate(completions):
        annotations = completion.get("annotations") if isinstance(completion, Mapping) else None
        if not isinstance(annotations, Mapping) or not annotations:
            raise BadRecord(where, f"completions[{i}].annotations", "must map aspects to {Rating, Rationale}")
        try:
            score = sum(float(aspect["Rating"]) for aspect in annotations.values()) / len(annotations)
        except (TypeError, ValueError, KeyError):  # e.g. "N/A"; Silkie drops these too
            continue
        if math.isfinite(score):
            scores[i] = score
    return scores


def _extremes(scores: dict[int, float]) -> tuple[int, int] | None:
    """(highest, lowest) completion, the first of equals; None when there is no pair."""
    if len(scores) < 2:
        return None
    best, worst = max(scores, key=scores.__getitem__), min(scores, key=scores.__getitem__)
    return None if scores[best] == scores[worst] else (best, worst)


class VLFeedbackSource:
    """vlfeedback_80k.jsonl with `image_root` = the unzipped merged_images folder ({id}.jpg);
    by default merged_images/ next to the JSONL, where unzipping the hub repo's archive puts it.

    Rows with no pair are skipped while indexing, because they are not bad data. `skipped_ties`
    counts rows whose rated completions all score the same. `skipped_unrated` counts rows with
    fewer than two rated completions. A malformed row is kept, so that reading it raises
    BadRecord. Indexing parses every line once (the full file is 426 MB).
    """

    def __init__(self, path: str, image_root: str | None = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r}: no such file")
        self.path = path
        self.image_root = image_root if image_root is not None else \
            os.path.join(os.path.dirname(os.path.abspath(path)), "merged_images")
        self.skipped_ties = self.skipped_unrated = 0
        self._offsets: list[int] = []
        self._lines: list[int] = []  # the file's line number of each record
        with open(path, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        scores = _silkie_scores(parse_line(line), "")
                    except ValueError:  # bad JSON or a BadRecord layout: kept, reading it says what is wrong
                        scores = None
                    if scores is not None and _extremes(scores) is None:
                        if len(scores) < 2:
                            self.skipped_unrated += 1
                        else:
                            self.skipped_ties += 1
                    else:
                        self._offsets.append(offset)
                        self._lines.append(lineno)
                offset += len(line)
        if not self._offsets:
            raise ValueError(f"{path!r}: no usable rows ({self.skipped_ties} ties, {self.skipped_unrated} unrated)")

    def __len__(self) -> int:
        return len(self._offsets)

    def where(self, index: int) -> str:
        return f"{self.path}, line {self._lines[index]}"

    def __getitem__(self, index: int) -> Record:
        where = self.where(index)
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        try:
            obj = parse_line(line)
        except ValueError as error:
            raise BadRecord(where, "<json>", str(error)) from None
        scores = _silkie_scores(obj, where)
        pair = _extremes(scores)
        if pair is None:
            raise BadRecord(where, "completions", "gives no preference pair (too few ratings, or all equal)")
        chosen, rejected = (obj["completions"][i] for i in pair)
        if not isinstance(obj.get("id"), (str, int)) or obj["id"] == "":
            raise BadRecord(where, "id", f"must be set: the image is merged_images/<id>.jpg, got {obj.get('id')!r}")
        image = _image_file(self.image_root, f"{obj['id']}.jpg", "image", where)
        provenance = {"dataset": "MMInstruction/VLFeedback", "chosen_model": chosen.get("model"),
                      "rejected_model": rejected.get("model"), "chosen_score": scores[pair[0]],
                      "rejected_score": scores[pair[1]]}
        return _to_record({"id": str(obj["id"]), "prompt": obj.get("prompt"), "image": image,
                           "chosen": chosen.get("response"), "rejected": rejected.get("response"),
                           "provenance": provenance}, where)
