"""Record -> the arrays of one example in the trainer's layout (see train/rows.py).

Each row kind is the record's conversation plus one answer, tokenised with the checkpoint's
chat template (image placeholder expanded to the model's image tokens) and right-padded to
`seq_len`; `loss_mask` marks exactly the answer tokens. Image slot 0 is the record's image,
slot 1 the rejected image (rDPO), mDPO's random crop of the record's image (data/images.py
`random_resized_crop`; slot 2 a second one under loss.crop_per_forward) or, for POVID's argmax
scoring, the record's image with diffusion noise (data/image_noise.py). Over-long rows are
cut from the end of the answer, never inside the prompt and so never through the image
tokens, or dropped, by config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from realign_jax.data import image_noise
from realign_jax.data import images as image_ops
from realign_jax.data.prompting import IMAGE_PLACEHOLDER, encode_prompt_response
from realign_jax.data.records import BadRecord, Record

# Which answer and which image each row kind uses.
ROW_ANSWER = {"chosen": "chosen", "rejected": "rejected", "chosen_alt_image": "chosen",
              "rejected_noisy": "rejected_noisy", "rejected_sampled": "rejected_sampled"}
TRUNCATION = ("response", "drop")
SECOND_IMAGE = ("rejected_image", "noised", "cropped")
REF_LOGPS = ("kept", "required", "ignored")


class TooLong(BadRecord):
    """An example over `seq_len` under `truncation='drop'` (counted apart from broken records)."""

    @property
    def reason(self) -> str:
        return "too_long"


@dataclasses.dataclass(frozen=True)
class EncodedRow:
    kind: str
    ids: list[int]
    loss_mask: list[bool]  # True on answer tokens
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.ids)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    kinds: tuple[str, ...]
    num_images: int  # 1, 2 when a row or the noisy scoring needs slot 1, 3 for mDPO's per-forward crops
    seq_len: int
    num_image_tokens: int
    truncation: str = "response"  # response | drop
    # slot 1: rejected_image (rDPO) | noised (POVID's argmax) | cropped (mDPO's corrupted image;
    # slot 2, when there is one, an independent crop: the reference's under loss.crop_per_forward)
    second_image: str = "rejected_image"
    # a record's ref_logps: required (reference='precomputed': one per row, a record without them
    # is bad) | ignored (any other reference: the step never reads them, so a file that has them
    # for some records only still batches) | kept (passed on when present)
    ref_logps: str = "kept"
    # POVID's noised image where a record's image_noise names no form (data/image_noise.py)
    noise_form: str = "paper"

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(f"data.truncation={self.truncation!r}: choose one of {TRUNCATION}")
        if self.second_image not in SECOND_IMAGE:
            raise ValueError(f"second_image={self.second_image!r}: choose one of {SECOND_IMAGE}")
        if self.ref_logps not in REF_LOGPS:
            raise ValueError(f"ref_logps={self.ref_logps!r}: choose one of {REF_LOGPS}")
        if self.noise_form not in image_noise.FORMS:
            raise ValueError(f"data.image_noise_form={self.noise_form!r}: choose one of {image_noise.FORMS}")
        unknown = [k for k in self.kinds if k not in ROW_ANSWER]
        if unknown:
            raise ValueError(f"unknown row kinds {unknown}")


def _prompt_field(record: Record) -> str:
    """The JSON field a record's prompt came from, as its author wrote it: one user turn is
    the `question` shorthand (or `prompt`), several turns are `messages`."""
    return "question" if len(record.messages) == 1 else "messages"


class ExampleEncoder:
    """Turns records into example dicts of numpy arrays; raises BadRecord on unusable input."""

    def __init__(self, tokenizer: Any, processing: image_ops.ImageProcessing, config: EncoderConfig):
        self.tokenizer, self.processing, self.config = tokenizer, processing, config
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def deterministic(self) -> bool:
        """Whether a record always encodes to the same arrays (no noised or cropped image)."""
        return self.config.num_images < 2 or self.config.second_image == "rejected_image"

    def _image(self, record: Record, slot: int, where: str, rng: np.random.Generator | None) -> np.ndarray:
        derived = self.config.second_image if slot >= 1 and self.config.second_image != "rejected_image" else None
        field = "rejected_image" if slot == 1 and derived is None else "image"
        source = getattr(record, field)
        if source is None:
            raise BadRecord(where, field, "is required by this objective but missing")
        generator = rng if rng is not None else np.random.default_rng()
        perturb, noise = None, record.image_noise or image_noise.DEFAULT_NOISE
        form = noise.get("form", self.config.noise_form)
        if derived == "noised" and form == "paper":
            perturb = functools.partial(image_noise.diffuse, t=noise["t"], rng=generator)
        try:
            image = image_ops.load_image(source)
            if derived == "noised" and form == "povid_code":
                image = image_noise.povid_code(image_ops.to_rgb(image), noise["t"], generator)
            pixels = image_ops.preprocess(image, self.processing, perturb)
            return image_ops.random_resized_crop(pixels, generator) if derived == "cropped" else pixels
        except ValueError as error:
            raise BadRecord(where, field, str(error)) from None

    def row(self, record: Record, kind: str, where: str) -> EncodedRow:
        """One row's tokens and answer mask, cut to seq_len (or TooLong under 'drop')."""
        field = ROW_ANSWER[kind]
        answer = getattr(record, field)
        if answer is None:
            raise BadRecord(where, field, "is required by this objective but missing")
        messages = [*record.messages, {"role": "assistant", "content": answer}]
        try:
            encoded = encode_prompt_response(self.tokenizer, messages, IMAGE_PLACEHOLDER, self.config.num_image_tokens)
        except ValueError as error:
            raise BadRecord(where, field, str(error)) from None
        ids, mask = encoded.input_ids, encoded.response_mask
        full_length, prompt_len = len(ids), mask.index(True)
        if full_length > self.config.seq_len:
            if prompt_len + 1 > self.config.seq_len:  # no room for one answer token: the prompt is at fault
                raise TooLong(where, _prompt_field(record), f"the prompt alone is {prompt_len} tokens (with the "
                              f"image's), over data.seq_len={self.config.seq_len}")
            if self.config.truncation == "drop":
                raise TooLong(where, field, f"{full_length} tokens (prompt {prompt_len}) exceed data.seq_len="
                                            f"{self.config.seq_len}")
            ids, mask = ids[: self.config.seq_len], mask[: self.config.seq_len]
        return EncodedRow(kind, ids, mask, full_length)

    def encode(self, record: Record, where: str, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """The example's arrays; `rng` draws POVID's image noise (fresh from the OS if None)."""
        return self.encode_with_rows(record, where, rng)[0]

    def encode_with_rows(self, record: Record, where: str,
                         rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], list[EncodedRow]]:
        """`encode`'s arrays plus the rows they were built from (what `mode=inspect` shows)."""
        k, t = len(self.config.kinds), self.config.seq_len
        input_ids = np.full((k, t), self.pad_id, np.int32)
        attention = np.zeros((k, t), np.int32)
        loss = np.zeros((k, t), np.int32)
        # Under POVID's argmax scoring there is no noisy row (settings/runs.RowLayout.stacked_kinds):
        # the step scores the argmax under the noised image inside y_w's row.
        rows = [self.row(record, kind, where) for kind in self.config.kinds]
        for i, row in enumerate(rows):
            input_ids[i, : len(row.ids)] = row.ids
            attention[i, : len(row.ids)] = 1
            loss[i, : len(row.ids)] = row.loss_mask
        pixels = np.stack([self._image(record, slot, where, rng) for slot in range(self.config.num_images)])
        example = {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss, "pixel_values": pixels}
        if record.ref_logps is None and self.config.ref_logps == "required":
            raise BadRecord(where, "ref_logps", "is required by reference='precomputed' but missing: run "
                                                "mode=precompute on these records first")
        if record.ref_logps is not None and self.config.ref_logps != "ignored":
            missing = [kind for kind in self.config.kinds if kind not in record.ref_logps]
            if missing:
                raise BadRecord(where, "ref_logps", f"has no value for rows {missing}")
            example["ref_logps"] = np.array([record.ref_logps[kind] for kind in self.config.kinds], np.float32)
        return example, rows
