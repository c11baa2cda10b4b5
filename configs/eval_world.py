"""Hallucination benchmarks (POPE random/popular/adversarial, CHAIR, AMBER-style) on one
Hugging Face LLaVA checkpoint (`mode=eval`).

On the synthetic world, after configs/sft_world.py:

    python -m realign_jax.main --config=configs/eval_world.py --workdir=/tmp/world_eval \\
        --config.model.path=/tmp/world_sft/export --config.eval.world=/tmp/world_sft/world

On the real POPE files and COCO (images in eval.image_folder):

    python -m realign_jax.main --config=configs/eval_world.py --workdir=/tmp/pope \\
        --config.model.path=/ckpt/llava-1.5-7b-hf --config.model.dtype=bfloat16 \\
        --config.eval.benchmarks=pope --config.eval.pope_file=coco_pope_adversarial.json \\
        --config.eval.image_folder=/data/coco/val2014

Expected: a table (accuracy, precision, recall, F1, yes-ratio per POPE split; CHAIR_s,
CHAIR_i, recall, mean length; AMBER per type) and `<workdir>/eval/` with every answer as
JSON lines plus results.json.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "eval_world.py")
    return common.to_config(common.runs.EvalRun(model=common.runs.ModelSettings(preset="")))
