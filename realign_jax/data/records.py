"""The preference record: one example as every source, builder and the pipeline see it.

A record is an image, the conversation up to the answer, a chosen and a rejected answer,
and the optional fields the methods add (the rejected image of Re-Align and mDPO, POVID's
image-noise spec and noisy response, precomputed reference log-probs, provenance). SFT and
evaluation examples are the same record with fewer fields.

JSON form (one object per JSONL line; `question` or `prompt` is shorthand for one user turn):

    {"id": "coco-42", "image": "images/42.jpg", "question": "What is on the table?",
     "chosen": "A cup.", "rejected": "A cup and a fork.",
     "rejected_image": "images/77.jpg", "image_noise": {"kind": "diffusion", "t": 500},
     "rejected_noisy": "...", "rejected_sampled": "...", "ref_logps": {"chosen": -12.5, "rejected": -20.1},
     "provenance": {"builder": "realign", "neighbour": 3, "similarity": 0.91}}

`messages` may replace `question`: a list of {"role", "content"} turns ending with a user
turn; the image placeholder `<image>` goes into the first user turn when no turn has it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from realign_jax.data import image_noise
from realign_jax.data.jsonl import BadValue, check_value
from realign_jax.data.prompting import IMAGE_PLACEHOLDER

Message = Mapping[str, str]
ON_BAD_RECORD = ("error", "skip")  # data.on_bad_record: stop with one line, or skip and count


def check_on_bad_record(value: str) -> None:
    if value not in ON_BAD_RECORD:
        raise ValueError(f"data.on_bad_record={value!r}: choose one of {ON_BAD_RECORD}")


class BadRecord(ValueError):
    """A record that cannot be used, with where it is and which field is wrong."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field '{field}': {problem}")

    @property
    def reason(self) -> str:
        """What skip counts file it under: the field at fault."""
        return self.field


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    messages: tuple[Message, ...]  # the conversation before the answer; ends with a user turn
    image: str | bytes | None = None  # path (relative to the source's image root) or encoded bytes
    chosen: str | None = None
    rejected: str | None = None
    rejected_image: str | bytes | None = None
    image_noise: Mapping[str, Any] | None = None
    rejected_noisy: str | None = None
    rejected_sampled: str | None = None  # a self-generated rejected answer beside an external one (BDHS)
    ref_logps: Mapping[str, float] | None = None
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (image bytes are not JSON: convert writes those to ArrayRecord)."""
        out: dict[str, Any] = {"id": self.id, "messages": [dict(m) for m in self.messages]}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in ("id", "messages") and value not in (None, {}):
                if isinstance(value, bytes):
                    raise TypeError(f"record {self.id}: field '{field.name}' holds image bytes; write ArrayRecord")
                out[field.name] = dict(value) if isinstance(value, Mapping) else value
        return out


def _messages(obj: Mapping[str, Any], where: str) -> tuple[Message, ...]:
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise BadRecord(where, "messages", "must be a non-empty list of {role, content} turns")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or \
                    m.get("role") not in ("system", "user", "assistant"):
                raise BadRecord(where, f"messages[{i}]", "must be {role: system|user|assistant, content: str}")
        if messages[-1]["role"] != "user":
            raise BadRecord(where, "messages", "must end with a user turn (the answer goes in chosen/rejected)")
        turns = [dict(m) for m in messages]
    else:
        key = "question" if "question" in obj else "prompt"
        text = obj.get(key)
        if not isinstance(text, str) or not text.strip():
            raise BadRecord(where, "question", "missing or empty (give 'question', 'prompt' or 'messages')")
        turns = [{"role": "user", "content": text}]
    if not any(IMAGE_PLACEHOLDER in t["content"] for t in turns):
        first_user = next(i for i, t in enumerate(turns) if t["role"] == "user")
        turns[first_user] = {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{turns[first_user]['content']}"}
    return tuple(turns)


def _optional_text(obj: Mapping[str, Any], field: str, where: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(where, field, f"must be a non-empty string, got {value!r}")
    if IMAGE_PLACEHOLDER in value:
        raise BadRecord(where, field, f"an answer must not contain the image placeholder {IMAGE_PLACEHOLDER}")
    return value


def _image_ref(obj: Mapping[str, Any], field: str, where: str) -> str | bytes | None:
    value = obj.get(field)
    if value is None or isinstance(value, bytes) or (isinstance(value, str) and value):
        return value
    raise BadRecord(where, field, f"must be an image path or bytes, got {value!r}")


def from_json(obj: Any, where: str) -> Record:
    """Validate one JSON object into a Record; `where` (e.g. 'train.jsonl:17') names it in errors."""
    if not isinstance(obj, Mapping):
        raise BadRecord(where, "<record>", f"must be a JSON object, got {type(obj).__name__}")
    try:
        check_value(obj)
    except BadValue as error:
        field = error.field or "<record>"
        raise BadRecord(where, field, error.problem if error.path == error.field else
                        f"at {error.path}: {error.problem}") from None
    provenance = obj.get("provenance")
    if provenance is not None and not isinstance(provenance, Mapping):
        raise BadRecord(where, "provenance", f"must be a JSON object (e.g. {{\"builder\": \"realign\"}}), "
                                             f"got {provenance!r}")
    ref_logps = obj.get("ref_logps")
    if ref_logps is not None and (not isinstance(ref_logps, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ref_logps.values())):
        raise BadRecord(where, "ref_logps", f"must map row kinds to finite numbers, got {ref_logps!r}")
    noise = obj.get("image_noise")
    problem = image_noise.check(noise) if noise is not None else None
    if problem:
        raise BadRecord(where, "image_noise", problem)
    record = Record(
        id=str(obj.get("id", where)), messages=_messages(obj, where), image=_image_ref(obj, "image", where),
        chosen=_optional_text(obj, "chosen", where), rejected=_optional_text(obj, "rejected", where),
        rejected_image=_image_ref(obj, "rejected_image", where), image_noise=noise,
        rejected_noisy=_optional_text(obj, "rejected_noisy", where),
        rejected_sampled=_optional_text(obj, "rejected_sampled", where),
        ref_logps={k: float(v) for k, v in ref_logps.items()} if ref_logps else None,
        provenance=dict(provenance or {}),
    )
    if record.chosen is not None and record.chosen == record.rejected:
        raise BadRecord(where, "rejected", "is identical to chosen")
    if record.chosen is not None and record.chosen == record.rejected_sampled:
        raise BadRecord(where, "rejected_sampled", "is identical to chosen")
    return record


def require(record: Record, fields: Sequence[str], where: str) -> None:
    """Fail with the first of `fields` the record lacks (what a method needs, e.g. rejected_image)."""
    for field in fields:
        if getattr(record, field) in (None, ""):
            raise BadRecord(where, field, "is required by this objective but missing")
