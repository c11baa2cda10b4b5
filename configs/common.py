"""The recipes configs/*.py share, and the one parser of their `:ARG`.

Every key, its default and its meaning are declared once in realign_jax/settings/; a recipe
here states only the values that differ from those defaults, and `to_config` turns it into
the locked ConfigDict a config file returns (so a config can only set keys that exist).
Each method's own rules are stated once, in its recipe: POVID's stage 2 scores the policy's
argmax under the noised image (`povid_noise`), mDPO's visual term reads a random crop
(`align("mdpo")`).
"""

from __future__ import annotations

from realign_jax.data.keyvalue import parse_key_values
from realign_jax.objectives.losses import loss_spec
from realign_jax.settings import runs
from realign_jax.settings.keys import replace, to_config  # noqa: F401 - to_config: what every get_config returns
from realign_jax.settings.sections import BdhsPairs, OnlineDpoSettings, PovidPairs, RealignPairs, WorldSettings


def parse_arg(arg: str | None) -> dict[str, str]:
    """big_vision-style config args: 'loss=rdpo,lora=0' -> {'loss': 'rdpo', 'lora': '0'}."""
    return dict(parse_key_values(arg, "config argument {item!r} is not key=value"))


def config_arg(arg: str | None, name: str, choices: tuple[str, ...] | None = None,
               options: dict[str, tuple[str, ...]] | None = None, required: bool = False) -> dict[str, str]:
    """The `:ARG` of `--config=configs/<name>.py:ARG`, the one parser every config uses: one
    variant name from `choices` (returned as {"variant": ...}), or `key=value,...` pairs whose
    keys are `options`'; a config that takes neither refuses any ARG."""
    if not arg and not required:
        return {}
    if choices is not None:
        if arg not in choices:
            shown = f"configs/{name}:{arg}" if arg else f"configs/{name} needs an ARG"
            raise ValueError(f"{shown}: choose one of {sorted(choices)}" + ("" if required else " (or no argument)"))
        return {"variant": arg}
    if options is None:
        raise ValueError(f"configs/{name}:{arg}: this config takes no argument")
    pairs = parse_arg(arg)
    for option, value in pairs.items():
        allowed = options.get(option)
        if allowed is None:
            raise ValueError(f"configs/{name}:{arg}: unknown option {option!r}; options: {sorted(options)}")
        if value not in allowed:
            raise ValueError(f"configs/{name}:{option}={value}: choose one of {list(allowed)}")
    return pairs


def training(mode: str = "train", loss: str = "dpo") -> runs.TrainSettings:
    """`mode=train` (a preference loss with LoRA, the reference = adapters off, or none for the
    reference-free SimPO/CPO/ORPO) or `sft` (the decoder and projector in full, no reference),
    sized for the tiny random model."""
    settings = runs.TrainSettings(mode=mode)
    if mode == "train":
        reference = "lora_off" if loss_spec(loss).needs_reference else "none"
        return replace(settings, loss__name=loss, reference=reference, optim__lr=1e-3,
                       optim__lr_groups=r"^projector\.=2e-3")
    return replace(settings, reference="none", lora__rank=0, optim__lr=3e-3,
                   train__trainable=r"^(projector|decoder)\.")


def aligning(loss: str) -> runs.TrainSettings:
    """`mode=train` of a trained model on a pair builder's output (configs/*_train.py): no random
    model (model.path is required), LoRA only, the pairs folder as a JSONL source, and step counts
    and lengths sized for the synthetic world's base model."""
    return replace(training("train", loss), model__preset="", data__source="jsonl", data__seq_len=128,
                   data__length_buckets="64,96", train__batch_size=16, train__steps=300, train__log_every=25,
                   train__checkpoint_every=100, optim__lr=5e-4, optim__lr_groups="", train__trainable="")


def povid_noise(settings: runs.TrainSettings) -> runs.TrainSettings:
    """POVID's stage 2: the noisy response is the policy's own argmax under the noised image."""
    return replace(settings, loss__name="povid", loss__noisy_scoring="argmax")


def mdpo(settings: runs.TrainSettings) -> runs.TrainSettings:
    """mDPO's conditional term reads a random crop of the image (its image corruption). mdpo
    implies it (loss.alt_image=auto); it is named here so the recipe's config says it."""
    return replace(settings, loss__name="mdpo", loss__alt_image="crop")


WORLD_SFT_STEPS = {"captions": 3000, "grounding": 4000}  # configs/sft_world.py says why two stages


def world_sft(stage: str = "captions") -> runs.TrainSettings:
    """SFT of the synthetic world's base model, one curriculum stage (configs/sft_world.py): rows
    of 32-111 tokens, packed (32 fill ~16 packed rows, not 32 padded ones); the tower frozen."""
    return replace(training("sft"), world=WorldSettings(records=stage), data__source="jsonl", data__seq_len=128,
                   data__packing=True, train__batch_size=32, train__steps=WORLD_SFT_STEPS[stage],
                   train__log_every=50, train__checkpoint_every=1000, optim__warmup_ratio=0.02)


def pairs_run(builder: str) -> runs.PairsRun:
    """A build_pairs run over the synthetic world's records unless data.path is given; the
    model-based builders (realign, bdhs) carry the VLM they generate with."""
    pairs_section = {"realign": RealignPairs(builder="realign", batch_size=64),
                     "bdhs": BdhsPairs(builder="bdhs"),
                     "povid": PovidPairs(builder="povid", shard_size=5000)}[builder]
    records = "sft" if builder == "povid" else "captions"
    model = None if builder == "povid" else runs.ModelSettings(preset="")
    return runs.PAIRS_RUNS[builder](world=WorldSettings(records=records), model=model, pairs=pairs_section)


# method -> (pair builder, the align stages: POVID trains twice)
METHODS: dict[str, str] = {"rdpo": "realign", "dpo": "realign", "mdpo": "realign", "povid": "povid", "bdhs": "bdhs",
                           "simpo": "realign", "orpo": "realign", "online_dpo": "realign", "mixed_dpo": "realign"}
SIMPO = {"loss__beta": 2.0, "loss__simpo_gamma": 1.0}  # the SimPO paper's beta = 2, gamma / beta = 0.5
ALIGN_LR = 2e-4  # chosen on the world for rDPO over 1e-4 and 5e-4 (docs/benchmarks.md, "Choosing the align recipe")


def _align_stages(method: str) -> runs.AlignStages:
    def stage(loss: str) -> runs.TrainSettings:
        return replace(aligning(loss), optim__lr=ALIGN_LR)

    if method == "povid":
        return runs.AlignStages(stage1=stage("dpo"), stage2=povid_noise(stage("dpo")))
    if method == "mdpo":
        return runs.AlignStages(stage1=mdpo(stage("dpo")))
    if method == "simpo":
        return runs.AlignStages(stage1=replace(stage("simpo"), **SIMPO))
    if method == "orpo":
        return runs.AlignStages(stage1=stage("orpo"))
    if method in ("online_dpo", "mixed_dpo"):  # the pairs' chosen answers are the records; mixed keeps half
        online = OnlineDpoSettings(every=25, offline_share=0.5 if method == "mixed_dpo" else 0.0)
        return runs.AlignStages(stage1=replace(stage("dpo"), online_dpo=online))
    return runs.AlignStages(stage1=stage("rdpo" if method == "rdpo" else "dpo"))


def pipeline(method: str) -> runs.PipelineRun:
    """A method end to end (`mode=pipeline`): the world, its SFT base, the method's pairs from
    1000 records (the model-based builders), the align stages, the evaluation."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {sorted(METHODS)}")
    builder = METHODS[method]
    pairs_section = pairs_run(builder).pairs
    if builder != "povid":
        pairs_section = replace(pairs_section, max_records=1000)
    sft = runs.SftStages(captions=replace(world_sft("captions"), world=None),
                         grounding=replace(world_sft("grounding"), world=None, model__preset=""))
    return runs.PIPELINES[builder](method=method, model=runs.ModelSettings(preset=""), sft=sft,
                                   align=_align_stages(method), pairs=pairs_section)
