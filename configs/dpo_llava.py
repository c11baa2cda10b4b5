"""Plain DPO end to end (`mode=pipeline`), the ablation of configs/rdpo_llava.py: the same
Re-Align pairs, trained without the visual term (the paper's "same data, plain DPO" row).

    python -m realign_jax.main --config=configs/dpo_llava.py --workdir=/tmp/dpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

With `model.path` at rdpo_llava.py's base the two runs differ only in the loss. Prints the
before / after table like rdpo_llava.py. (Training DPO on any data without the pipeline:
configs/train_llava.py.)
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "dpo_llava.py")
    return common.to_config(common.pipeline("dpo"))
