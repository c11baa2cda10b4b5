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

Stage keys: `--config.sft.captions.train.steps`, `--config.pairs.k` / `.tau` / `.max_records`,
`--config.align.stage1.train.steps` / `.optim.lr` / `.loss.beta` / `.loss.visual_weight`,
`--config.eval.benchmarks`.

The rDPO training step alone at LLaVA-1.5 size (7B, 13B on a TPU v5p-8) is
configs/rdpo_llava_step.py.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path

STEP_SIZES = ("13b", "7b")  # configs/rdpo_llava_step.py's


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"configs/rdpo_llava.py:{arg}: the pipeline takes no argument; the LLaVA-1.5 training "
                         f"steps are configs/rdpo_llava_step.py:ARG, ARG one of {list(STEP_SIZES)}")
    return common.to_config(common.pipeline("rdpo"))
