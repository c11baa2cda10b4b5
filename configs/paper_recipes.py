"""Each method's training as its paper or public scripts set it, at LLaVA-1.5-7B size (`mode=train`).

Pick the recipe with the ARG and train on that method's pairs from your checkpoint:

    python -m realign_jax.main --config=configs/paper_recipes.py:method=realign --workdir=/runs/realign \
        --config.model.path=/ckpt/llava-1.5-7b-hf --config.data.source=jsonl --config.data.path=/data/pairs

- `method=realign` (Re-Align, arXiv 2502.13146, and its public training script): rDPO, LoRA
  r=128 / alpha=256 / dropout 0.05 on q/k/v/o, the projector trained in full at lr 2e-5, 1 epoch,
  rows of 1048 tokens, batch 32, beta 0.1. `lr=paper` (the default) is the paper's 1e-5,
  `lr=script` the script's 1e-6.
- `method=povid_stage1` / `povid_stage2` (POVID, arXiv 2402.11411, scripts/run_dpo.sh and
  run_povid.sh): LoRA r=128 / alpha=256 / dropout 0.05 on every linear layer of the language
  model, projector lr 2e-5, lr 1e-7 with 3% warm-up and cosine decay, no weight decay. Stage 1 is
  DPO on the injected pairs for 3 epochs (rows of 1024 tokens); stage 2 starts from the merged
  stage-1 model (`model.path` = its export) and adds the noisy term (the policy's argmax under
  the noised image, `loss.noisy_scoring=argmax`) with rows of 2048 tokens, for 1 epoch as the
  paper states (`stage2_epochs=3` is run_povid.sh's `--num_train_epochs 3`). The scripts train
  1 pair per GPU: batch 8 here, one 8-GPU node's worth.
- `method=mdpo` (mDPO, arXiv 2406.11839, and its public code): the mDPO loss with its random-crop
  corruption, LoRA r=64 / alpha=128 on every linear layer, lr 1e-5 with 10% warm-up, weight
  decay 0.05, Adam b2 0.98, 3 epochs, batch 32 (not stated by the paper: Re-Align's).
- `method=bdhs` (BDHS, arXiv 2407.02477): DPO on BDHS pairs, LoRA r=128 / alpha=256, beta from
  the paper's grid {0.05, 0.1, 0.2, 0.5} with `beta=...` (default 0.1), 1 epoch, batch 32 (not
  stated: Re-Align's). The paper aligns LLaVA-1.6, which this project does not load yet; the
  recipe runs on LLaVA-1.5, with the checkpoint's own padding.

Every LLaVA-1.5 recipe pads images to a square with the mean colour (`data.pad_to_square=true`),
as LLaVA-1.5 and every seed's code do (llava-hf's processor config omits it). The length of a
run is given in epochs (`train.epochs`): its steps follow from the number of records. The compute
layout is configs/rdpo_llava_step.py's for a TPU v5p-8 (bf16 compute on float32 weights, the
base sharded over the chips, remat `dots`, 2 micro-batches); check a recipe fits first:

    python -m realign_jax.aot --config=configs/paper_recipes.py:method=realign --topology=v5p-8
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path

# Every linear layer of the language model (POVID's find_all_linear_names, mDPO's target modules):
# attention and MLP projections; not the vision tower, the projector or the LM head.
ALL_LINEAR = r"decoder\.layers\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
OPTIONS = {"method": ("realign", "povid_stage1", "povid_stage2", "mdpo", "bdhs"), "lr": ("paper", "script"),
           "stage2_epochs": ("1", "3"), "beta": ("0.05", "0.1", "0.2", "0.5")}
OPTION_OF = {"lr": "realign", "stage2_epochs": "povid_stage2", "beta": "bdhs"}  # the recipe each option tunes


def _llava_7b(loss: str) -> common.runs.TrainSettings:
    """The shared part: the 7B layout of configs/rdpo_llava_step.py, the papers' LoRA scale
    (r=128, alpha=256, dropout 0.05), the projector trained at 2e-5, padding to a square."""
    return common.replace(
        common.training("train", loss), model__preset="llava-1.5-7b", model__dtype="bfloat16", model__remat="dots",
        lora__rank=128, lora__alpha=256.0, lora__dropout=0.05, optim__lr_groups=r"^projector\.=2e-5",
        data__pad_to_square="true", data__num_examples=256, train__batch_size=32, train__grad_accum=2,
        train__epochs=1.0, train__log_every=10, train__checkpoint_every=200, mesh__data=1, mesh__fsdp=-1)


def recipe(method: str, lr: str = "paper", stage2_epochs: str = "1", beta: str = "0.1") -> common.runs.TrainSettings:
    """The settings of one method's recipe (the docstring above names each one's source)."""
    if method == "realign":
        return common.replace(_llava_7b("rdpo"), optim__lr={"paper": 1e-5, "script": 1e-6}[lr], data__seq_len=1048)
    if method in ("povid_stage1", "povid_stage2"):
        povid = common.replace(_llava_7b("dpo"), lora__targets=ALL_LINEAR, optim__lr=1e-7, optim__warmup_ratio=0.03,
                               optim__schedule="cosine", optim__weight_decay=0.0, train__batch_size=8,
                               train__grad_accum=1, train__epochs=3.0, data__seq_len=1024)
        if method == "povid_stage1":
            return povid
        return common.replace(common.povid_noise(povid), train__epochs=float(stage2_epochs), data__seq_len=2048)
    if method == "mdpo":
        return common.replace(common.mdpo(_llava_7b("mdpo")), lora__rank=64, lora__alpha=128.0,
                              lora__targets=ALL_LINEAR, optim__lr=1e-5, optim__warmup_ratio=0.1,
                              optim__weight_decay=0.05, optim__b2=0.98, train__epochs=3.0)
    return common.replace(_llava_7b("dpo"), loss__beta=float(beta), data__pad_to_square="auto")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.config_arg(arg, "paper_recipes.py", options=OPTIONS, required=True)
    if "method" not in options:
        raise ValueError(f"configs/paper_recipes.py:{arg}: name the recipe, e.g. :method=realign; "
                         f"methods: {list(OPTIONS['method'])}")
    for option, method in OPTION_OF.items():
        if option in options and options["method"] != method:
            raise ValueError(f"configs/paper_recipes.py:{arg}: {option}= belongs to method={method}")
    return common.to_config(recipe(**options))
