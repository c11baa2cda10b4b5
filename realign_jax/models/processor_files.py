"""The processor files of an exported folder, written from what the run actually used.

`transformers.AutoProcessor` needs preprocessor_config.json (the image processor) and
processor_config.json (how `LlavaProcessor` expands `<image>`) beside the tokenizer; a source
folder holding only a tokenizer (the synthetic world's) or a random model has neither. These
files describe the project's preprocessing (data/images.py `ImageProcessing`, equal to the PIL
backend of CLIPImageProcessor, or LlavaImageProcessor when padding to a square) and the model's
image-token count, so the export processes images and prompts exactly as training did.

models/ may not import data/, so the preprocessing arrives as any object with
`ImageProcessing`'s fields (`ImageProcessingFields`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Any, Protocol

from realign_jax.models.config import LlavaConfig

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
_CHAT_TEMPLATE_FILES = (CHAT_TEMPLATE, "chat_template.json")  # either one gives the processor its template
# CLIP's class token: LlavaProcessor counts patches + this, less one under the "default" strategy
# (which drops it), so `<image>` expands to LlavaConfig.num_image_tokens under both strategies.
_CLIP_CLASS_TOKENS = 1


class ImageProcessingFields(Protocol):
    """What the writer reads of data/images.py `ImageProcessing`."""

    @property
    def size(self) -> int: ...
    @property
    def shortest_edge(self) -> int: ...
    @property
    def mean(self) -> tuple[float, float, float]: ...
    @property
    def std(self) -> tuple[float, float, float]: ...
    @property
    def resample(self) -> int: ...
    @property
    def pad_to_square(self) -> bool: ...


def image_processor_config(processing: ImageProcessingFields) -> dict[str, Any]:
    """preprocessor_config.json for `processing`; data/images.py `ImageProcessing.from_hf` reads it back
    unchanged. Without padding it is a CLIPImageProcessor, as llava-hf's LLaVA-1.5 folders have;
    LLaVA-1.5's pad-to-square needs LlavaImageProcessor's `do_pad`."""
    config: dict[str, Any] = {
        "image_processor_type": "LlavaImageProcessor" if processing.pad_to_square else "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_convert_rgb": True,
        "do_resize": True, "size": {"shortest_edge": processing.shortest_edge}, "resample": int(processing.resample),
        "do_center_crop": True, "crop_size": {"height": processing.size, "width": processing.size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(processing.mean), "image_std": list(processing.std),
    }
    if processing.pad_to_square:
        config["do_pad"] = True
    return config


def processor_config(config: LlavaConfig) -> dict[str, Any]:
    """processor_config.json: LlavaProcessor then expands each `<image>` to the model's image tokens."""
    return {
        "processor_class": "LlavaProcessor",
        "patch_size": config.vision.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": _CLIP_CLASS_TOKENS,
    }


def write_processor_files(path: str, config: LlavaConfig, processing: ImageProcessingFields,
                          keep: Collection[str] = ()) -> None:
    """Write the processor files into the export `path`, except those named in `keep` (copied from
    the source checkpoint, which know better); a stale file of an earlier export is replaced."""
    written = {PREPROCESSOR_CONFIG: image_processor_config(processing), PROCESSOR_CONFIG: processor_config(config)}
    for name, content in written.items():
        if name not in keep:
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True)
                f.write("\n")
    template = _tokenizer_chat_template(path)
    if template is not None and not any(name in keep for name in _CHAT_TEMPLATE_FILES):
        with open(os.path.join(path, CHAT_TEMPLATE), "w", encoding="utf-8") as f:
            f.write(template)


def _tokenizer_chat_template(path: str) -> str | None:
    """The chat template inside the export's tokenizer_config.json (the synthetic world keeps it
    there), which the processor does not read: it reads chat_template.jinja."""
    tokenizer_config = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(tokenizer_config):
        return None
    with open(tokenizer_config, encoding="utf-8") as f:
        template = json.load(f).get("chat_template")
    return template if isinstance(template, str) else None
