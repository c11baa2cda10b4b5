"""Mixed DPO end to end (`mode=pipeline`): the BDHS paper's alpha * L(y_w, y_l) + (1 - alpha) *
L(y~_w, y~_l) with alpha ~ Bernoulli(0.5) per record. Each record of configs/rdpo_llava.py's
Re-Align pairs keeps its own pair with probability 0.5; otherwise the policy samples 4 answers
and the world's ground truth picks the best and worst, as in configs/online_dpo_llava.py.

    python -m realign_jax.main --config=configs/mixed_dpo_llava.py --workdir=/tmp/mixed_dpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

Prints the before / after table like rdpo_llava.py; the rounds (kept and sampled pairs) are in
`align_stage1/online_dpo/round-*.jsonl`.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "mixed_dpo_llava.py")
    return common.to_config(common.pipeline("mixed_dpo"))
