"""Online DPO and mixed DPO (docs/methods.md section 4), the BDHS paper's on-policy baselines:

    # online DPO: every 25 steps the policy samples 4 answers per record, the world's ground
    # truth ranks them (object recall minus the share of mentioned objects not in the image),
    # and the best and worst answers are trained on for the next 25 steps
    python -m realign_jax.main --config=configs/online_dpo_train.py --workdir=/tmp/online_dpo \\
        --config.model.path=/tmp/world_sft/export --config.online_dpo.world=/tmp/world_sft1/world \\
        --config.data.path=/tmp/world_sft1/world/train/captions.jsonl
    # mixed DPO: each record keeps its own (chosen, rejected) pair with probability 0.5
    # (the paper's alpha ~ Bernoulli(0.5)), else trains on a sampled pair as above
    python -m realign_jax.main --config=configs/online_dpo_train.py:mixed --workdir=/tmp/mixed_dpo \\
        --config.model.path=/tmp/world_sft/export --config.online_dpo.world=/tmp/world_sft1/world \\
        --config.data.path=/tmp/povid/pairs

Each round's pairs are written to `<workdir>/online_dpo/round-NNNNN.jsonl`, with the k scores
and the picked answers in each row's provenance; a resumed run reads them back. On real data
rank with an LLM judge behind an OpenAI-compatible endpoint instead of the world:
`--config.online_dpo.annotator=judge --config.online_dpo.llm.base_url=http://localhost:8000/v1
--config.online_dpo.llm.model=<name>` (it scores each answer 0-10 against the record's chosen
answer), and `--config.model.path=/ckpt/llava-1.6-7b-hf --config.model.dtype=bfloat16`.

Expected: the final loss and reward accuracy, the merged model in `<workdir>/export`; evaluate
it with configs/eval_world.py.
"""

import ml_collections

from realign_jax.settings.sections import OnlineDpoSettings

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.config_arg(arg, "online_dpo_train.py", choices=("mixed",)).get("variant")
    online = OnlineDpoSettings(every=25, offline_share=0.5 if variant == "mixed" else 0.0)
    return common.to_config(common.replace(common.aligning("dpo"), online_dpo=online))
