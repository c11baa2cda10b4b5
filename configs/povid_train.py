"""POVID's two-stage training (docs/methods.md section 3), one config per stage, run one after
the other on the pairs of configs/povid_pairs.py:

    # the pairs: each chosen answer with a rule-injected rejected twin
    python -m realign_jax.main --config=configs/povid_pairs.py --workdir=/tmp/povid \\
        --config.world.dir=/tmp/world_sft1/world
    # stage 1: plain DPO on (chosen, injected) with LoRA; the export merges the adapters
    python -m realign_jax.main --config=configs/povid_train.py --workdir=/tmp/povid_dpo \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/povid/pairs
    # stage 2: the merged model is the new base and reference; the loss adds the noisy term
    python -m realign_jax.main --config=configs/povid_train.py:noise --workdir=/tmp/povid_noise \\
        --config.model.path=/tmp/povid_dpo/export --config.data.path=/tmp/povid/pairs

Stage 2 (`loss.name=povid`) is the public scripts' mean of two DPO terms: chosen against the
injected answer, and chosen against the model's own teacher-forced argmax response under the
diffusion-noised image (t=500, fresh noise each read), scored under the clean image
(`loss.noisy_scoring=argmax`). `--config.loss.name=povid_weighted` is the paper's single
sigmoid of a weighted sum. On real data: `--config.model.path=/ckpt/llava-1.5-7b-hf
--config.model.dtype=bfloat16` and pairs built from your records; the papers used LoRA
r=128/alpha=256, beta 0.1, 3 epochs for stage 1.

Expected: each stage prints its final loss and reward accuracy and exports to
`<workdir>/export`; evaluate either export with configs/eval_world.py.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage = common.config_arg(arg, "povid_train.py", choices=("noise",)).get("variant", "dpo")
    settings = common.aligning("dpo")  # stage 1: plain DPO on (chosen, injected)
    return common.to_config(common.povid_noise(settings) if stage == "noise" else settings)
