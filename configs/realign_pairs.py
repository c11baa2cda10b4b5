"""Re-Align's dual-preference pairs (`mode=build_pairs`, docs/methods.md section 2): each
chosen answer is masked (objects, attributes, relations), the image's nearest images by the
VLM's own vision tower are retrieved, and the VLM refills the masks looking at neighbour
t = 1..k until the refill's sentence-embedding cosine with the chosen answer is below tau; the
refill is the rejected answer and that neighbour the rejected image.

On the synthetic world, with the world base model of configs/sft_world.py (the world's
captions are the default records):

    python -m realign_jax.main --config=configs/realign_pairs.py --workdir=/tmp/realign \\
        --config.model.path=/tmp/world_sft/export --config.world.dir=/tmp/world_sft1/world

On your own records (a JSONL with `image`, `question`, `chosen`) and a CHAIR synonym table
for their objects, or an OpenAI-compatible LLM to mask instead:

    python -m realign_jax.main --config=configs/realign_pairs.py --workdir=/tmp/realign \\
        --config.model.path=/models/llava-1.5-7b-hf --config.model.dtype=bfloat16 \\
        --config.data.path=/data/sft.jsonl --config.pairs.synonyms=/data/synonyms.txt
    # masks by an LLM:  --config.pairs.masker=llm --config.pairs.llm.base_url=http://localhost:8000/v1 \\
    #                   --config.pairs.llm.model=<name> [--config.pairs.llm.api_key_env=OPENAI_API_KEY]

Expected: the images embedded once (kept in `<pairs.output>/index` for reruns), a progress bar
over the records, then `realign: N pairs kept, M records dropped`, the counts (accepted_at_<t>
per neighbour rank, dropped_<reason>) and `<workdir>/pairs/pairs-*.jsonl`: records with
`rejected`, `rejected_image` (relative to the pairs folder, like `image`) and in `provenance`
the masked template, the neighbour's rank and image similarity and the text similarity;
`similarity_histogram.json` there bins the cosines of every scored refill and of the accepted
ones. A killed run resumes where it stopped: rerun the same command.

Measured on the default world with its SFT base model, 1000 caption records
(`--config.pairs.max_records=1000`, 2 CPU cores): 42 s including embedding the 6000 images;
1000 kept (976 at neighbour 1); CHAIR_i against the chosen image 0.000 for the chosen and
0.588 for the rejected answers (0.292 against the neighbour image they were refilled from).
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "realign_pairs.py")
    return common.to_config(common.pairs_run("realign"))
