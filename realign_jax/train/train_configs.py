"""The keys every training config has, with the papers' defaults, so configs/*.py state only
what differs. `settings.parse` validates the result."""

from __future__ import annotations

import ml_collections

from realign_jax.data.keyvalue import parse_key_values


def parse_arg(arg: str | None) -> dict[str, str]:
    """big_vision-style config args: 'loss=rdpo,lora=0' -> {'loss': 'rdpo', 'lora': '0'}."""
    return dict(parse_key_values(arg, "config argument {item!r} is not key=value"))


def training_config(mode: str = "train", loss: str = "dpo") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = mode  # train | sft | inspect (print the data as the model sees it; nothing trains)
    config.seed = 0
    config.reference = "lora_off" if mode == "train" else "none"  # lora_off | frozen_copy | precomputed | none

    config.model = ml_collections.ConfigDict()
    config.model.path = ""  # local LlavaForConditionalGeneration folder; empty = random `preset` model
    config.model.preset = "tiny"
    config.model.seed = 0
    config.model.dtype = "float32"  # compute dtype (bfloat16 on accelerators)
    config.model.param_dtype = "float32"  # master weights
    config.model.remat = "none"  # none | full | dots
    config.model.scan_layers = True
    config.model.attention_impl = "xla"  # xla | cudnn

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1 = the devices left over
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.rules = ""  # overrides, e.g. "embed=fsdp,vocab=" (see models/partitioning.py)

    config.data = ml_collections.ConfigDict()
    # random (smoke test) | jsonl (records + image folder) | arrayrecord (convert's shards) | tfds
    # | rlaif_v | povid | vlfeedback (the public datasets' own files)
    config.data.source = "random"
    config.data.path = ""  # the records: a JSONL file, a folder of shards, ...
    config.data.split = "train"  # tfds only
    config.data.tfds_data_dir = ""  # tfds only; empty = TFDS_DATA_DIR or ~/tensorflow_datasets
    config.data.tfds_fields = ""  # tfds only: record_field=feature overrides, e.g. "question=query,image=img"
    config.data.image_root = ""  # jsonl: where relative image paths point; empty = the file's folder
    config.data.tokenizer = ""  # folder with the tokenizer + chat template; empty = model.path
    config.data.on_bad_record = "error"  # error: stop with file, record and field | skip: skip and count
    config.data.truncation = "response"  # response: cut over-long answers at the end | drop
    config.data.seq_len = 40
    config.data.length_buckets = "auto"  # pad each batch to the shortest of these; auto = quarters of seq_len
    # Lay each batch's rows end to end in rows of seq_len tokens (attention kept inside each
    # example, data/packing.py) instead of padding them: same losses, fewer tokens computed
    config.data.packing = False
    # With packing: the rows of an example that read the same image and prompt keep one copy of
    # it ([prompt | chosen | rejected], data/packing.py): same losses, the prefix computed once
    config.data.share_prefix = False
    # Tokens per packed row; 0 = data.seq_len. Longer rows let a whole [prompt | chosen |
    # rejected] unit fit when single rows come near seq_len (a unit that does not fit is split)
    config.data.pack_len = 0
    # MB of encoded examples kept in memory per process, so later epochs skip decoding and
    # tokenising (not with noised or cropped images, which are drawn afresh); 0 = off
    config.data.cache_mb = 1024
    config.data.workers = 0  # worker processes decoding images and tokenising; 0 = threads in this process
    config.data.num_examples = 32  # random source only
    config.data.seed = 0

    config.inspect = ml_collections.ConfigDict()
    config.inspect.examples = 3  # decoded examples printed by mode=inspect
    config.inspect.max_records = 2000  # records read for the length histogram and bad-record counts

    config.loss = ml_collections.ConfigDict()
    config.loss.name = loss  # dpo | ipo | hinge | rdpo | mdpo | povid | povid_weighted
    config.loss.beta = 0.1
    config.loss.label_smoothing = 0.0
    config.loss.length_normalize = False
    config.loss.sft_weight = 0.0
    config.loss.visual_weight = 1.0  # rDPO's w_v
    config.loss.mdpo_anchor_delta = 0.0
    config.loss.povid_weights = (1.0, 1.0, 1.0)  # povid_weighted's a, b1, b2
    config.loss.rejected_scoring = "label"  # label | best_other (Re-Align's public code)
    config.loss.noisy_scoring = "batch"  # batch | argmax (POVID's public code)
    config.loss.alt_image = "rejected_image"  # the visual term's image: rejected_image | crop (mDPO's)
    config.loss.vocab_chunk = 8192  # vocabulary chunk of the log-softmax

    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 8 if mode == "train" else 0  # papers: 128
    config.lora.alpha = 16.0  # papers: 256
    config.lora.dropout = 0.0
    config.lora.targets = r"decoder\.layers\.(q_proj|k_proj|v_proj|o_proj)$"

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-3 if mode == "train" else 3e-3  # tiny random model; papers use 1e-5 with LoRA
    config.optim.warmup_ratio = 0.03
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.0
    config.optim.clip_norm = 1.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.lr_groups = r"^projector\.=2e-3" if mode == "train" else ""  # 'regex=lr,...'

    config.train = ml_collections.ConfigDict()
    config.train.steps = 40
    config.train.batch_size = 8  # examples per optimiser step, over all devices
    config.train.grad_accum = 1
    # Base parameters trained in full (regex on paths); LoRA adapters always train.
    config.train.trainable = r"^projector\." if mode == "train" else r"^(projector|decoder)\."
    config.train.log_every = 1
    config.train.checkpoint_every = 20  # 0 = only at the end
    config.train.keep_checkpoints = 2
    # A step whose loss or gradient is NaN/inf never updates the parameters. skip: count it and
    # go on (stop after more than max_consecutive_skips in a row) | stop: end the run there.
    config.train.on_nonfinite = "skip"
    config.train.max_consecutive_skips = 10
    config.train.export = True  # merged model in HF format under <workdir>/export
    config.train.profile_start = 3  # --xla: trace steps [start, start + steps)
    config.train.profile_steps = 3
    return config


def aligning_config(loss: str) -> ml_collections.ConfigDict:
    """`mode=train` of a trained model on a pair builder's output (configs/*_train.py): no
    random model (model.path is required), LoRA only, the pairs folder as a JSONL source, and
    step counts and lengths sized for the synthetic world's base model."""
    config = training_config(mode="train", loss=loss)
    config.model.path = ""  # required: the model to align (its Hugging Face folder)
    config.model.preset = ""  # no random model
    config.data.source = "jsonl"
    config.data.path = ""  # required: a pairs folder (or one shard) of configs/*_pairs.py
    config.data.seq_len = 128
    config.data.length_buckets = "64,96"
    config.train.batch_size = 16
    config.train.steps = 300
    config.train.log_every = 25
    config.train.checkpoint_every = 100
    config.optim.lr = 5e-4
    config.optim.lr_groups = ""
    config.train.trainable = ""  # LoRA only
    return config


WORLD_SFT_STAGES = {"captions": 3000, "grounding": 4000}  # stage -> steps (configs/sft_world.py says why)


def world_sft_config(stage: str = "captions") -> ml_collections.ConfigDict:
    """SFT of the synthetic world's base model, one curriculum stage (configs/sft_world.py)."""
    if stage not in WORLD_SFT_STAGES:
        raise ValueError(f"configs/sft_world.py:{stage}: choose a stage from {sorted(WORLD_SFT_STAGES)}")
    config = training_config(mode="sft")
    config.world = ml_collections.ConfigDict()
    config.world.dir = ""  # empty = <workdir>/world
    config.world.seed = 0
    config.world.num_train_images = 6000
    config.world.num_eval_images = 500
    config.world.image_size = 32  # = model vision.image_size
    config.world.companion_probability = 0.9
    config.world.records = stage  # which of the world's train files: captions | grounding | sft

    config.data.source = "jsonl"
    config.data.path = ""  # empty = the world's train/<world.records>.jsonl
    config.data.seq_len = 128
    config.data.packing = True  # rows of 32-111 tokens: 32 fill ~16 packed rows, not 32 padded ones
    config.train.batch_size = 32
    config.train.steps = WORLD_SFT_STAGES[stage]
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.optim.lr = 3e-3
    config.optim.warmup_ratio = 0.02
    config.train.trainable = r"^(projector|decoder)\."  # the tower stays frozen (see above)
    return config
