"""SFT of a small LLaVA-architecture base model on the synthetic world (the embedded default).

    python -m realign_jax.main --config=configs/sft_world.py --workdir=/tmp/world_sft

It generates the world into `<workdir>/world` (or `world.dir`) unless it is already there,
trains on its captions and QA (`train/sft.jsonl`) with the `sft` objective and exports the
model with the world's tokenizer to `<workdir>/export`. Evaluate it with
configs/eval_world.py.

As in LLaVA, the vision tower stays frozen: its random init already separates the world's
objects (a linear probe on its features: precision 0.82, recall 0.61 on category presence),
while training it from scratch with the decoder erased that (0.47 / 0.29 after SFT) and the
model answered from the language prior alone.

Measured (9 min 40 s on 2 CPU cores; eval 23 s): answers depend on the image a little
(teacher-forced answer NLL 0.355 per token with the right images, 0.388 shifted, 0.394
blank; benchmarks/image_reliance.py), CHAIR_i 0.715, recall 0.216; POPE is near chance on
every split (F1 ~0.2, yes-ratio 0.10-0.14). The base model does not ground its yes/no
answers yet, so it cannot show the companion hallucination the world is built to probe
(issue 5).
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
    config.train.steps = 5000
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.optim.lr = 3e-3
    config.optim.warmup_ratio = 0.02
    config.train.trainable = r"^(projector|decoder)\."  # the tower stays frozen (see above)
    return config
