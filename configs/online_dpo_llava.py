"""Online DPO end to end (`mode=pipeline`): the BDHS paper's on-policy baseline on the world.
Every 25 steps the policy samples 4 answers to each of the next 400 records (the captions of
configs/rdpo_llava.py's Re-Align pairs; their rejected answers are not read), the world's ground
truth ranks them (object recall minus the share of mentioned objects not in the image) and DPO
trains on the best / worst pair.

    python -m realign_jax.main --config=configs/online_dpo_llava.py --workdir=/tmp/online_dpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

Prints the before / after table like rdpo_llava.py; the rounds are in
`align_stage1/online_dpo/round-*.jsonl`. configs/mixed_dpo_llava.py keeps half of the Re-Align
pairs; configs/online_dpo_train.py trains on any records without the pipeline.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "online_dpo_llava.py")
    return common.to_config(common.pipeline("online_dpo"))
