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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.model = ml_collections.ConfigDict()
    config.model.path = ""  # a Hugging Face LLaVA folder with its tokenizer
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"

    config.eval = ml_collections.ConfigDict()
    config.eval.benchmarks = "pope,chair,amber"
    config.eval.world = ""  # a synthetic world folder (its eval split is the ground truth)
    config.eval.pope_file = ""  # a published POPE question file instead of the world
    config.eval.coco_instances = ""  # COCO instances_*.json for CHAIR instead of the world
    config.eval.synonyms = ""  # CHAIR's synonyms.txt for COCO
    config.eval.image_folder = ""  # images of the POPE file / COCO instances
    config.eval.max_images = 0  # 0 = all images of the split
    config.eval.pope_per_image = 3
    config.eval.seed = 0
    config.eval.batch_size = 32
    config.eval.answer_tokens = 8  # yes/no questions: the verdict comes first
    config.eval.caption_prompt = "Describe the image."
    config.eval.caption_tokens = 48
    return config
