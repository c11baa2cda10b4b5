"""`WorldConfig`: every size and rate of the synthetic world in one frozen dataclass.

The same config and seed always give byte-identical files, so the config written to
`world.json` is the full recipe of a world.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from realign_jax.synthetic.layout import MAX_OBJECTS
from realign_jax.synthetic.render import auto_supersample
from realign_jax.synthetic.scenes import SamplingSpec


def _key(default: Any, meaning: str) -> Any:
    """A config key with its one-line meaning (read by realign_jax/settings/keys.py)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning})


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = _key(0, "the world's seed: the same recipe and seed give byte-identical files")
    num_train_images: int = _key(6000, "images of the train split")
    num_eval_images: int = _key(500, "images of the eval split")
    image_size: int = _key(32, "pixels per side (the tiny preset's vision.image_size; 64-256 draws clearer glyphs)")
    supersample: int = _key(0, "drawing resolution factor; 0 picks one from image_size")
    min_objects: int = _key(1, "fewest objects per image")
    max_objects: int = _key(4, "most objects per image")
    companion_probability: float = _key(0.9, "P(companion present | anchor present) in train: the prior to learn")
    eval_companion_absent_rate: float = _key(0.5, "eval: P(companion absent | anchor present), the probe")
    companion_weight: float = _key(0.5, "a companion picked on its own, relative to other categories")
    duplicate_probability: float = _key(0.15, "a non-anchor object comes twice")
    typical_color_probability: float = _key(0.85, "an object has its category's typical colour (else any colour)")
    captions_per_image: int = _key(1, "caption records per image (each with a prompt variant)")
    attribute_probability: float = _key(0.5, "a caption gives an object's colour (half as often size, position)")
    relation_probability: float = _key(0.4, "a caption adds one spatial relation")
    absent_companion_question_rate: float = _key(0.5, "share of 'no' existence questions about a missing companion")
    grounding_exist_pairs: int = _key(3, "(yes, no) existence questions per image in grounding.jsonl")
    tokenizer_vocab_size: int = _key(256, "the world tokenizer's size (the tiny preset's text.vocab_size)")

    def __post_init__(self) -> None:
        if self.num_train_images < 1 or self.num_eval_images < 1:
            raise ValueError(f"num_train_images and num_eval_images must be positive, got "
                             f"{self.num_train_images} and {self.num_eval_images}")
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size}: glyphs need at least 16 pixels")
        if self.supersample < 0:
            raise ValueError(f"supersample={self.supersample} must be >= 0 (0 = automatic)")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}")
        for name in ("companion_probability", "eval_companion_absent_rate", "duplicate_probability",
                     "typical_color_probability",
                     "attribute_probability", "relation_probability", "absent_companion_question_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.grounding_exist_pairs < 0:
            raise ValueError(f"grounding_exist_pairs={self.grounding_exist_pairs} must be >= 0")
        if self.captions_per_image < 0:
            raise ValueError(f"captions_per_image={self.captions_per_image} must be >= 0")
        if self.tokenizer_vocab_size < 64:
            raise ValueError(f"tokenizer_vocab_size={self.tokenizer_vocab_size}: the alphabet alone needs ~70 ids")
        self.sampling("train")  # validates the sampling knobs too

    @property
    def resolved_supersample(self) -> int:
        return self.supersample or auto_supersample(self.image_size)

    def sampling(self, split: str) -> SamplingSpec:
        """Scene sampling for a split: eval flips the companion rate to probe the prior."""
        probability = self.companion_probability if split == "train" else 1.0 - self.eval_companion_absent_rate
        return SamplingSpec(self.min_objects, self.max_objects, probability, self.duplicate_probability,
                            self.companion_weight, self.typical_color_probability)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WorldConfig:
        return cls(**obj)
