"""rDPO (docs/methods.md section 2) on the Re-Align pairs of configs/realign_pairs.py: the
textual term (chosen against the refilled answer, both on the image) plus the visual term
(chosen on its image against chosen on the retrieved image), w_v = 1.

    python -m realign_jax.main --config=configs/realign_pairs.py --workdir=/tmp/realign \\
        --config.model.path=/tmp/world_sft/export --config.world.dir=/tmp/world_sft1/world
    python -m realign_jax.main --config=configs/realign_train.py --workdir=/tmp/realign_rdpo \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/realign/pairs

`--config.loss.visual_weight=0` is plain DPO on the same pairs (the paper's ablation) and
`--config.loss.rejected_scoring=best_other` the public code's scoring of the rejected rows.
On real data: `--config.model.path=/ckpt/llava-1.5-7b-hf --config.model.dtype=bfloat16`; the
paper used LoRA r=128/alpha=256, lr 1e-5 (projector 2e-5), beta 0.1, batch 32, 1 epoch.

Expected: the final loss, reward accuracy and margins (`visual/` metrics for the visual term)
and the merged model in `<workdir>/export`; evaluate it with configs/eval_world.py.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "realign_train.py")
    return common.to_config(common.aligning("rdpo"))
