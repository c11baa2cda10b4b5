"""ORPO end to end (`mode=pipeline`): the Re-Align pairs of configs/rdpo_llava.py trained with
ORPO (the chosen answer's NLL plus lambda = loss.beta = 0.1 times the odds-ratio term; no
reference model).

    python -m realign_jax.main --config=configs/orpo_llava.py --workdir=/tmp/orpo_pipeline \\
        --config.model.path=/tmp/rdpo/sft_grounding/export

Prints the before / after table like rdpo_llava.py; docs/benchmarks.md ("All methods") has its
figures over five seeds next to the other methods.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "orpo_llava.py")
    return common.to_config(common.pipeline("orpo"))
