"""DPO on BDHS pairs (docs/methods.md section 4), offline or online:

    # offline: pairs sampled once from the SFT base with its image hidden, then plain DPO
    python -m realign_jax.main --config=configs/bdhs_pairs.py --workdir=/tmp/bdhs \\
        --config.model.path=/tmp/world_sft/export --config.world.dir=/tmp/world_sft1/world
    python -m realign_jax.main --config=configs/bdhs_train.py --workdir=/tmp/bdhs_dpo \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/bdhs/pairs
    # online: every `online_bdhs.every` steps the current policy rewrites the next records
    python -m realign_jax.main --config=configs/bdhs_train.py:online --workdir=/tmp/bdhs_online \\
        --config.model.path=/tmp/world_sft/export --config.data.path=/tmp/world_sft1/world/train/captions.jsonl

Online, `data.path` holds SFT-style records (`chosen` answers), not pairs: each round's pairs
are written to `<workdir>/online_bdhs/round-NNNNN.jsonl` and a resumed run reads them back.
On real data: `--config.model.path=/ckpt/llava-1.6-7b-hf --config.model.dtype=bfloat16`; the
paper used LoRA r=128/alpha=256 and a beta grid {0.05, 0.1, 0.2, 0.5}.

Expected: the final loss and reward accuracy, and the merged model in `<workdir>/export`;
evaluate it with configs/eval_world.py.
"""

import ml_collections

from realign_jax.train.train_configs import aligning_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "online"):
        raise ValueError(f"configs/bdhs_train.py:{arg}: choose nothing (offline) or 'online'")
    config = aligning_config("dpo")
    config.online_bdhs = ml_collections.ConfigDict()
    config.online_bdhs.every = 25 if arg == "online" else 0  # steps per sampling round; 0 = offline pairs
    config.online_bdhs.rho_th = 0.99
    config.online_bdhs.eps_s = 0.97
    config.online_bdhs.rounds = 5
    config.online_bdhs.flip_probability = 0.5
    config.online_bdhs.max_new_tokens = 64
    config.online_bdhs.temperature = 0.0
    config.online_bdhs.top_p = 1.0
    config.online_bdhs.sentence_model = ""  # empty = the packaged all-MiniLM-L6-v2
    config.online_bdhs.batch_size = 32  # prompts per generation batch
    return config
