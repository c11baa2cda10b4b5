"""Parameter counts and FLOPs of a LLaVA shape, without allocating a single weight.

Counts come from `jax.eval_shape` of the real model, so they are the model's own, not a
formula's. FLOPs are matmul FLOPs (2 per multiply-add) of one forward pass, counted the
way the model computes them: full (unmasked) attention scores, and only the vision layers
up to the deepest feature layer LLaVA reads.

    python -m realign_jax.models.accounting --preset llava-1.5-7b --prompt-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import jax
from flax import nnx

from realign_jax.models.config import PRESETS, LlavaConfig, preset
from realign_jax.models.llava import abstract_model


def count_params(config: LlavaConfig) -> dict[str, int]:
    """Parameters per component (vision_tower, projector, decoder) and in total."""
    state = nnx.state(abstract_model(config), nnx.Param)
    counts = {name: sum(math.prod(x.shape) for x in jax.tree.leaves(state[name]))
              for name in ("vision_tower", "projector", "decoder")}
    counts["total"] = sum(counts.values())
    return counts


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """Matmul FLOPs of one forward pass over one sequence holding one image."""

    vision: int
    projector: int
    decoder: int
    sequence_length: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.decoder

    @property
    def per_token(self) -> float:
        return self.total / self.sequence_length


def vision_layers_run(config: LlavaConfig) -> int:
    """Encoder layers actually executed: up to the deepest selected hidden state."""
    total = config.vision.num_layers + 1
    return max(layer % total for layer in config.feature_layers)


def forward_flops(config: LlavaConfig, prompt_tokens: int) -> ForwardFlops:
    """FLOPs for a sequence of the image's placeholder tokens plus `prompt_tokens` text tokens."""
    v, t = config.vision, config.text
    patches = v.num_patches
    vision_tokens = patches + 1
    vision = 2 * patches * (v.num_channels * v.patch_size**2) * v.hidden_size
    vision += vision_layers_run(config) * (
        2 * vision_tokens * v.hidden_size * 4 * v.hidden_size  # q, k, v, out projections
        + 2 * vision_tokens * 2 * v.hidden_size * v.intermediate_size  # fc1, fc2
        + 2 * 2 * vision_tokens**2 * v.hidden_size  # scores and weighted values
    )
    image_tokens = config.num_image_tokens
    in_dim = v.hidden_size * len(config.feature_layers)
    projector = 2 * image_tokens * (in_dim * t.hidden_size + t.hidden_size**2)
    length = image_tokens + prompt_tokens
    hd = t.resolved_head_dim
    attn_dims = (2 * t.num_heads + 2 * t.num_kv_heads) * hd  # q, o and k, v widths
    decoder = t.num_layers * (
        2 * length * t.hidden_size * attn_dims
        + 2 * length * 3 * t.hidden_size * t.intermediate_size
        + 2 * 2 * length**2 * t.num_heads * hd
    )
    decoder += 2 * length * t.hidden_size * t.vocab_size  # LM head
    return ForwardFlops(vision, projector, decoder, length)


def _format(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llava-1.5-7b", choices=sorted(PRESETS))
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens besides the image's")
    args = parser.parse_args(argv)
    config = preset(args.preset)
    params = count_params(config)
    flops = forward_flops(config, args.prompt_tokens)
    print(f"{args.preset}: parameters")
    for name, count in params.items():
        print(f"  {name:13s} {count:>15,d}  ({_format(count)})")
    print(f"forward FLOPs, one image ({config.num_image_tokens} tokens) + {args.prompt_tokens} text tokens "
          f"= {flops.sequence_length} tokens:")
    print(f"  vision tower  {_format(flops.vision)}  ({vision_layers_run(config)} of {config.vision.num_layers} layers run)")
    print(f"  projector     {_format(flops.projector)}")
    print(f"  decoder       {_format(flops.decoder)}")
    print(f"  total         {_format(flops.total)}")
    print(f"  per token     {_format(flops.per_token)}  (training step ~3x: forward + backward)")


if __name__ == "__main__":
    main()
