"""Caption images with a LLaVA checkpoint (KV-cache generation) and save the outputs.

With no checkpoint path this writes a tiny random LLaVA in Hugging Face format into the
work dir, loads it back and captions a drawn image (~20 s on 2 CPU cores). Its text is
noise: the run proves export, import, preprocessing and cached generation end to end.

    python -m realign_jax.main --config=configs/generate_llava.py --workdir=/tmp/realign

A real checkpoint and real images (LLaVA-1.5-7B needs ~28 GB in float32, use bfloat16):

    python -m realign_jax.main --config=configs/generate_llava.py --workdir=/tmp/realign \
        --config.model.path=/ckpt/llava-1.5-7b-hf --config.model.param_dtype=bfloat16 \
        --config.model.dtype=bfloat16 --config.data.images=/photos/a.jpg,/photos/b.jpg

Expected: one line per image and `<workdir>/generations.jsonl` with text, token ids and
tokens/s per image.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "generate_llava.py")
    return common.to_config(common.runs.GenerateRun())
