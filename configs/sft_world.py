"""SFT of a small LLaVA-architecture base model on the synthetic world (the embedded default).

    python -m realign_jax.main --config=configs/sft_world.py --workdir=/tmp/world_sft

It generates the world into `<workdir>/world` (or `world.dir`) unless it is already there,
trains on its captions and QA (`train/sft.jsonl`) with the `sft` objective and exports the
model with the world's tokenizer to `<workdir>/export`. Evaluate it with
configs/eval_world.py. Measured so far (6 min 50 s on 2 CPU cores): the answer NLL falls
from 5.5 to ~0.43 per token, but the model learns the world's language prior only. Its
answers do not depend on the image yet (teacher-forced NLL is the same with shuffled
images), so POPE is all "No" and CHAIR_i is ~0.9. Making the base model ground its answers,
and then hallucinate absent companions, is open work (issue 5).
"""

import ml_collections

from realign_jax.train.config_base import training_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = training_config(mode="sft")
    config.world = ml_collections.ConfigDict()
    config.world.dir = ""  # empty = <workdir>/world
    config.world.seed = 0
    config.world.num_train_images = 6000
    config.world.num_eval_images = 500
    config.world.image_size = 32  # = model vision.image_size
    config.world.companion_probability = 0.9

    config.data.source = "jsonl"
    config.data.path = ""  # empty = the world's train/sft.jsonl
    config.data.seq_len = 128
    config.data.length_buckets = "64,96"
    config.train.batch_size = 32
    config.train.steps = 1500
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.optim.lr = 3e-3
    config.optim.warmup_ratio = 0.02
    config.train.trainable = r".*"  # a base model from scratch: everything trains, vision tower included
    return config
