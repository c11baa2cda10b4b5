"""BDHS pairs (`mode=build_pairs`, docs/methods.md section 4): the base model rewrites each
chosen answer with its image hidden (each image token visible only when its draw is >= rho_th),
sentence by sentence from a random cut, until the rewrite is far enough from the original
(cosine < eps_s) or `rounds` are used up (the last round writes a whole answer unguided).

On the synthetic world, with the world base model of configs/sft_world.py (its captions are
the default records: several sentences to cut):

    python -m realign_jax.main --config=configs/bdhs_pairs.py --workdir=/tmp/bdhs \\
        --config.model.path=/tmp/world_sft/export --config.world.dir=/tmp/world_sft1/world

On your own records (a JSONL with `image`, `question`, `chosen`):

    python -m realign_jax.main --config=configs/bdhs_pairs.py --workdir=/tmp/bdhs \\
        --config.model.path=/models/llava --config.data.path=/data/sft.jsonl

Expected: a progress bar per round, then `bdhs: N pairs kept, M records dropped` and
`<workdir>/pairs/pairs-*.jsonl` (records with `rejected`, the same image, and in
`provenance` the round accepted, rho_th, the similarity and whether the answer was flipped or
written unguided). A killed run resumes where it stopped: rerun the same command.

Measured with the world base model (both stages of configs/sft_world.py) on the first 300
world captions (`--config.pairs.max_records=300`, 2 CPU cores): 37 s end to end, all 300
kept, accepted in rounds 1/2/3/4: 271/18/9/2. CHAIR_i of the chosen captions 0.000, of the
rejected 0.429 (CHAIR_s 0.000 and 0.783); with the image visible (`pairs.rho_th=0`) the
rejected captions score CHAIR_i 0.182, so hiding the image more than doubles the hallucinations.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "bdhs_pairs.py")
    return common.to_config(common.pairs_run("bdhs"))
