"""Parameter counts and FLOPs of a LLaVA shape, without allocating a single weight.

Counts come from `jax.eval_shape` of the real model, so they are the model's own, not a
formula's. FLOPs are matmul FLOPs (2 per multiply-add) of one forward pass, counted the
way the model computes them: full (unmasked) attention scores, and only the vision layers
up to the deepest feature layer LLaVA reads. `step_flops` counts a training step from them,
term by term (forward, backward, reference, remat), for aot.py and the benchmarks.

    python -m realign_jax.models.accounting --preset llava-1.5-7b --prompt-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Collection, Sequence

import jax
from flax import nnx

from realign_jax.models.config import PRESETS, LlavaConfig, TextConfig, preset
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


def _attention_per_token(text: TextConfig, length: int) -> int:
    """Scores and weighted values of one token against a row of `length`: full (unmasked)."""
    return 2 * 2 * length * text.num_heads * text.resolved_head_dim


def _projection_widths(text: TextConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each decoder layer's projections."""
    d, q, kv, f = text.hidden_size, text.num_heads * text.resolved_head_dim, \
        text.num_kv_heads * text.resolved_head_dim, text.intermediate_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def decoder_flops(config: LlavaConfig, length: int) -> int:
    """The decoder's forward over one row of `length` tokens (image placeholders included):
    every layer's projections and attention, and the LM head at every position."""
    t = config.text
    per_layer_token = sum(2 * d_in * d_out for d_in, d_out in _projection_widths(t).values())
    decoder = t.num_layers * length * (per_layer_token + _attention_per_token(t, length))
    return decoder + 2 * length * t.hidden_size * t.vocab_size  # LM head


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
    decoder = decoder_flops(config, length)
    return ForwardFlops(vision, projector, decoder, length)


PARTS = ("vision_tower", "projector", "decoder")  # in the order the forward runs them
# reference kind (settings.runs.REFERENCES) -> reference forwards per step: `lora_off` (the policy's
# weights with the adapters off and any fully trained base groups at their start values) and
# `frozen_copy` run one; `precomputed` reads log-probs from the batch; `none` (SFT) has none.
REFERENCE_FORWARDS = {"lora_off": 1, "frozen_copy": 1, "precomputed": 0, "none": 0}
# model.remat -> the decoder projections a layer's rematerialisation runs again in the backward
# (besides the attention einsums, which both policies recompute): `full` keeps nothing but what
# only feeds the residual stream (o_proj, down_proj: XLA drops their recomputation), `dots`
# keeps every projection (dots without batch dimensions) and recomputes the attention einsums.
REMAT_PROJECTIONS = {"none": None, "full": ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"), "dots": ()}


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one training step, term by term (see `step_flops`)."""

    forward: int  # the policy's forward
    backward: int  # its backward: activations' gradients and trained weights' gradients
    reference: int  # the reference's forward
    remat: int  # what rematerialisation computes a second time in the backward

    @property
    def needed(self) -> int:
        """The work the step cannot do without: forward, backward and reference."""
        return self.forward + self.backward + self.reference

    @property
    def executed(self) -> int:
        """`needed` plus remat's recomputation."""
        return self.needed + self.remat


def step_flops(config: LlavaConfig, row_lengths: Sequence[int], images: int, *, trains: Collection[str],
               lora_rank: int = 0, lora_targets: Collection[str] = (), reference: str = "lora_off",
               remat: str = "none") -> StepFlops:
    """Matmul FLOPs of one step over decoder rows of `row_lengths` tokens (each counted at its
    length, as the model computes it: padding and packed rows' neighbours included) holding
    `images` images, from plain values:

    - `trains`: the parts of PARTS whose base weights train in full (`train.trainable`);
    - `lora_rank`, `lora_targets`: LoRA adapters on these decoder projections (names as in
      `_projection_widths`: q_proj ... down_proj), in every layer;
    - `reference`: a key of REFERENCE_FORWARDS; `remat`: a key of REMAT_PROJECTIONS.

    What is counted:

    - forward: per image the vision tower (the layers LLaVA reads) and the projector; the
      decoder over every row; LoRA's own matmuls, 2 r (d_in + d_out) per token and adapted
      projection.
    - backward, per part (vision tower, projector, decoder, in that order): 1x its forward for
      the activations' gradients where gradients pass through it (it, or a part before it, trains
      in full or holds adapters: a frozen vision tower under a trained projector has none), plus
      1x its forward for the weights' gradients where it trains in full; so 2x for what trains,
      1x for a frozen decoder under LoRA. LoRA's own matmuls: 2x their forward. (Simplification:
      the attention einsums are counted like projections, although under a frozen decoder both
      their operands' gradients are activations' gradients: there they are undercounted by 1x.)
    - reference: REFERENCE_FORWARDS[reference] forwards of the decoder and the projector, and of
      the vision tower only when it trains (a frozen tower's features serve both); no LoRA matmuls
      (the reference runs with the adapters off).
    - remat: where a backward runs through the decoder, each layer's attention einsums and the
      projections REMAT_PROJECTIONS names, once more (the reference and a frozen vision tower
      have no backward, so nothing of theirs is recomputed); LoRA's matmuls are left out.
    """
    if unknown := set(trains) - set(PARTS):
        raise ValueError(f"trains: {sorted(unknown)} are not parts of {PARTS}")
    if reference not in REFERENCE_FORWARDS:
        raise ValueError(f"reference={reference!r}: choose one of {tuple(REFERENCE_FORWARDS)}")
    if remat not in REMAT_PROJECTIONS:
        raise ValueError(f"remat={remat!r}: choose one of {tuple(REMAT_PROJECTIONS)}")
    t = config.text
    widths = _projection_widths(t)
    if unknown := set(lora_targets) - set(widths):
        raise ValueError(f"lora_targets: {sorted(unknown)} are not decoder projections {tuple(widths)}")
    image = forward_flops(config, 0)
    parts = {"vision_tower": images * image.vision, "projector": images * image.projector,
             "decoder": sum(decoder_flops(config, length) for length in row_lengths)}
    adapted = set(lora_targets) if lora_rank else set()
    tokens = sum(row_lengths)
    lora = sum(2 * lora_rank * sum(widths[name]) for name in adapted) * t.num_layers * tokens
    backward, flowing = 2 * lora, False
    for part in PARTS:
        flowing = flowing or part in trains or (part == "decoder" and bool(adapted))
        backward += (int(flowing) + int(part in trains)) * parts[part]
    reference_flops = REFERENCE_FORWARDS[reference] * (
        parts["decoder"] + parts["projector"] + (parts["vision_tower"] if "vision_tower" in trains else 0))
    recomputed = REMAT_PROJECTIONS[remat]
    remat_flops = 0
    if recomputed is not None and flowing:
        per_token = sum(2 * widths[name][0] * widths[name][1] for name in recomputed)
        remat_flops = t.num_layers * sum(length * (per_token + _attention_per_token(t, length))
                                         for length in row_lengths)
    return StepFlops(forward=sum(parts.values()) + lora, backward=backward,
                     reference=reference_flops, remat=remat_flops)


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
