"""SimPO end to end (`mode=pipeline`): the Re-Align pairs of configs/rdpo_llava.py trained with
SimPO, the reference-free objective (length-normalised log-probs, target margin gamma; no
reference forward at all), beta = 2 and gamma = 1 as the SimPO paper's gamma / beta = 0.5.

    python -m realign_jax.main --config=configs/simpo_llava.py --workdir=/tmp/simpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

Prints the before / after table like rdpo_llava.py; docs/benchmarks.md ("All methods") has its
figures over five seeds next to the other methods.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "simpo_llava.py")
    return common.to_config(common.pipeline("simpo"))
