"""POVID end to end (`mode=pipeline`, realign_jax/pipeline.py), the sibling of rdpo_llava.py:

    python -m realign_jax.main --config=configs/povid_llava.py --workdir=/tmp/povid_pipeline

The same world, SFT base and evaluation as configs/rdpo_llava.py (point `--config.model.path`
at its `sft_grounding/export` to reuse that base); the pairs are POVID's rule-injected
rejections of the world's captions, and alignment runs POVID's two stages: DPO on the injected
pairs, then, from that merged model, the two-term loss with the policy's own response to the
diffusion-noised image (`align.stage2`). Prints the before / after table like rdpo_llava.py.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "povid_llava.py")
    return common.to_config(common.pipeline("povid"))
