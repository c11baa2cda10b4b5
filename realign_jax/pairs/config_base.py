"""The keys every `mode=build_pairs` config has, so configs/*_pairs.py state only their
builder's own. `pairs.build.check_config` and the builders validate the values."""

from __future__ import annotations

import ml_collections


def pairs_config(builder: str, *, world_records: str, model: bool) -> ml_collections.ConfigDict:
    """A build_pairs config over the synthetic world's `train/<world_records>.jsonl` unless
    data.path is given; `model=True` adds the VLM the builder generates with and the keys of
    the model-based builders (sentence embedder, batch size, a record cap)."""
    config = ml_collections.ConfigDict()
    config.mode = "build_pairs"
    config.world = ml_collections.ConfigDict()  # must match the world the model was trained on
    config.world.dir = ""  # empty = <workdir>/world
    config.world.seed = 0
    config.world.num_train_images = 6000
    config.world.num_eval_images = 500
    config.world.records = world_records  # which of the world's train files: captions | grounding | sft
    if model:
        config.model = ml_collections.ConfigDict()
        config.model.path = ""  # required: a Hugging Face LLaVA folder with its tokenizer
        config.model.dtype = "float32"
        config.model.param_dtype = "float32"
    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # a JSONL of records with `chosen`; empty = the world's train/<world.records>.jsonl
    config.data.image_root = ""  # where relative image paths point; empty = next to the records
    config.pairs = ml_collections.ConfigDict()
    config.pairs.builder = builder
    config.pairs.output = ""  # empty = <workdir>/pairs
    config.pairs.seed = 0
    config.pairs.shard_size = 1000  # records per output shard: the unit a rerun skips
    if model:
        config.pairs.sentence_model = ""  # sentence-transformers folder; empty = the packaged all-MiniLM-L6-v2
        config.pairs.batch_size = 32  # prompts per generation batch
        config.pairs.max_records = 0  # the first N records only; 0 = all
    return config


def llm_config() -> ml_collections.ConfigDict:
    """`pairs.llm`: the OpenAI-compatible endpoint of a builder's optional LLM step (pairs/llm.py)."""
    llm = ml_collections.ConfigDict()
    llm.base_url = ""  # e.g. http://localhost:8000/v1
    llm.model = ""
    llm.api_key_env = ""  # name of the environment variable holding the key; empty = none
    llm.timeout = 60.0  # seconds per request
    llm.workers = 4  # requests in flight at once
    return llm
