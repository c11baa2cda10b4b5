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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg  # no variants yet
    config = ml_collections.ConfigDict()
    config.mode = "generate"

    config.model = ml_collections.ConfigDict()
    config.model.path = ""  # a local LlavaForConditionalGeneration folder; empty = tiny random model
    config.model.preset = "tiny"  # shape of the random model when no path is given
    config.model.seed = 0
    config.model.dtype = "float32"  # compute dtype
    config.model.param_dtype = "float32"

    config.data = ml_collections.ConfigDict()
    config.data.images = ""  # comma-separated image paths; empty = a drawn demo image

    config.generate = ml_collections.ConfigDict()
    config.generate.prompt = "Describe the image in detail."
    config.generate.max_new_tokens = 32
    config.generate.temperature = 0.0  # 0 = greedy
    config.generate.top_p = 1.0
    config.generate.batch_size = 8
    return config
