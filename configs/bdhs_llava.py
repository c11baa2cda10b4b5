"""BDHS end to end (`mode=pipeline`, realign_jax/pipeline.py), the sibling of rdpo_llava.py:

    python -m realign_jax.main --config=configs/bdhs_llava.py --workdir=/tmp/bdhs_pipeline

The same world, SFT base and evaluation as configs/rdpo_llava.py (point `--config.model.path`
at its `sft_grounding/export` to reuse that base); the pairs are the base model's own rewrites
of 1000 world captions with 99% of the image tokens hidden, and alignment is DPO on them.
Prints the before / after table like rdpo_llava.py. Online BDHS (sampling with the policy
during training) is configs/bdhs_train.py:online.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "bdhs_llava.py")
    return common.to_config(common.pipeline("bdhs"))
