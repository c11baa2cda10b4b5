"""Every config section, each key declared once (settings/keys.py says how).

A section some modes share is one class: `model`, `data`'s record files, `world`, `loss`,
`lora`, `optim`, `mesh`. Builders differ only in their own keys: the keys two of them
share live in one mixin (`Generating`, `BdhsSampling`, `Synonyms`, `LlmStep`), so BDHS's
sampling keys are the same declaration under `pairs` and `online_bdhs`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from realign_jax.data.batching import parse_buckets
from realign_jax.data.encode import TRUNCATION
from realign_jax.data.keyvalue import parse_key_values
from realign_jax.data.records import ON_BAD_RECORD
from realign_jax.data.sources import RECORD_SOURCES
from realign_jax.objectives.losses import LossConfig, loss_spec
from realign_jax.settings.keys import check_fields, key, section
from realign_jax.synthetic.config import WorldConfig

DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp", "tensor")


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{name}={pattern!r} is not a regex: {e}") from None


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    path: str = key("", "a local Hugging Face LLaVA folder; empty = a random model of `preset`'s shape")
    preset: str = key("tiny", "shape of the random model when there is no path (models/config.py PRESETS); "
                              "empty = no random model")
    seed: int = key(0, "initialisation seed of the random model", least=0)
    dtype: str = key("float32", "compute dtype (bfloat16 on accelerators)", choices=DTYPES)
    param_dtype: str = key("float32", "dtype of the weights (the master copy when trained)", choices=DTYPES)
    remat: str = key("none", "what the backward recomputes: none | full (every layer) | dots (all but matmul "
                             "outputs)", choices=("none", "full", "dots"))
    scan_layers: bool = key(True, "decoder layers as one scanned layer: one layer compiled, not N")
    attention_impl: str = key("xla", "attention kernel: xla | cudnn (GPU)", choices=("xla", "cudnn"))

    @property
    def runtime(self) -> dict[str, Any]:
        """The switches the model config takes besides its shapes."""
        return {name: getattr(self, name) for name in ("dtype", "param_dtype", "remat", "scan_layers",
                                                       "attention_impl")}


def parse_rules(text: str) -> tuple[tuple[str, Any], ...]:
    """'embed=fsdp,mlp=tensor,vocab=' -> rule pairs (empty target = replicated, '+' joins axes)."""
    rules = []
    for name, target in parse_key_values(text, "mesh.rules item {item!r} is not 'logical_axis=mesh_axis'"):
        axes = tuple(a for a in target.split("+") if a)
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(f"mesh.rules: {bad} are not mesh axes {MESH_AXES}")
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(rules)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    data: int = key(-1, "devices on the data axis; -1 = the devices left over")
    fsdp: int = key(1, "devices the weights are sharded over (FSDP); -1 = the devices left over")
    tensor: int = key(1, "devices of tensor parallelism (heads, MLP, vocabulary)")
    rules: str = key("", "logical-axis overrides, e.g. 'embed=fsdp,vocab=' (models/partitioning.py)")

    def check(self, prefix: str) -> None:
        for axis in MESH_AXES:
            size = getattr(self, axis)
            if size == 0 or size < -1:
                raise ValueError(f"{prefix}{axis}={size}: sizes must be positive or -1")
        parse_rules(self.rules)

    @property
    def rule_pairs(self) -> tuple[tuple[str, Any], ...]:
        return parse_rules(self.rules)


@dataclasses.dataclass(frozen=True)
class RecordFiles:
    path: str = key("", "the records: a JSONL file, a folder of shards, ...")
    image_root: str = key("", "where relative image paths point; empty = next to the records")


@dataclasses.dataclass(frozen=True)
class RecordSource(RecordFiles):
    source: str = key("random", "random (smoke test) | jsonl | arrayrecord (convert's shards) | tfds | rlaif_v | "
                                "povid | vlfeedback (the public datasets' own files)",
                      choices=("random", *RECORD_SOURCES))
    split: str = key("train", "tfds only: the split")
    tfds_data_dir: str = key("", "tfds only; empty = TFDS_DATA_DIR or ~/tensorflow_datasets")
    tfds_fields: str = key("", "tfds only: record_field=feature overrides, e.g. 'question=query,image=img'")
    on_bad_record: str = key("error", "error: stop naming file, record and field | skip: skip and count",
                             choices=ON_BAD_RECORD)

    def check_path(self, prefix: str) -> None:
        """Called by the runs that read the records now (a pipeline stage's path is filled in later)."""
        if self.source != "random" and not self.path:
            raise ValueError(f"{prefix}source={self.source!r} needs {prefix}path (the records: file, folder or "
                             "pattern)")


@dataclasses.dataclass(frozen=True)
class DataSettings(RecordSource):
    tokenizer: str = key("", "folder with the tokenizer and chat template; empty = model.path")
    truncation: str = key("response", "over-long examples: response (cut the answer at the end) | drop",
                          choices=TRUNCATION)
    seq_len: int = key(40, "tokens per row (image tokens + prompt + answer)", least=1)
    length_buckets: str = key("auto", "pad each batch to the shortest of these lengths; auto = quarters of "
                                      "seq_len")
    packing: bool = key(False, "lay rows end to end in rows of pack_len tokens (attention kept inside each "
                               "example) instead of padding: same losses, fewer tokens computed")
    share_prefix: bool = key(False, "with packing: rows reading the same image and prompt keep one copy of it "
                                    "([prompt | chosen | rejected]): same losses, the prefix computed once")
    pack_len: int = key(0, "tokens per packed row; 0 = seq_len (longer rows fit whole [prompt | chosen | "
                           "rejected] units)", least=0)
    cache_mb: int = key(1024, "MB of encoded examples kept per process so later epochs skip decoding (not "
                              "with images drawn afresh); 0 = off", least=0)
    workers: int = key(0, "worker processes decoding and tokenising; 0 = threads in this process", least=0)
    num_examples: int = key(32, "random source only: examples per epoch", least=1)
    seed: int = key(0, "data order and image-noise seed", least=0)
    pad_to_square: str = key("auto", "pad each image to a square with its mean colour before resizing, as "
                                     "LLaVA-1.5's and every seed's code do: auto = as the checkpoint's processor "
                                     "config says (do_pad) | true | false", choices=("auto", "true", "false"))
    image_noise_form: str = key("paper", "POVID's noised image where a record's image_noise names no form: paper "
                                         "(noise the model's input pixels in [0, 1]) | povid_code (POVID's code: "
                                         "noise at native resolution, wrap to 8 bits, then pad and resize)",
                                choices=("paper", "povid_code"))

    def check(self, prefix: str) -> None:
        parse_buckets(self.length_buckets, self.seq_len)
        if self.pack_len and self.pack_len < self.seq_len:
            raise ValueError(f"data.pack_len={self.pack_len} is shorter than data.seq_len={self.seq_len}: a row "
                             "must fit a packed row (0 = seq_len)")
        if self.share_prefix and not self.packing:
            raise ValueError("data.share_prefix=True needs data.packing=True: shared prefixes live in packed rows")


@dataclasses.dataclass(frozen=True)
class GenerateData:
    images: str = key("", "comma-separated image paths; empty = a drawn demo image")


@dataclasses.dataclass(frozen=True)
class InspectSettings:
    examples: int = key(3, "decoded examples mode=inspect prints", least=0)
    max_records: int = key(2000, "records read for the length histogram and bad-record counts", least=1)


ROW_SCORING = ("label", "best_other")  # Re-Align's public code scores rejected rows by best_other
NOISY_SCORING = ("batch", "argmax")  # POVID's public code: the argmax under the noised image
ALT_IMAGES = ("auto", "rejected_image", "crop")  # chosen_alt_image's image: the loss's own, the record's, mDPO's crop


@dataclasses.dataclass(frozen=True)
class LossSettings(LossConfig):
    name: str = key("dpo", "the objective: one loss of docs/methods.md (dpo, robust, ipo, rdpo, mdpo, povid, "
                           "simpo, orpo, TRL's loss types, ...) or several joined by '+' (weighted by loss.weights)")
    rejected_scoring: str = key("label", "rejected rows scored by their label's log-prob, or by the best other "
                                         "token's (best_other, Re-Align's public code)", choices=ROW_SCORING)
    noisy_scoring: str = key("batch", "POVID's noisy row: the batch's own tokens, or the policy's argmax under "
                                      "the noised image (argmax, POVID's public code)", choices=NOISY_SCORING)
    alt_image: str = key("auto", "the visual term's image: auto (the loss's own: mdpo's random crop, rdpo's "
                                 "rejected_image) | rejected_image (the record's; not with mdpo) | crop (mDPO's "
                                 "RandomResizedCrop of the model's input)", choices=ALT_IMAGES)
    crop_per_forward: bool = key(False, "mDPO's crop drawn once per example and read by policy and reference "
                                        "(False: the paper's D(y_w | v_crop)) or drawn afresh for each, as mDPO's "
                                        "code does (True: a third image slot)")
    vocab_chunk: int = key(8192, "vocabulary chunk of the log-softmax", least=1)

    def check(self, prefix: str) -> None:
        terms = loss_spec(self.name).terms  # an unknown name fails naming the registry's
        if self.weights and len(self.weights) != len(terms):
            raise ValueError(f"{prefix}weights={self.weights} has {len(self.weights)} weights for the "
                             f"{len(terms)} losses of {prefix}name={self.name!r}")
        if self.wpo and ({"aot", "aot_unpaired"} & set(terms) or "rejected" not in loss_spec(self.name).rows):
            raise ValueError(f"{prefix}wpo=True cannot go with {prefix}name={self.name!r}: WPO weights pairs "
                             "(y_w, y_l), and TRL leaves it out of aot and aot_unpaired, whose sorted batch has "
                             "no pair to weight")
        if "exo_pair" in terms and not self.label_smoothing:
            raise ValueError(f"{prefix}label_smoothing=0 with exo_pair: EXO's target (1-eps, eps) needs "
                             "eps > 0 (TRL's default for it: 1e-3)")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = key(8, "adapter rank (papers: 128); 0 = no LoRA (the trainable groups train in full)", least=0)
    alpha: float = key(16.0, "adapter scale numerator, scale = alpha / rank (papers: 256)", above=0)
    dropout: float = key(0.0, "dropout on the adapter's input", least=0)
    targets: str = key(r"decoder\.layers\.(q_proj|k_proj|v_proj|o_proj)$", "regex on the module paths adapted")

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
        _check_regex("lora.targets", self.targets)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = key(1e-5, "peak learning rate", above=0)
    warmup_ratio: float = key(0.03, "share of the steps warming up linearly", least=0)
    schedule: str = key("cosine", "after warm-up: cosine decay | constant", choices=("cosine", "constant"))
    weight_decay: float = key(0.0, "AdamW weight decay", least=0)
    clip_norm: float = key(1.0, "global gradient-norm clip; 0 = none", least=0)
    b1: float = key(0.9, "Adam beta1", least=0)
    b2: float = key(0.999, "Adam beta2", least=0)
    lr_groups: str = key("", "per-group learning rates, 'regex=lr,...' on parameter paths (first match wins)")

    def __post_init__(self) -> None:
        if self.warmup_ratio >= 1:
            raise ValueError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        for name in ("b1", "b2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        for pattern, lr in self.groups:
            if lr <= 0:
                raise ValueError(f"optim.lr_groups: lr {lr} for {pattern!r} must be positive")

    @property
    def groups(self) -> tuple[tuple[str, float], ...]:
        return self.parse_groups(self.lr_groups)

    @classmethod
    def parse_groups(cls, text: str) -> tuple[tuple[str, float], ...]:
        """'regex=lr,regex=lr' (the command-line form) -> ((regex, lr), ...)."""
        error = "optim.lr_groups item {item!r} is not 'regex=learning_rate'"
        groups = []
        for pattern, value in parse_key_values(text, error, at_last=True):  # a regex may hold '='
            try:
                re.compile(pattern)
                groups.append((pattern, float(value)))
            except (ValueError, re.error):
                raise ValueError(error.format(item=f"{pattern}={value}")) from None
        return tuple(groups)


@dataclasses.dataclass(frozen=True)
class TrainLoopSettings:
    steps: int = key(40, "optimiser steps (replaced by epochs when that is set)", least=1)
    epochs: float = key(0.0, "passes over the records, as the papers give it: steps = ceil(epochs x records / "
                             "batch_size); 0 = train.steps decides", least=0)
    batch_size: int = key(8, "examples per optimiser step, over all devices", least=1)
    grad_accum: int = key(1, "micro-batches per step (the batch is split, gradients summed)", least=1)
    trainable: str = key(r"^projector\.", "regex on base parameter paths trained in full (LoRA adapters always "
                                          "train); empty = none")
    log_every: int = key(1, "steps between metrics lines", least=1)
    checkpoint_every: int = key(20, "steps between checkpoints; 0 = only at the end", least=0)
    keep_checkpoints: int = key(2, "checkpoints kept", least=1)
    on_nonfinite: str = key("skip", "a step with a NaN/inf loss or gradient never updates: skip (count it; stop "
                                    "after max_consecutive_skips in a row) | stop", choices=("skip", "stop"))
    max_consecutive_skips: int = key(10, "non-finite steps in a row that end the run", least=0)
    export: bool = key(True, "write the merged model in Hugging Face format under <workdir>/export")
    profile_start: int = key(3, "--xla: first traced step", least=1)
    profile_steps: int = key(3, "--xla: steps traced", least=1)

    def check(self, prefix: str) -> None:
        _check_regex(f"{prefix}trainable", self.trainable)
        if self.batch_size % self.grad_accum:
            raise ValueError(f"{prefix}batch_size={self.batch_size} is not a multiple of "
                             f"{prefix}grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class WorldSettings(WorldConfig):
    dir: str = key("", "the world's folder; empty = <workdir>/world (generated there once)")
    records: str = key("captions", "which of the world's train files: captions | grounding | sft",
                       choices=("captions", "grounding", "sft"))

    def recipe(self) -> WorldConfig:
        """The world itself, without where it lives or which file is read."""
        return WorldConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(WorldConfig)})


@dataclasses.dataclass(frozen=True)
class Generating:
    """What the model-based builders share: their generation batches and sentence embedder."""

    sentence_model: str = key("", "sentence-transformers folder; empty = the packaged all-MiniLM-L6-v2")
    batch_size: int = key(32, "prompts per generation batch (Re-Align: also images per embedding batch)", least=1)
    temperature: float = key(0.0, "sampling temperature; 0 = greedy", least=0)


@dataclasses.dataclass(frozen=True)
class BdhsSampling(Generating):
    """BDHS's image-hidden rewriting, offline (`pairs`) and online (`online_bdhs`); checked when
    built, since the sampler takes it as it is."""

    key_prefix: ClassVar[str] = "pairs."

    rho_th: float = key(0.99, "an image token stays visible only when its U(0,1) draw is >= rho_th",
                        least=0, most=1)
    eps_s: float = key(0.97, "accept a rewrite when cos(embed(rewrite), embed(chosen)) < eps_s")
    rounds: int = key(5, "attempts per record; the last writes a whole answer with no prefix", least=1)
    flip_probability: float = key(0.5, "a yes/no answer is rewritten from its flipped verdict", least=0, most=1)
    max_new_tokens: int = key(64, "tokens per completion (a sentence, or the rest of the answer)", least=1)
    top_p: float = key(1.0, "nucleus sampling mass", above=0, most=1)
    write_to: str = key("rejected", "the field the rewrite goes into: rejected (BDHS pairs), or rejected_sampled "
                                    "beside each record's own rejected answer (for loss.name=dpo_combined)",
                        choices=("rejected", "rejected_sampled"))

    def __post_init__(self) -> None:
        check_fields(self, self.key_prefix)


@dataclasses.dataclass(frozen=True)
class Synonyms:
    synonyms: str = key("", "CHAIR synonyms.txt naming the records' objects; empty = the world's")


@dataclasses.dataclass(frozen=True)
class LlmSettings:
    base_url: str = key("", "an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    model: str = key("", "the model name the endpoint serves")
    api_key_env: str = key("", "environment variable holding the API key; empty = none")
    timeout: float = key(60.0, "seconds per request", above=0)
    workers: int = key(4, "requests in flight at once", least=1)


@dataclasses.dataclass(frozen=True)
class LlmStep:
    llm: LlmSettings = section(LlmSettings, "the OpenAI-compatible endpoint of the builder's optional LLM step")


@dataclasses.dataclass(frozen=True)
class PairsSettings:
    name: ClassVar[str]  # the builder's name, `builder`'s value
    needs_model: ClassVar[bool] = True  # generates with a VLM: model.path is required

    builder: str = key("", "the builder: povid | realign | bdhs")
    output: str = key("", "the pairs folder; empty = <workdir>/pairs")
    seed: int = key(0, "the builder's random choices and sampling", least=0)
    shard_size: int = key(1000, "records per output shard: the unit a rerun skips", least=1)
    max_records: int = key(0, "pairs for the first N records only; 0 = all (a builder still learns from all)",
                           least=0)
    on_bad_record: str = key("error", "an input record whose image is missing or does not decode: error = stop "
                             "naming its line and field | skip = drop it, count it and name it", choices=ON_BAD_RECORD)


@dataclasses.dataclass(frozen=True)
class RealignPairs(PairsSettings, Generating, Synonyms, LlmStep):
    name: ClassVar[str] = "realign"

    k: int = key(10, "neighbours tried per record, most similar first", least=1)
    tau: float = key(0.95, "accept a refill when cos(embed(refill), embed(chosen)) < tau")
    ceiling: float = key(0.98, "neighbours more similar than this are duplicates: never retrieved")
    whiten: bool = key(True, "search whitened tower embeddings (pairs/image_index.py says why)")
    masker: str = key("rules", "rules (synonym table + attribute/relation words) | llm", choices=("rules", "llm"))
    max_fill_tokens: int = key(24, "tokens generated per mask; the fill is cut to the span's words + 3", least=1)


@dataclasses.dataclass(frozen=True)
class BdhsPairs(PairsSettings, BdhsSampling):
    name: ClassVar[str] = "bdhs"


INJECTION_KINDS = ("object", "attribute", "relation", "count", "verdict")  # pairs/injection.py's edits


@dataclasses.dataclass(frozen=True)
class PovidPairs(PairsSettings, Synonyms, LlmStep):
    name: ClassVar[str] = "povid"
    needs_model: ClassVar[bool] = False

    injector: str = key("rules", "rules (statistics of the data itself) | llm (an OpenAI-compatible endpoint)",
                        choices=("rules", "llm"))
    kinds: str = key("object,attribute,relation,count,verdict", "the kinds of injected hallucination")
    max_edits: int = key(2, "edits per rejected answer: 1..max_edits", least=1)

    @property
    def kind_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.kinds.split(",") if k.strip())

    def check(self, prefix: str) -> None:
        if not self.kind_list or set(self.kind_list) - set(INJECTION_KINDS):
            raise ValueError(f"{prefix}kinds={self.kinds!r}: choose a comma-separated subset of {INJECTION_KINDS}")


PAIRS_SECTIONS: dict[str, type[PairsSettings]] = {cls.name: cls for cls in (PovidPairs, RealignPairs, BdhsPairs)}


@dataclasses.dataclass(frozen=True)
class OnlineBdhsSettings(BdhsSampling):
    key_prefix: ClassVar[str] = "online_bdhs."

    every: int = key(0, "training steps per sampling round; 0 = offline pairs (no online sampling)", least=0)


ANNOTATORS = ("world", "judge")  # pairs/annotators.py make_annotator builds each


@dataclasses.dataclass(frozen=True)
class OnlineDpoSettings:
    """Online DPO (arXiv 2407.02477): every `every` steps the current policy samples `samples`
    answers per record, the annotator ranks them, best and worst become the pair; with
    `offline_share` > 0 it is the paper's mixed DPO (each record keeps its own pair with that
    probability)."""

    every: int = key(0, "training steps per sampling round; 0 = no online DPO", least=0)
    samples: int = key(4, "answers sampled per record (k); the best and the worst become a pair", least=2)
    temperature: float = key(1.0, "sampling temperature of the k answers", above=0)
    top_p: float = key(1.0, "nucleus sampling mass", above=0, most=1)
    max_new_tokens: int = key(64, "tokens per sampled answer", least=1)
    batch_size: int = key(32, "prompts per generation batch", least=1)
    annotator: str = key("world", "who ranks the answers: world (the synthetic world's ground truth: object recall "
                                  "minus the share of mentioned objects not in the image) | judge (an "
                                  "OpenAI-compatible LLM endpoint, `online_dpo.llm`, scoring 0-10 against the "
                                  "record's chosen answer)", choices=ANNOTATORS)
    world: str = key("", "annotator=world: the world's folder; empty = world.dir (or <workdir>/world)")
    offline_share: float = key(0.0, "mixed DPO's Bernoulli alpha: the chance a record trains on its own (chosen, "
                                    "rejected) pair instead of a sampled one; 0 = online DPO, 0.5 = the paper's "
                                    "mixed DPO", least=0, most=1)
    llm: LlmSettings = section(LlmSettings, "annotator=judge: the OpenAI-compatible endpoint of the judge")


EVAL_BENCHMARKS = ("amber", "chair", "pope")  # eval/suite.py BENCHMARKS runs each
# auto: the official reading on the benchmark's own files, the corrected one on the synthetic world
CHAIR_PROTOCOLS = ("auto", "official", "corrected")  # eval/chair.py PROTOCOLS, plus auto
AMBER_PARSINGS = ("auto", "strict", "pope")  # eval/amber.py PARSINGS, plus auto
AMBER_POOLINGS = ("official", "split")  # eval/amber.py POOLINGS
AMBER_SCORES = ("auto", "official", "exact")  # eval/amber.py SCORES, plus auto


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    benchmarks: str = key("pope,chair,amber", "comma-separated: pope, chair, amber")
    world: str = key("", "a synthetic world folder (its eval split is the ground truth)")
    pope_file: str = key("", "a published POPE question file instead of the world")
    coco_instances: str = key("", "COCO instances_*.json for CHAIR instead of the world")
    coco_captions: str = key("", "COCO captions_*.json: its reference captions' objects join the instances "
                                 "as CHAIR's ground truth, as in the official CHAIR (needs coco_instances)")
    synonyms: str = key("", "CHAIR's synonyms.txt for COCO")
    chair_protocol: str = key("auto", "how CHAIR reads captions: official (the official code's tokeniser, "
                                      "singulariser and synonym split, quirks included: published numbers) | "
                                      "corrected | auto = official on COCO, corrected on the world",
                              choices=CHAIR_PROTOCOLS)
    amber_dir: str = key("", "AMBER's data folder (annotations.json, relation.json, safe_words.txt, "
                             "metrics.txt, query/query_all.json) instead of the world's probes")
    amber_parsing: str = key("auto", "AMBER's yes/no reading: strict (the official: exactly 'Yes' / 'No') | pope "
                                     "(POPE's rule) | auto = strict on amber_dir, pope on the world",
                             choices=AMBER_PARSINGS)
    amber_attribute_pooling: str = key("official", "AMBER's attribute row: official (state + number + action, "
                                                   "each also reported) | split (state + action as attribute, "
                                                   "number as count)", choices=AMBER_POOLINGS)
    amber_scores: str = key("auto", "AMBER's arithmetic: official (metrics.txt's 0.001 starting denominators, "
                                    "0.1-point rounding, F1 from rounded P and R plus the official epsilon) | "
                                    "exact | auto = official on amber_dir, exact on the world",
                            choices=AMBER_SCORES)
    image_folder: str = key("", "images of the POPE file / COCO instances / AMBER queries (empty: the POPE "
                                "file's or the AMBER folder's own folder)")
    max_images: int = key(0, "images of the split evaluated; 0 = all", least=0)
    pope_per_image: int = key(3, "POPE questions per image and split", least=1)
    seed: int = key(0, "question sampling seed", least=0)
    batch_size: int = key(32, "prompts per generation batch", least=1)
    answer_tokens: int = key(8, "tokens generated for a yes/no question (the verdict comes first)", least=1)
    caption_prompt: str = key("Describe the image.", "CHAIR's captioning prompt")
    caption_tokens: int = key(48, "tokens generated per caption", least=1)

    @property
    def names(self) -> list[str]:
        return [name.strip() for name in self.benchmarks.split(",") if name.strip()]

    def check(self, prefix: str) -> None:
        if not self.names or any(name not in EVAL_BENCHMARKS for name in self.names):
            raise ValueError(f"{prefix}benchmarks={self.benchmarks!r}: choose from {sorted(EVAL_BENCHMARKS)}")
        if self.coco_captions and not (self.coco_instances and self.synonyms):
            raise ValueError(f"{prefix}coco_captions needs {prefix}coco_instances and {prefix}synonyms (the "
                             "reference captions' objects join the instance categories through the synonyms)")


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    prompt: str = key("Describe the image in detail.", "the question asked of every image")
    max_new_tokens: int = key(32, "tokens generated per image", least=1)
    temperature: float = key(0.0, "sampling temperature; 0 = greedy", least=0)
    top_p: float = key(1.0, "nucleus sampling mass", above=0, most=1)
    batch_size: int = key(8, "images per generation batch", least=1)


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    output: str = key("", "a folder that does not exist yet")
    num_shards: int = key(1, "ArrayRecord shards written", least=1)
    overwrite: bool = key(False, "replace an existing output folder")
