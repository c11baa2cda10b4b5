"""DPO on BDHS pairs (docs/methods.md section 4), offline or online:

    # offline: pairs sampled once from the SFT base with its image hidden, then plain DPO
    python -m realign_jax.main --config=configs/bdhs_pairs.py --workdir=/tmp/bdhs \\
        --config.model.path=/tmp/world_sft/export --config.world.dir=/tmp/world_sft1/world
    python -m realign_jax.main --config=configs/bdhs_train.py --workdir=/tmp/bdhs_dpo \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/bdhs/pairs
    # online: every `online_bdhs.every` steps the current policy rewrites the next records
    python -m realign_jax.main --config=configs/bdhs_train.py:online --workdir=/tmp/bdhs_online \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/world_sft1/world/train/captions.jsonl

    # combined with an external rejected answer (the paper's g*L(y_w, y_l) + (1-g)*L(y_w, y~)):
    # BDHS writes its rewrite beside each POVID pair's rejected answer, then loss.name=dpo_combined
    python -m realign_jax.main --config=configs/bdhs_pairs.py --workdir=/tmp/bdhs_beside \
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/povid/pairs \
        --config.pairs.write_to=rejected_sampled
    python -m realign_jax.main --config=configs/bdhs_train.py:combined --workdir=/tmp/bdhs_combined \
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/bdhs_beside/pairs

Online, `data.path` holds SFT-style records (`chosen` answers), not pairs: each round's pairs
are written to `<workdir>/online_bdhs/round-NNNNN.jsonl` and a resumed run reads them back.
On real data: `--config.model.path=/ckpt/llava-1.6-7b-hf --config.model.dtype=bfloat16`; the
paper used LoRA r=128/alpha=256 and a beta grid {0.05, 0.1, 0.2, 0.5}.

Expected: the final loss and reward accuracy, and the merged model in `<workdir>/export`;
evaluate it with configs/eval_world.py.
"""

import ml_collections

from realign_jax.settings.sections import OnlineBdhsSettings

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.config_arg(arg, "bdhs_train.py", choices=("online", "combined")).get("variant")
    loss = "dpo_combined" if variant == "combined" else "dpo"  # combined: loss.combined_weight g = 0.5
    every = 25 if variant == "online" else 0
    settings = common.replace(common.aligning(loss), online_bdhs=OnlineBdhsSettings(every=every))
    return common.to_config(settings)
