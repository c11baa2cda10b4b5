"""rDPO's training step alone (`mode=train`) at LLaVA-1.5 size: `:7b` and `:13b`.

Laid out for a TPU v5p-8 (4 chips, 95 GiB each): the papers' LoRA (r=128,
alpha=256 on q/k/v/o, the projector trained in full, lr 1e-5 / projector 2e-5, beta 0.1), bf16
compute on float32 weights, batch 32 pairs of 3 rows (chosen, rejected, chosen under the
retrieved image) of 1024 tokens (576 image tokens + prompt + answer; longer answers are cut at
the end), the base sharded over all chips (FSDP), and remat `dots` (matmul outputs kept: 18%
fewer FLOPs than `full`) with the batch in 2 (7B) / 4 (13B) micro-batches, the fewest that fit.
Check a layout fits before renting the slice (realign_jax/aot.py; libtpu in its own venv):

    python -m realign_jax.aot --config=configs/rdpo_llava_step.py:7b --topology=v5p-8
    python -m realign_jax.aot --config=configs/rdpo_llava_step.py:13b --topology=v5p-8

7B packs each micro-batch's pairs with shared prefixes (`data.share_prefix`: image + prompt once
for chosen and rejected) into rows of 3072 tokens. On the AOT check's random pairs (answers of 2-443
tokens) that is 24 rows of 3072 instead of 96 padded rows of 1024. The step bound drops from 2.30 s
to 1.90 s, with 62.13 GiB in place of 64.79 GiB. 13B keeps padded rows: with 8 pairs per
micro-batch on 4 chips, the packed rows round up to as many tokens as padding (4.57 s against
4.39 s at pack_len 2048).

Expected, per chip (measured at commit 5a7c845): 7B arguments 7.60 GiB, temporaries 54.48 GiB,
total 62.13 of 95 GiB, FITS, step >= 1.90 s; 13B 14.01, 48.17, 62.24 GiB, FITS, step >= 4.39 s
(lower bounds: the step's FLOPs at 459 TFLOP/s). Then train with
`--config.model.path=/ckpt/llava-1.5-7b-hf --config.data.source=... --config.data.path=...`
(without a path it trains random weights of the preset's shape: a throughput check). Elsewhere
(measured at commits 1627a7c to 5a7c845):
- v5e-16 (16 GiB chips) and v6e-8 (32 GiB): `--config.model.remat=full --config.train.grad_accum=1`
  (v5e-16: 10.02 / 13.25 GiB for 7B / 13B, 7B with `--config.data.packing=False
  --config.data.share_prefix=False`: 2 pairs per chip pack no tighter than they pad; v6e-8:
  27.31 GiB, step >= 0.57 s for 7B packed, 0.69 s padded, and 26.27 GiB for 13B).
- 8 x H100 80GB: `--config.model.attention_impl=cudnn`, 7B with `--config.train.grad_accum=1`
  (39.94 GiB, step >= 0.44 s; padded 50.90 GiB, 0.53 s), 13B with `--config.train.grad_accum=2`
  (45.98 GiB); `--topology=h100-8` checks it.
- dots with the whole batch at once: XLA asks for 106 GiB (7B) on a v5p chip; the base replicated
  instead of sharded (`--config.mesh.data=-1 --config.mesh.fsdp=1`) fits 7B with remat full
  (63.62 GiB) but not 13B.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path

SIZES = {"7b": "llava-1.5-7b", "13b": "llava-1.5-13b"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = common.config_arg(arg, "rdpo_llava_step.py", choices=tuple(SIZES), required=True)["variant"]
    settings = common.replace(
        common.training("train", "rdpo"),
        model__preset=SIZES[size],  # shapes for a run without model.path (random weights) and for aot.py
        # bf16 compute; the weights stay float32: LoRA adapters take their base kernel's dtype, and
        # bf16 adapters and projector would round away lr-1e-5 updates.
        model__dtype="bfloat16", model__remat="dots",
        lora__rank=128, lora__alpha=256.0, optim__lr=1e-5, optim__lr_groups=r"^projector\.=2e-5",
        data__seq_len=1024, data__pad_to_square="true",  # LLaVA-1.5 trained on padded squares
        data__num_examples=256,  # the random source's pairs, for a run without data
        train__batch_size=32,
        train__grad_accum={"7b": 2, "13b": 4}[size],  # the fewest micro-batches that fit a v5p chip with dots
        train__steps=1000, train__log_every=10, train__checkpoint_every=200,
        mesh__data=1, mesh__fsdp=-1)  # the base sharded over every chip, the batch split over them
    if size == "7b":  # measured with realign_jax.aot (docstring); 13B's micro-batches are too small to gain
        settings = common.replace(settings, data__packing=True, data__share_prefix=True, data__pack_len=3072)
    return common.to_config(settings)
