"""The keys of `mode=eval` (configs/eval_world.py), here so the pipeline (realign_jax/pipeline.py)
builds the same evaluation as the command does."""

from __future__ import annotations

import ml_collections


def eval_config() -> ml_collections.ConfigDict:
    """POPE, CHAIR and AMBER-style on a synthetic world, or on the published files."""
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
