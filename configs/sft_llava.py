"""Supervised fine-tuning (next-token loss on answers), the step before any preference method.

With no model path it fits a tiny random LLaVA to random-token answers (`data.source=random`),
which proves the machinery on 2 CPU cores in well under a minute:

    python -m realign_jax.main --config=configs/sft_llava.py --workdir=/tmp/realign_sft

Expected: the loss (token-mean NLL of the answers) falls from ~ln(256) = 5.5 towards 4 within
the 40 steps; the full model (vision tower frozen) is exported under `<workdir>/export`.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "sft_llava.py")
    return common.to_config(common.training("sft"))
