"""SFT of a small LLaVA-architecture base model on the synthetic world (the embedded default),
in two stages, each one command:

    python -m realign_jax.main --config=configs/sft_world.py --workdir=/tmp/world_sft1
    python -m realign_jax.main --config=configs/sft_world.py:grounding --workdir=/tmp/world_sft \
        --config.model.path=/tmp/world_sft1/export --config.world.dir=/tmp/world_sft1/world

The first generates the world into `<workdir>/world` (or `world.dir`) and trains on its
captions only (`train/captions.jsonl`); the second continues from that export on captions
plus three balanced yes/no existence pairs per image (`train/grounding.jsonl`). Each exports
the model with the world's tokenizer to `<workdir>/export`; evaluate with
configs/eval_world.py. `--config.world.records=sft` trains on the whole caption + QA mixture.

Why so: trained on the whole mixture from scratch the model answered from the language prior
alone. As in LLaVA the vision tower stays frozen: its random init already separates the
world's objects (a linear probe on its features: precision 0.82, recall 0.61 on category
presence), while training it with the decoder erased that (0.47 / 0.29). Captions teach the
decoder to read the image (image -> object names); the dense existence questions then teach
the lookup the other way (question word -> image), which the sparse QA of the mixture never did.

Expected (2 CPU cores, ~10 min for both stages on a quiet machine, rows packed): POPE random
F1 0.74 and yes-ratio 0.46, adversarial F1 0.68 and yes-ratio 0.54 (yes on absent companions
0.37 against 0.21 on random absent objects), CHAIR_i 0.37, recall 0.50; docs/benchmarks.md ("The base model")
has the table.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage = common.config_arg(arg, "sft_world.py", choices=tuple(common.WORLD_SFT_STEPS)).get("variant", "captions")
    return common.to_config(common.world_sft(stage))
