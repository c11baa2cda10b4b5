"""Plain DPO (sigmoid loss, docs/methods.md section 1) on LLaVA with LoRA, the base most methods build on.

With no model path it trains a tiny random LLaVA on random-token pairs (`data.source=random`)
in about a minute on 2 CPU cores; it proves the machinery, not a result:

    python -m realign_jax.main --config=configs/train_llava.py --workdir=/tmp/realign_dpo

Expected: the loss falls from ~0.693 and `rewards/accuracies` rises towards 1 within the 40
steps; `<workdir>/metrics.jsonl`, TensorBoard events under `<workdir>/tensorboard`, Orbax
checkpoints under `<workdir>/checkpoints` and the merged model in Hugging Face format under
`<workdir>/export`. Variants: `configs/train_llava.py:loss=rdpo` (or mdpo, which reads its random
crop by itself, povid, robust, ipo, hinge, any TRL loss type, and the reference-free simpo, cpo
and orpo, which set reference=none and run no reference forward); MPO is
`--config.loss.name=sigmoid+bco_pair+sft '--config.loss.weights=(0.8,0.2,1.0)'`.
Real runs: `--config.model.path=/ckpt/llava-1.5-7b-hf --config.model.dtype=bfloat16` and a data
source from the data issue; the papers' settings are LoRA r=128/alpha=256, lr 1e-5 (projector
2e-5), beta 0.1, batch 32, warm-up 3%, cosine, 1 epoch.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path
from realign_jax.objectives.losses import TERMS

LOSSES = tuple(sorted(TERMS))  # every registered loss; '+'-joined sums go through --config.loss.name


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.config_arg(arg, "train_llava.py", options={"loss": LOSSES})
    return common.to_config(common.training("train", options.get("loss", "dpo")))
