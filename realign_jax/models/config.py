"""Model shapes and run-time switches for LLaVA-architecture models.

Architecture fields mirror Hugging Face's `LlavaConfig` (a CLIP vision config plus a
Llama/Mistral/Qwen2 text config) so a checkpoint's `config.json` maps onto them one to one.
Run-time fields (dtypes, remat, scan) never change the weights, only how they are used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

RematPolicy = Literal["none", "full", "dots"]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A CLIP-style ViT (the vision tower of every LLaVA-1.5 checkpoint)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A Llama-style decoder; `qkv_bias` covers Qwen2, which biases q/k/v but not o."""

    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    model_type: str = "llama"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """Architecture (HF-mappable) plus run-time switches of a LLaVA model."""

    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    image_token_id: int = 32000
    # An int selects one hidden state of the vision tower; a tuple concatenates several (HF semantics).
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    # Run-time switches: they never change the checkpoint.
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: RematPolicy = "none"
    scan_layers: bool = True
    attention_impl: Literal["xla", "cudnn"] = "xla"

    def __post_init__(self) -> None:
        _check_config(self)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens one image expands to in `input_ids`."""
        cls_token = 1 if self.vision_feature_select_strategy == "full" else 0
        return self.vision.num_patches + cls_token

    def replace(self, **changes: Any) -> LlavaConfig:
        return dataclasses.replace(self, **changes)


def _check_config(config: LlavaConfig) -> None:
    """Reject impossible shapes up front, naming the field, instead of failing in XLA."""
    text, vision = config.text, config.vision
    if text.num_heads % text.num_kv_heads:
        raise ValueError(
            f"text.num_heads={text.num_heads} must be a multiple of text.num_kv_heads={text.num_kv_heads}"
        )
    if vision.hidden_size % vision.num_heads:
        raise ValueError(
            f"vision.hidden_size={vision.hidden_size} must be a multiple of vision.num_heads={vision.num_heads}"
        )
    if vision.image_size % vision.patch_size:
        raise ValueError(
            f"vision.image_size={vision.image_size} must be a multiple of vision.patch_size={vision.patch_size}"
        )
    if config.vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(
            f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: expected 'default' or 'full'"
        )
    for layer in config.feature_layers:
        if not -vision.num_layers - 1 <= layer <= vision.num_layers:
            raise ValueError(
                f"vision_feature_layer={layer} is outside the {vision.num_layers + 1} hidden states of the vision tower"
            )
    if config.remat not in ("none", "full", "dots"):
        raise ValueError(f"model.remat={config.remat!r}: expected 'none', 'full' or 'dots'")
    if config.attention_impl not in ("xla", "cudnn"):
        raise ValueError(f"model.attention_impl={config.attention_impl!r}: expected 'xla' or 'cudnn'")
    for key in ("param_dtype", "dtype"):
        if getattr(config, key) not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.{key}={getattr(config, key)!r}: expected 'float32', 'bfloat16' or 'float16'")
    if text.hidden_act != "silu":
        raise ValueError(f"text.hidden_act={text.hidden_act!r}: only 'silu' (Llama/Mistral/Qwen2) is supported")
    if vision.hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"vision.hidden_act={vision.hidden_act!r}: expected 'quick_gelu' or 'gelu'")


# Named shapes. `tiny` is what tests use, `world` the synthetic world's base model; the others are the
# published LLaVA-1.5 checkpoints (CLIP ViT-L/14-336 + Vicuna-7B/13B).
PRESETS: dict[str, LlavaConfig] = {
    "tiny": LlavaConfig(
        vision=VisionConfig(
            hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=32, patch_size=8
        ),
        text=TextConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=512,
        ),
        image_token_id=255,
    ),
    # The synthetic world's base model: 4-pixel patches resolve its small glyphs (64 image
    # tokens), and a wider decoder; still minutes of SFT on 2 CPU cores.
    "world": LlavaConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32, patch_size=4
        ),
        text=TextConfig(
            vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=2,
            max_position_embeddings=512,
        ),
        image_token_id=255,
    ),
    # ~17M parameters, where a step on 2 CPU cores is still seconds: the side-by-side benchmarks' shape
    # (vision 256 wide x 4 layers, 64 image tokens; text 512 wide x 4 layers).
    "small": LlavaConfig(
        vision=VisionConfig(
            hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, image_size=128, patch_size=16
        ),
        text=TextConfig(
            vocab_size=256, hidden_size=512, intermediate_size=1376, num_layers=4, num_heads=8, num_kv_heads=8,
            max_position_embeddings=1024,
        ),
        image_token_id=255,
    ),
    "llava-1.5-7b": LlavaConfig(),
    "llava-1.5-13b": LlavaConfig(
        text=TextConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40)
    ),
}


def preset(name: str, **changes: Any) -> LlavaConfig:
    """A named shape, with run-time switches (dtype, remat, ...) overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
