"""Re-Align end to end (`mode=pipeline`, realign_jax/pipeline.py): the first command to run.

    python -m realign_jax.main --config=configs/rdpo_llava.py --workdir=/tmp/rdpo

With no model and no data it generates the synthetic world, SFTs its small base model (two
curriculum stages, configs/sft_world.py), evaluates it, builds Re-Align pairs from 1000 world
captions (masked refills from images retrieved with ScaNN over the model's own vision tower),
trains rDPO (textual + visual term) with LoRA and evaluates again; then prints the before /
after table and writes `<workdir>/results.json` and `<workdir>/curves.png` (loss and reward
margins). A rerun reuses every finished stage.

On your own checkpoint and records (the SFT stages are skipped):

    python -m realign_jax.main --config=configs/rdpo_llava.py --workdir=/tmp/rdpo \\
        --config.model.path=/ckpt/llava-1.5-7b-hf --config.model.dtype=bfloat16 \\
        --config.data.path=/data/sft.jsonl --config.pairs.synonyms=/data/synonyms.txt \\
        --config.eval.pope_file=/data/coco_pope_adversarial.json --config.eval.image_folder=/data/val2014

Stage keys: `--config.sft.captions_steps`, `--config.pairs.k` / `.tau` / `.max_records`,
`--config.align.stage1.train.steps` / `.optim.lr` / `.loss.beta` / `.loss.visual_weight`,
`--config.eval.benchmarks`.

`configs/rdpo_llava.py:7b` and `:13b` are instead the rDPO training step alone (`mode=train`) at
LLaVA-1.5 size, laid out for a TPU v5p-8 (4 chips, 95 GiB each): the papers' LoRA (r=128,
alpha=256 on q/k/v/o, the projector trained in full, lr 1e-5 / projector 2e-5, beta 0.1), bf16
compute on float32 weights, batch 32 pairs of 3 rows (chosen, rejected, chosen under the
retrieved image) of 1024 tokens (576 image tokens + prompt + answer; longer answers are cut at
the end), the base sharded over all chips (FSDP), and remat `dots` (matmul outputs kept: 18%
fewer FLOPs than `full`) with the batch in 2 (7B) / 4 (13B) micro-batches, the fewest that fit.
Check a layout fits before renting the slice (realign_jax/aot.py; libtpu in its own venv):

    python -m realign_jax.aot --config=configs/rdpo_llava.py:7b --topology=v5p-8
    python -m realign_jax.aot --config=configs/rdpo_llava.py:13b --topology=v5p-8

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

from realign_jax.pipeline import pipeline_config
from realign_jax.train.train_configs import training_config

SIZES = {"7b": "llava-1.5-7b", "13b": "llava-1.5-13b"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if not arg:
        return pipeline_config("rdpo")
    if arg not in SIZES:
        raise ValueError(f"configs/rdpo_llava.py:{arg}: choose one of {sorted(SIZES)} (or no argument: the pipeline)")
    config = training_config(mode="train", loss="rdpo")
    config.model.preset = SIZES[arg]  # shapes for a run without model.path (random weights) and for aot.py
    # bf16 compute; the weights stay float32 (training_config's param_dtype): LoRA adapters take
    # their base kernel's dtype, and bf16 adapters and projector would round away lr-1e-5 updates.
    config.model.dtype = "bfloat16"
    config.model.remat = "dots"
    config.lora.rank, config.lora.alpha = 128, 256.0
    config.optim.lr = 1e-5
    config.optim.lr_groups = r"^projector\.=2e-5"
    config.data.seq_len = 1024
    if arg == "7b":  # measured with realign_jax.aot (docstring); 13B's micro-batches are too small to gain
        config.data.packing, config.data.share_prefix, config.data.pack_len = True, True, 3072
    config.data.num_examples = 256  # the random source's pairs, for a run without data
    config.train.batch_size = 32
    config.train.grad_accum = {"7b": 2, "13b": 4}[arg]  # the fewest micro-batches that fit a v5p chip with dots
    config.train.steps = 1000
    config.train.log_every = 10
    config.train.checkpoint_every = 200
    config.mesh.data, config.mesh.fsdp = 1, -1  # the base sharded over every chip, the batch split over them
    return config
