"""mDPO end to end (`mode=pipeline`, docs/methods.md section 5), a sibling of rdpo_llava.py:
DPO on the Re-Align pairs' texts, plus the conditional term against a random crop of the image
keeping 1-20% of it (`align.stage1.loss.alt_image=crop`), plus the anchor that keeps the
chosen reward positive. rDPO is this with a retrieved image instead of the crop and no anchor.

    python -m realign_jax.main --config=configs/mdpo_llava.py --workdir=/tmp/mdpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

Prints the before / after table like rdpo_llava.py.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "mdpo_llava.py")
    return common.to_config(common.pipeline("mdpo"))
