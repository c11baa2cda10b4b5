"""POVID's injected pairs (`mode=build_pairs`, docs/methods.md section 3): each chosen answer
gets a rejected twin with rule-based hallucinations (an absent object that co-occurs with the
mentioned ones, a wrong colour or size, a swapped relation, a wrong count, a flipped yes/no).

On the synthetic world (generated into `<workdir>/world` unless `world.dir` holds it):

    python -m realign_jax.main --config=configs/povid_pairs.py --workdir=/tmp/povid

On your own records (a JSONL with `image`, `question`, `chosen`) and a CHAIR synonym table
for their objects:

    python -m realign_jax.main --config=configs/povid_pairs.py --workdir=/tmp/povid \\
        --config.data.path=/data/sft.jsonl --config.pairs.synonyms=/data/synonyms.txt

Expected: a progress bar, then `povid: N pairs kept, M records dropped` and
`<workdir>/pairs/pairs-*.jsonl` (records with `rejected` and the edits in `provenance`).
A killed run resumes where it stopped: rerun the same command. Measured on the default world
(6000 images, 34,555 records, 2 CPU cores): 34,555 pairs in 9 s; on its 6000 captions CHAIR_i
is 0.000 for the chosen and 0.173 for the rejected answers (CHAIR_s 0.000 and 0.561).
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "povid_pairs.py")
    return common.to_config(common.pairs_run("povid"))
