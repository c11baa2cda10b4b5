"""The settings of each mode (the roots of the tree) and `load`, the one place a config is
checked: unknown keys, wrong types, bad values and impossible combinations all fail here, in
one line naming the key, before a world is generated or a model is built.

    settings = load(config)            # a ConfigDict from configs/*.py, with its overrides
    settings.data.seq_len, settings.layout.kinds, ...

Everything downstream of the command line takes these frozen dataclasses, never the raw config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from realign_jax.objectives.losses import loss_spec
from realign_jax.settings import keys
from realign_jax.settings.keys import key, optional_section, section
from realign_jax.settings.sections import (
    PAIRS_SECTIONS,
    ConvertSettings,
    DataSettings,
    EvalSettings,
    GenerateData,
    GenerateSettings,
    InspectSettings,
    LoraConfig,
    LossSettings,
    MeshSettings,
    ModelSettings,
    OnlineBdhsSettings,
    OnlineDpoSettings,
    OptimConfig,
    PairsSettings,
    RecordFiles,
    RecordSource,
    TrainLoopSettings,
    WorldSettings,
)

REFERENCES = ("lora_off", "frozen_copy", "precomputed", "none")
TRAINING_MODES = ("train", "sft", "inspect", "precompute")
ALT_IMAGE_KINDS = ("chosen_alt_image",)
ONLINE_METHODS = ("online_bdhs", "online_dpo")  # TrainSettings sections that sample pairs while training


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Which rows a batch stacks and how they are scored: what the jitted step is static in."""

    kinds: tuple[str, ...]
    rejected_scoring: str = "label"
    noisy_scoring: str = "batch"
    alt_image: str = "rejected_image"  # resolved: never 'auto'
    vocab_chunk: int = 8192
    crop_per_forward: bool = False
    alt_slot: int = 1  # the image slot chosen_alt_image reads: 2 in the reference's layout under crop_per_forward
    wpo: bool = False  # the policy rows also give WPO's per-token weights (loss.wpo)

    @classmethod
    def for_objective(cls, objective: str, alt_image: str = "auto", **options: Any) -> RowLayout:
        """The rows of 'sft' or a loss, refusing scoring options the loss has no row for."""
        kinds = ("chosen",) if objective == "sft" else loss_spec(objective).rows
        layout = cls(kinds, alt_image=cls.visual_image(objective, alt_image), **options)
        if layout.noisy_scoring == "argmax" and "rejected_noisy" not in kinds:
            raise ValueError(f"loss.noisy_scoring='argmax' needs a POVID loss, not {objective!r}")
        if layout.alt_image == "crop" and not any(k in ALT_IMAGE_KINDS for k in kinds):
            raise ValueError(f"loss.alt_image='crop' needs a loss with a visual term (rdpo, mdpo), not {objective!r}")
        if layout.crop_per_forward and layout.second_image != "cropped":
            raise ValueError(f"loss.crop_per_forward=True needs the crop (mdpo, or rdpo with loss.alt_image=crop), "
                             f"not {objective!r} with loss.alt_image={alt_image!r}")
        return layout

    @staticmethod
    def visual_image(objective: str, alt_image: str) -> str:
        """`loss.alt_image` resolved for a loss. mDPO always corrupts the image: `auto` (the
        default) is the crop for mdpo and the record's rejected_image otherwise, so
        `loss.name=mdpo` alone trains mDPO wherever it runs, and an explicit rejected_image with
        mdpo (rDPO's retrieved image plus mDPO's anchor, no published method) is refused rather
        than trained silently."""
        mdpo = objective != "sft" and "mdpo" in loss_spec(objective).terms
        if mdpo and alt_image == "rejected_image":
            raise ValueError(f"loss.alt_image='rejected_image' cannot go with loss.name={objective!r}: mDPO's "
                             "conditional term contrasts the image with its random crop (use loss.alt_image=auto or "
                             "crop; rdpo reads a retrieved image)")
        if alt_image == "auto":
            return "crop" if mdpo else "rejected_image"
        return alt_image

    @property
    def num_images(self) -> int:
        """Slot 0 the image, slot 1 the second image, slot 2 the reference's own crop."""
        return 3 if self.crop_per_forward else 2 if self.second_image else 1

    def for_reference(self) -> RowLayout:
        """The layout the reference's rows are scored in: under crop_per_forward its
        chosen_alt_image row reads slot 2, a crop drawn apart from the policy's (mDPO's code
        crops inside each forward, so policy and reference never see the same crop). WPO's
        weights are the policy's only."""
        return dataclasses.replace(self, alt_slot=2 if self.crop_per_forward else self.alt_slot, wpo=False)

    @property
    def second_image(self) -> str:
        """What image slot 1 holds ('' = no slot 1): the record's rejected_image, its random crop
        (mDPO), or its diffusion-noised image (POVID's argmax scoring). The one place the loss
        keys `alt_image` and `noisy_scoring` become an image."""
        if self.noisy_scoring == "argmax":
            return "noised"
        if any(k in ALT_IMAGE_KINDS for k in self.kinds):
            return "cropped" if self.alt_image == "crop" else "rejected_image"
        return ""

    @property
    def stacked_kinds(self) -> tuple[str, ...]:
        """The rows a batch stacks and the forward runs. Under POVID's argmax scoring the noisy
        answer is scored inside y_w's own clean row (`log pi(yhat_t | x, v, y_w,<t)`), so it has
        no row of its own: the loss still reads `rejected_noisy`, from y_w's forward."""
        if self.noisy_scoring == "argmax":
            return tuple(k for k in self.kinds if k != "rejected_noisy")
        return self.kinds

    @property
    def image_slots(self) -> tuple[int, ...]:
        """The image slot each stacked row reads."""
        return tuple(self.alt_slot if k in ALT_IMAGE_KINDS else 0 for k in self.stacked_kinds)

    def scored_by_best_other(self, kind: str) -> bool:
        return self.rejected_scoring == "best_other" and kind in ("rejected", "chosen_alt_image")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """`mode=train | sft | inspect | precompute` (configs/train_llava.py, sft_llava.py, ...)."""

    mode: str = key("train", "train (a preference loss) | sft | inspect (print the data as the model sees it) | "
                             "precompute (the reference's log-probs, stored with the records)",
                    choices=TRAINING_MODES)
    seed: int = key(0, "LoRA initialisation and dropout seed", least=0)
    reference: str = key("lora_off", "the reference model: lora_off (the base, adapters off) | frozen_copy | "
                                     "precomputed (ref_logps in the records) | none (sft)", choices=REFERENCES)
    model: ModelSettings = section(ModelSettings, "the model trained")
    mesh: MeshSettings = section(MeshSettings, "the device mesh")
    data: DataSettings = section(DataSettings, "the records and how they become rows")
    inspect: InspectSettings = section(InspectSettings, "mode=inspect's report")
    loss: LossSettings = section(LossSettings, "the objective and its hyperparameters")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters")
    optim: OptimConfig = section(OptimConfig, "AdamW and its schedule")
    train: TrainLoopSettings = section(TrainLoopSettings, "the loop: steps, batch, checkpoints, export")
    world: WorldSettings | None = optional_section("the synthetic world trained on when data.path is empty")
    online_bdhs: OnlineBdhsSettings | None = optional_section("online BDHS: the policy rewrites records every "
                                                              "`every` steps")
    online_dpo: OnlineDpoSettings | None = optional_section("online and mixed DPO: the policy samples answers an "
                                                            "annotator ranks, every `every` steps")

    @property
    def objective(self) -> str:
        """'sft' or the loss name. `inspect` shows the rows of the config it is pointed at: an SFT
        config (no reference, a loss that needs one) inspects as sft, a SimPO/ORPO one as its loss."""
        sft = self.mode == "sft" or (self.mode == "inspect" and self.reference == "none"
                                     and loss_spec(self.loss.name).needs_reference)
        return "sft" if sft else self.loss.name

    @property
    def layout(self) -> RowLayout:
        loss = self.loss
        return RowLayout.for_objective(self.objective, rejected_scoring=loss.rejected_scoring,
                                       noisy_scoring=loss.noisy_scoring, alt_image=loss.alt_image,
                                       vocab_chunk=loss.vocab_chunk, crop_per_forward=loss.crop_per_forward,
                                       wpo=loss.wpo and self.objective != "sft")

    @property
    def online_method(self) -> str:
        """'online_bdhs' or 'online_dpo' when that section samples during training (every > 0),
        else '': the section's name is also its rounds' folder in the work dir."""
        return next((name for name in ONLINE_METHODS if getattr(getattr(self, name), "every", 0) > 0), "")

    @property
    def online(self) -> bool:
        return bool(self.online_method)

    def _check_online(self) -> None:
        """One online method at a time; online DPO's sampled pairs have an image, a question, a
        chosen and a rejected answer, and nothing else a loss could read."""
        running = [name for name in ONLINE_METHODS if getattr(getattr(self, name), "every", 0) > 0]
        if len(running) > 1:
            raise ValueError(f"{running[0]}.every and {running[1]}.every are both set: one online method samples "
                             "the pairs of a run")
        if self.online and self.reference == "precomputed":
            raise ValueError(f"reference='precomputed' cannot go with {self.online_method}.every: the pairs are "
                             "sampled during training, so no reference log-probs were stored with them")
        if self.online_method != "online_dpo":
            return
        layout = self.layout
        if self.objective == "sft" or "rejected_sampled" in layout.kinds or layout.second_image == "rejected_image":
            raise ValueError(f"online_dpo.every is set but loss.name={self.objective!r} reads more than a sampled "
                             "(chosen, rejected) pair holds: use a pairwise loss such as dpo, ipo or simpo")

    def check(self, prefix: str) -> None:
        objective, reference, loss = self.objective, self.reference, self.loss
        if objective == "sft" and reference != "none":
            raise ValueError(f"reference={reference!r}: mode 'sft' uses no reference; set reference='none'")
        needs_reference = objective != "sft" and loss_spec(objective).needs_reference
        if needs_reference and reference == "none":
            raise ValueError(f"reference='none' cannot go with loss.name={objective!r}, which reads the reference's "
                             "log-probs; only mode 'sft' and the reference-free losses (simpo, cpo, orpo) train "
                             "without one")
        if objective != "sft" and not needs_reference and reference != "none":
            raise ValueError(f"loss.name={objective!r} reads no reference: set reference='none' (reference="
                             f"{reference!r} would run or load one for nothing)")
        if reference == "lora_off" and not self.lora.rank:
            raise ValueError("reference='lora_off' needs lora.rank > 0 (or use reference='frozen_copy')")
        self.layout  # noqa: B018 - builds the row layout, refusing scoring options the loss has no row for
        if reference == "precomputed" and loss.noisy_scoring == "argmax":
            raise ValueError("reference='precomputed' cannot go with loss.noisy_scoring='argmax': the noisy "
                             "response comes from the current policy, so its reference log-prob changes every step")
        if self.data.packing and loss.noisy_scoring == "argmax":
            raise ValueError("data.packing=True cannot go with loss.noisy_scoring='argmax': the noised-image forward "
                             "that picks the argmax tokens runs on the chosen row unpacked")
        if self.data.packing and loss.crop_per_forward:
            raise ValueError("data.packing=True cannot go with loss.crop_per_forward=True: a packed row reads one "
                             "image slot for policy and reference alike")
        self._check_online()
        if not self.train.trainable and not self.lora.rank:
            raise ValueError("nothing to train: train.trainable is empty and lora.rank is 0")
        if prefix:  # a pipeline stage: the pipeline fills in its model and checks the stage again then
            return
        if not self.model.path and not self.model.preset:
            raise ValueError("model.path is empty and there is no model.preset to build a random model from: give "
                             "the Hugging Face folder of the model to start from")
        if self.world is None:
            self.data.check_path("data.")
        elif not self.data.path and self.world.records == "grounding" \
                and not self.model.path:
            raise ValueError("world.records='grounding' continues the captions stage: set model.path to its export "
                             "(see configs/sft_world.py)")


@dataclasses.dataclass(frozen=True)
class PairsRun:
    """`mode=build_pairs` (configs/*_pairs.py): records with `chosen` -> preference pairs."""

    mode: str = key("build_pairs", "what runs: a pair builder", choices=("build_pairs",))
    world: WorldSettings | None = optional_section("the synthetic world read when data.path is empty; must match "
                                                   "the world the model was trained on")
    model: ModelSettings | None = optional_section("the VLM the builder generates with")
    data: RecordFiles = section(RecordFiles, "a JSONL of records with `chosen`; empty path = the world's "
                                             "train/<world.records>.jsonl")

    def check(self, prefix: str) -> None:
        pairs: PairsSettings = getattr(self, "pairs")
        if pairs.needs_model and (self.model is None or not self.model.path):
            raise ValueError(f"model.path is empty: {pairs.name} generates with a LLaVA model; give its Hugging "
                             "Face folder (e.g. the export/ of configs/sft_world.py)")


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """`mode=eval` (configs/eval_world.py): POPE, CHAIR and AMBER-style on one checkpoint."""

    mode: str = key("eval", "what runs: the benchmarks on one checkpoint", choices=("eval",))
    model: ModelSettings = section(ModelSettings, "the Hugging Face LLaVA folder evaluated, with its tokenizer")
    eval: EvalSettings = section(EvalSettings, "the benchmarks and their files")

    def check(self, prefix: str) -> None:
        if not self.model.path:
            raise ValueError("model.path is required: a Hugging Face LLaVA folder with its tokenizer (e.g. the "
                             "export/ of configs/sft_world.py)")
        section = self.eval
        if not section.world and not (section.pope_file or section.coco_instances):
            raise ValueError("eval.world (a synthetic world folder) or the real benchmark files "
                             "(eval.pope_file / eval.coco_instances + eval.image_folder) are required")


@dataclasses.dataclass(frozen=True)
class GenerateRun:
    """`mode=generate` (configs/generate_llava.py): caption images."""

    mode: str = key("generate", "what runs: captioning images", choices=("generate",))
    model: ModelSettings = section(ModelSettings, "the checkpoint; empty path = a tiny random one, exported first")
    data: GenerateData = section(GenerateData, "the images")
    generate: GenerateSettings = section(GenerateSettings, "the prompt and sampling")


@dataclasses.dataclass(frozen=True)
class ConvertRun:
    """`mode=convert` (configs/convert_data.py): any record source -> ArrayRecord shards."""

    mode: str = key("convert", "what runs: records to ArrayRecord shards", choices=("convert",))
    data: RecordSource = section(RecordSource, "the records converted")
    convert: ConvertSettings = section(ConvertSettings, "the shards written")

    def check(self, prefix: str) -> None:
        self.data.check_path("data.")
        if self.data.source == "random":
            raise ValueError("data.source='random' has no records to convert: name a record source")
        if not self.convert.output:
            raise ValueError("convert.output is empty: give a folder that does not exist yet")


@dataclasses.dataclass(frozen=True)
class SftStages:
    captions: TrainSettings = section(TrainSettings, "stage 1: the world's captions")
    grounding: TrainSettings = section(TrainSettings, "stage 2: captions + yes/no existence questions")


@dataclasses.dataclass(frozen=True)
class AlignStages:
    stage1: TrainSettings = section(TrainSettings, "the first align stage")
    stage2: TrainSettings | None = optional_section("a second stage from the first's export (POVID's)")

    def stages(self) -> list[tuple[str, TrainSettings]]:
        return [(name, stage) for name in ("stage1", "stage2") if (stage := getattr(self, name)) is not None]


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """`mode=pipeline` (configs/rdpo_llava.py and siblings): a method end to end. The stage
    sections are whole stage settings; the pipeline fills in only what joins them (the world,
    the model each stage starts from, the records each reads)."""

    mode: str = key("pipeline", "what runs: a method end to end", choices=("pipeline",))
    method: str = key("rdpo", "the method's name in the report table")
    world: WorldSettings = section(WorldSettings, "the synthetic world (records: the file pairs are built from)")
    model: ModelSettings = section(ModelSettings, "empty path = SFT the world's base model here; else the "
                                                  "checkpoint to align (dtypes apply to every stage)")
    data: RecordFiles = section(RecordFiles, "records with `chosen` to build pairs from; empty = the world's")
    sft: SftStages = section(SftStages, "the world base model's two SFT stages")
    align: AlignStages = section(AlignStages, "the align stages, each from the previous stage's export")
    eval: EvalSettings = section(EvalSettings, "the evaluation before and after")

    def check(self, prefix: str) -> None:
        stages = [("sft.captions", self.sft.captions), ("sft.grounding", self.sft.grounding),
                  *((f"align.{name}", stage) for name, stage in self.align.stages())]
        for name, stage in stages:
            if stage.model.path or stage.data.path:
                raise ValueError(f"{name}.model.path and {name}.data.path are set by the pipeline (the previous "
                                 "stage's export, the world or the pairs): leave them empty, or set model.path / "
                                 "data.path at the top")


def _with_pairs(base: type, pairs: type[PairsSettings]) -> type:
    """`base` with one builder's `pairs` section: the roots of build_pairs and of the pipeline
    differ only in the builder's keys."""
    name = pairs.__name__.removesuffix("Pairs") + base.__name__
    field = ("pairs", pairs, section(pairs, f"the {pairs.name} builder's own keys"))
    root = dataclasses.make_dataclass(name, [field], bases=(base,), frozen=True)
    root.__module__ = __name__
    return root


PAIRS_RUNS: dict[str, type[PairsRun]] = {name: _with_pairs(PairsRun, cls) for name, cls in PAIRS_SECTIONS.items()}
PIPELINES: dict[str, type[PipelineRun]] = {name: _with_pairs(PipelineRun, cls) for name, cls in PAIRS_SECTIONS.items()}
ROOTS: dict[str, type] = {**{mode: TrainSettings for mode in TRAINING_MODES}, "eval": EvalRun,
                          "generate": GenerateRun, "convert": ConvertRun}

# The sections a mode cannot do without, and a config that has them.
MODE_SECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "generate": (("model", "data", "generate"), "configs/generate_llava.py"),
    "train": (("model", "data", "train"), "configs/train_llava.py"),
    "precompute": (("model", "data", "train"), "configs/train_llava.py"),
    "sft": (("model", "data", "train"), "configs/sft_llava.py"),
    "inspect": (("model", "data", "train", "inspect"), "configs/train_llava.py"),
    "convert": (("data", "convert"), "configs/convert_data.py"),
    "eval": (("model", "eval"), "configs/eval_world.py"),
    "build_pairs": (("data", "pairs"), "configs/povid_pairs.py"),
    "pipeline": (("world", "model", "data", "sft", "pairs", "align", "eval"), "configs/rdpo_llava.py"),
}


def non_finite_values(config: Any, prefix: str = "") -> list[str]:
    """`key=value` for every NaN or infinite number in the config (in tuples too): no key takes one,
    and a NaN beta or lr would otherwise train to garbage and exit 0."""
    found = []
    for name, value in config.items():
        dotted = f"{prefix}{name}"
        if hasattr(value, "items"):
            found += non_finite_values(value, f"{dotted}.")
        elif any(isinstance(v, float) and not math.isfinite(v)
                 for v in (value if isinstance(value, tuple) else (value,))):
            found.append(f"{dotted}={value}")
    return found


def root_for(config: Any) -> type:
    """The settings class a config's mode (and, for pairs, its builder) reads."""
    mode = config.get("mode")
    if mode not in MODE_SECTIONS:
        raise ValueError(f"config.mode={mode!r} is unknown; expected one of {sorted(MODE_SECTIONS)}")
    sections, example = MODE_SECTIONS[mode]
    missing = [name for name in sections if name not in config]
    if missing:
        raise ValueError(f"config.mode={mode!r} needs the config sections {missing}; start from {example}")
    if mode in ("build_pairs", "pipeline"):
        builder = config.pairs.get("builder")
        if builder not in PAIRS_SECTIONS:
            raise ValueError(f"pairs.builder={builder!r}: choose one of {tuple(PAIRS_SECTIONS)}")
        return (PAIRS_RUNS if mode == "build_pairs" else PIPELINES)[builder]
    return ROOTS[mode]


def load(config: Any) -> Any:
    """A config (ConfigDict) -> its mode's settings, every check done. Settings (a pipeline's
    stage, filled in) are checked again the same way."""
    if dataclasses.is_dataclass(config):
        return keys.load(type(config), keys.as_dict(config))
    bad = non_finite_values(config)
    if bad:
        raise ValueError(f"config values must be finite numbers: {', '.join(bad)}")
    settings = keys.load(root_for(config), config)
    pairs = getattr(settings, "pairs", None)
    if isinstance(pairs, PairsSettings) and pairs.builder != pairs.name:
        raise ValueError(f"pairs.builder={pairs.builder!r} does not match the config's {pairs.name} keys")
    return settings
