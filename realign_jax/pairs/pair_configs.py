"""The keys every `mode=build_pairs` config has, so configs/*_pairs.py state only their
builder's own. `pairs.build.check_config` and the builders validate the values."""

from __future__ import annotations

import ml_collections


def pairs_config(builder: str, *, world_records: str, model: bool) -> ml_collections.ConfigDict:
    """A build_pairs config over the synthetic world's `train/<world_records>.jsonl` unless
    data.path is given; `model=True` adds the VLM the builder generates with and the keys of
    the model-based builders (sentence embedder, batch size). Under `pairs.max_records`,
    Re-Align still indexes every record's image and POVID learns its injection statistics
    from every record."""
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
    config.pairs.max_records = 0  # pairs for the first N records only; 0 = all (a builder still learns from all)
    if model:
        config.pairs.sentence_model = ""  # sentence-transformers folder; empty = the packaged all-MiniLM-L6-v2
        config.pairs.batch_size = 32  # prompts per generation batch
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


def realign_pairs_config() -> ml_collections.ConfigDict:
    """Re-Align's builder (pairs/realign.py): masks, retrieval, refills, the tau filter."""
    config = pairs_config("realign", world_records="captions", model=True)
    config.pairs.k = 10  # neighbours tried per record, most similar first
    config.pairs.tau = 0.95  # accept a refill when cos(embed(refill), embed(chosen)) < tau
    config.pairs.ceiling = 0.98  # neighbours more similar than this count as duplicates: never retrieved
    config.pairs.whiten = True  # search whitened tower embeddings (pairs/image_index.py says why)
    config.pairs.masker = "rules"  # rules (synonym table + attribute/relation words) | llm
    config.pairs.synonyms = ""  # CHAIR synonyms.txt for the rules masker; empty = the world's
    config.pairs.llm = llm_config()  # pairs.masker=llm only
    config.pairs.max_fill_tokens = 24  # generated per mask; the fill is cut to the span's words + 3
    config.pairs.temperature = 0.0  # 0 = greedy refills
    config.pairs.batch_size = 64  # prompts per generation batch, images per embedding batch
    config.pairs.seed = 0  # sampling seed when temperature > 0
    return config


def bdhs_pairs_config() -> ml_collections.ConfigDict:
    """BDHS's builder (pairs/bdhs.py): image-hidden rewrites, eps_s rounds, yes/no flips."""
    config = pairs_config("bdhs", world_records="captions", model=True)
    config.pairs.rho_th = 0.99  # an image token stays visible only when its U(0,1) draw is >= rho_th
    config.pairs.eps_s = 0.97  # accept a rewrite when cos(embed(rewrite), embed(chosen)) < eps_s
    config.pairs.rounds = 5  # attempts per record; the last is a whole answer with no prefix
    config.pairs.flip_probability = 0.5  # a yes/no answer is rewritten from its flipped verdict
    config.pairs.max_new_tokens = 64  # per completion (a sentence, or the rest of the answer)
    config.pairs.temperature = 0.0  # 0 = greedy: the hidden-image model's most likely words
    config.pairs.top_p = 1.0
    return config


def povid_pairs_config() -> ml_collections.ConfigDict:
    """POVID's builder (pairs/povid.py): rule-based (or LLM) hallucination injection."""
    config = pairs_config("povid", world_records="sft", model=False)
    config.pairs.injector = "rules"  # rules (statistics of the data itself) | llm (an OpenAI-compatible endpoint)
    config.pairs.synonyms = ""  # CHAIR synonyms.txt; empty = the world's (next to the split folder)
    config.pairs.kinds = "object,attribute,relation,count,verdict"
    config.pairs.max_edits = 2  # edits per rejected answer: 1..max_edits
    config.pairs.shard_size = 5000  # records per output shard: the unit a rerun skips
    config.pairs.llm = llm_config()  # pairs.injector=llm only
    return config
