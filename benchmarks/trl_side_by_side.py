"""Our DPO step against TRL's `DPOTrainer` (torch, CPU) on the same LLaVA, weights, data and
settings: pairs/s, peak memory and FLOP utilisation of each side, and their ratios.

    python benchmarks/trl_side_by_side.py                    # tiny/small x lora/full: 7 min on 2 quiet cores
    python benchmarks/trl_side_by_side.py --shape small --mode lora --steps 6 --rounds 4

Needs the `test` extra (torch 2.13.0, trl 1.16.0) and, for `--mode lora`, `pip install peft`.

What both sides get, built in a temp dir from a clean checkout:
- a random `transformers.LlavaForConditionalGeneration` (seed 0, every weight perturbed by
  0.05 N(0, 1) so log-probs are far from uniform and the sanity check means something) saved
  with a `LlavaProcessor` (the synthetic world's BPE tokenizer with `<image>`, a CLIP image
  processor). `--shape tiny`: the repo's preset (16 image tokens, decoder 64 x 2); `small`: 16.9M
  parameters, a CLIP tower 256 x 4 on 128 px images, 16 px patches (64 image tokens), a Llama
  decoder 512 x 4 (MLP 1408, 8 heads) over the tokenizer's 256 ids;
- preference pairs on the world's images (chosen: the image's caption, rejected: another
  image's) as our JSONL records and as a `datasets.Dataset` in TRL 1.16's vision format (prompt,
  chosen and rejected strings, `images`), ordered so that both sides read the same batches in
  the same order (our shuffled first epoch, TRL's sequential sampler). The parent checks that
  TRL's collator and our encoder give identical token ids and answer masks for every record and
  prints the largest pixel difference;
- the same batch, steps, lr, beta 0.1, AdamW clipped at 1.0, fp32, DPO's sigmoid loss, nothing
  truncated (TRL's `max_length` = our padded `data.seq_len` = the longest row, rounded up to 8),
  no remat and no gradient checkpointing (TRL's default turns it on; off, it recomputes nothing);
- `--mode lora`: adapters on the decoder's q/k/v/o (our `lora.targets`; peft's `target_modules`
  restricted to the language model) and the projector trained in full (our `train.trainable`
  default; peft's `modules_to_save`), the reference being the same weights with the adapters off
  on both sides. `--mode full`: projector and decoder trained, the vision tower frozen on both
  sides, each keeping a frozen reference copy.

Ours runs on ONE CPU device with these data layouts (`--variants`): `shared` = `data.packing` +
`data.share_prefix` (when the checkout has that key), `packed` = packing alone, `padded` = the
config default, each batch padded to its length bucket. Packed rows are `data.seq_len` = twice
the longest row (at least one whole [prompt | chosen | rejected] unit). The layouts share one
process, model and state (only the host batches differ), so ours has one peak RSS; every batch
shape is compiled before timing.

Each side runs in its own process, set up once per case (imports, model, compilation, the first
step, `--warmup` steps) and then waiting; the parent runs `--rounds` timed segments of `--steps`
steps on each side, alternating which side goes first, so load from other processes on the
shared cores hits both alike (`os.getloadavg()` is printed at start and end). A segment is the
side's whole training loop: data loading and collation, step, optimiser update. Both processes
run with OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads otherwise spin at every op's barrier,
and on 2 cores shared with other processes TRL's tiny step was 5-40x slower and erratic.

Printed per case: pairs/s by round, their mean and the ratio ours / TRL; utilisation of the FLOPs
the step needs against the fp32 matmul peak measured in the same processes (`--peak-size`, torch
and JAX, best of a few bursts, the higher of the two); peak RSS (the process's VmHWM, so with its
framework's import overhead, printed apart) and state bytes (parameters, reference copy, optimiser
moments) of each side and the ratios; the first step's loss and mean chosen / rejected log-prob
sums of both sides, from the same starting weights (each of our layouts on its own copy).

FLOP accounting (matmul FLOPs, 2 per multiply-add; `models/accounting.step_flops` over each
row's real length, its LM head at every position), per pair: the policy forward of the chosen and
the rejected row, its backward (1x the forward under LoRA: activation gradients only; 2x in full
fine-tuning: activations and weights) and the reference forward of both rows; the frozen vision
tower's forward once (up to the feature layer LLaVA reads); the projector's forward once for the
policy and once for the reference and its backward (2x, it is trained in both modes); LoRA's own
matmuls, 2 r (d_in + d_out) per token and adapted projection forward, twice that backward, none
in the reference. The matmul peak is benchmarks/peak.py's. Both sides are credited with these FLOPs (a model-FLOPs utilisation): TRL's
extra work (the vision tower four times per pair, for policy and reference, chosen and rejected
rows; its batch's padding) is not counted, nor is ours (bucket or packed-row padding), and ours
with `share_prefix` runs each prompt once per pair where the count has it twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import train_llava  # noqa: E402
from peak import matmul_peak  # noqa: E402  (benchmarks/peak.py)

from realign_jax.models.config import PRESETS, LlavaConfig, VisionConfig  # noqa: E402

# Only light modules above: each side's process imports its own framework (JAX or torch), so
# neither's peak RSS carries the other's.
SHAPES = ("tiny", "small")
MODES = ("lora", "full")
BETA = 0.1
# Our `lora.targets` default as a peft target: a string is matched against the whole module
# name, so the vision tower's own q/k/v projections stay out.
PEFT_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # the same projections, as models/accounting names them
PEFT_TRAINED_IN_FULL = ["multi_modal_projector"]  # our `train.trainable` default under LoRA: ^projector\.
VARIANT_NAMES = {"shared": "ours, packed + share_prefix", "packed": "ours, packed",
                 "padded": "ours, length buckets", "trl": "TRL DPOTrainer"}


# -- shapes, checkpoint and data -----------------------------------------------------------------

def shape_config(name: str) -> LlavaConfig:
    """The model shape of a `--shape`."""
    tiny = PRESETS["tiny"]
    if name == "tiny":
        return tiny
    return tiny.replace(
        vision=VisionConfig(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, image_size=128,
                            patch_size=16),
        text=dataclasses.replace(tiny.text, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
                                 num_kv_heads=8))


@dataclasses.dataclass(frozen=True)
class Workspace:
    """One shape's checkpoint folder and data, and what the report needs of them."""

    shape: str
    model_dir: str
    records: str  # our JSONL
    trl_dataset: str  # `datasets` folder, rows in our first epoch's order
    max_row: int  # longest row rounded up to 8: TRL's max_length, our padded data.seq_len
    packed_len: int  # packed data.seq_len: two rows of max_row, and at least one whole shared-prefix unit
    order: list[int]  # our first epoch's record order
    lengths: list[tuple[int, int, int]]  # per record: prompt, chosen and rejected answer tokens


def build_checkpoint(config: LlavaConfig, tokenizer_dir: str, out: str) -> None:
    """A random HF LLaVA at `config`'s shape and a LlavaProcessor, as a user's folder holds them."""
    import torch
    import transformers

    from realign_jax.models import hf

    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(hf.config_to_hf(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    size = config.vision.image_size
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": size},
                                                         crop_size={"height": size, "width": size})
    transformers.LlavaProcessor(image_processor, transformers.AutoTokenizer.from_pretrained(tokenizer_dir),
                                patch_size=config.vision.patch_size, num_additional_image_tokens=1,
                                vision_feature_select_strategy=config.vision_feature_select_strategy,
                                ).save_pretrained(out)
    # transformers 5 keeps the image settings inside processor_config.json; our loader reads the
    # preprocessor_config.json that LLaVA folders on the Hub carry, so write that too.
    image_processor.save_pretrained(out)


def trl_prompt(question: str) -> str:
    """TRL's vision collator tokenises with add_special_tokens=False, so the BOS is written out;
    '<s> USER:' gives the ids of BOS + 'USER:' (checked for every record by `check_same_inputs`)."""
    return f"<s> USER: <image>\n{question} ASSISTANT:"


def prepare(shape: str, root: Path, num_records: int) -> Workspace:
    """World images and tokenizer, checkpoint, records in both formats, every row's length."""
    import datasets
    import transformers

    from realign_jax.data.loader import epoch_order
    from realign_jax.synthetic.config import WorldConfig
    from realign_jax.synthetic.world import generate_world

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    config = shape_config(shape)
    folder = root / shape
    world = generate_world(WorldConfig(num_train_images=num_records, num_eval_images=1,
                                       image_size=config.vision.image_size), folder / "world", overwrite=True,
                           progress=False)
    model_dir = str(folder / "model")
    build_checkpoint(config, world["tokenizer"], model_dir)
    captions = [json.loads(line) for line in (folder / "world" / "train" / "captions.jsonl").read_text().splitlines()]
    records = []
    for i, record in enumerate(captions):
        rejected = next(c["chosen"] for c in captions[i + 1:] + captions[:i] if c["chosen"] != record["chosen"])
        records.append({"id": record["id"], "image": f"world/train/{record['image']}", "question": record["question"],
                        "chosen": record["chosen"], "rejected": rejected})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    source, encoder = our_encoder(model_dir, str(path), 4096)
    lengths = []
    for i in range(len(source)):
        example = encoder.encode(source[i], source.where(i))
        prompt = int(np.argmax(example["loss_mask"][0]))
        chosen, rejected = (int(n) - prompt for n in example["attention_mask"].sum(-1))
        lengths.append((prompt, chosen, rejected))
    order = [int(epoch_order(len(records), 0, 0, 1)[i][1]) for i in range(len(records))]
    rows = [records[i] for i in order]
    features = datasets.Features({key: datasets.Value("string") for key in ("prompt", "chosen", "rejected")}
                                 | {"images": datasets.Sequence(datasets.Image())})
    trl_dataset = str(folder / "trl_dataset")
    datasets.Dataset.from_dict({
        "prompt": [trl_prompt(r["question"]) for r in rows],
        "chosen": [f" {r['chosen']}</s>" for r in rows],
        "rejected": [f" {r['rejected']}</s>" for r in rows],
        "images": [[str(folder / r["image"])] for r in rows],
    }, features=features).save_to_disk(trl_dataset)

    def up8(n: int) -> int:
        return -(-n // 8) * 8

    max_row = up8(max(p + max(c, r) for p, c, r in lengths))
    packed_len = max(2 * max_row, up8(max(p + c + r + 1 for p, c, r in lengths)))
    return Workspace(shape, model_dir, str(path), trl_dataset, max_row, packed_len, order, lengths)


def our_encoder(model_dir: str, records: str, seq_len: int) -> tuple[Any, Any]:
    """Our record source and DPO example encoder, as train/batches.py builds them for training."""
    from realign_jax.data.sources import open_source
    from realign_jax.models import hf
    from realign_jax.settings import runs as run_settings
    from realign_jax.train.batches import make_encoder

    config = our_config(model_dir, records, seq_len, "lora", 8, 16.0, 1, 1, 1e-4, "padded")  # only .data matters
    return open_source(config.data), make_encoder(run_settings.load(config),
                                                  hf.config_from_hf(model_dir))


def check_same_inputs(ws: Workspace, batch: int) -> float:
    """Raises unless TRL's collator gives our token ids and answer masks for every record;
    returns the largest pixel difference between the two."""
    import datasets
    import transformers
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    source, encoder = our_encoder(ws.model_dir, ws.records, ws.max_row)
    collator = DataCollatorForVisionPreference(transformers.AutoProcessor.from_pretrained(ws.model_dir),
                                               max_length=ws.max_row)
    rows = datasets.load_from_disk(ws.trl_dataset)
    pixel_diff = 0.0
    for start in range(0, len(rows), batch):
        theirs = {k: v.numpy() for k, v in collator([rows[i] for i in range(start, min(start + batch, len(rows)))])
                  .items()}
        n = len(theirs["input_ids"]) // 2  # chosen rows, then rejected rows
        for j in range(n):
            index = ws.order[start + j]
            ours = encoder.encode(source[index], source.where(index))
            for k in range(2):
                keep, mine = theirs["attention_mask"][k * n + j] == 1, ours["attention_mask"][k] == 1
                if (theirs["input_ids"][k * n + j][keep].tolist() != ours["input_ids"][k][mine].tolist() or
                        theirs["completion_mask"][k * n + j][keep].tolist() != ours["loss_mask"][k][mine].tolist()):
                    raise AssertionError(f"record {index}, {('chosen', 'rejected')[k]} row: TRL's token ids or "
                                         "answer mask differ from ours")
                pixel_diff = max(pixel_diff, float(np.abs(theirs["pixel_values"][k * n + j]
                                                           - ours["pixel_values"][0]).max()))
    return pixel_diff


# -- FLOPs ---------------------------------------------------------------------------------------

def _needed_flops(config: LlavaConfig, rows: list[int], mode: str, rank: int) -> float:
    """The FLOPs a step over these rows (one image) needs, models/accounting.step_flops counting:
    LoRA on the decoder's q/k/v/o with the projector trained and the policy with the adapters off
    as the reference, or the projector and decoder trained against a frozen copy."""
    from realign_jax.models.accounting import step_flops

    lora = mode == "lora"
    return step_flops(config, rows, 1, trains={"projector"} if lora else {"projector", "decoder"},
                      lora_rank=rank if lora else 0, lora_targets=LORA_TARGETS,
                      reference="lora_off" if lora else "frozen_copy").needed


def pair_flops(config: LlavaConfig, lengths: tuple[int, int, int], mode: str, rank: int) -> float:
    """The FLOPs one pair needs, as the module docstring counts them: a chosen and a rejected row."""
    prompt, chosen, rejected = lengths
    return _needed_flops(config, [prompt + chosen, prompt + rejected], mode, rank)


def shared_pair_flops(config: LlavaConfig, lengths: tuple[int, int, int], mode: str, rank: int) -> float:
    """`pair_flops` in the shared-prefix layout: one row of the image and prompt once, each answer
    after a copy of the prompt's last token (data/packing.py), no padding. The least ours can
    compute, so the matmul peak over it bounds our pairs/s on this machine."""
    prompt, chosen, rejected = lengths
    return _needed_flops(config, [prompt + chosen + rejected + 1], mode, rank)


# -- the two sides, each in its own process ------------------------------------------------------

def our_config(model_dir: str, records: str, seq_len: int, mode: str, rank: int, alpha: float, batch: int,
               steps: int, lr: float, variant: str) -> ml_collections.ConfigDict:
    """configs/train_llava.py's config with this comparison's settings."""
    config = train_llava.get_config("loss=dpo")
    config.model.path, config.model.preset = model_dir, ""
    config.data.source, config.data.path, config.data.seq_len = "jsonl", records, seq_len
    config.data.packing = variant in ("packed", "shared")
    if variant == "shared":
        config.data.share_prefix = True
    config.loss.beta = BETA
    config.mesh.data = 1
    config.train.batch_size, config.train.steps = batch, steps
    config.train.checkpoint_every, config.train.export = 0, False
    config.optim.lr, config.optim.lr_groups = lr, ""  # one lr for every group, as TRL's AdamW
    if mode == "lora":
        config.lora.rank, config.lora.alpha = rank, alpha
    else:
        config.lora.rank, config.reference = 0, "frozen_copy"
        config.train.trainable = r"^(projector|decoder)\."
    return config


class Channel:
    """The child's side of the parent's protocol: one JSON line per message on the real stdout
    (library output is sent to stderr), one command per line on stdin."""

    def __init__(self) -> None:
        self._out: TextIO = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    @staticmethod
    def receive() -> str:
        line = sys.stdin.readline()
        if not line:
            sys.exit("the parent process is gone")
        return line.strip()


def memory(key: str = "VmHWM") -> int:
    """This process's peak RSS (VmHWM) or current RSS (VmRSS) in bytes. Not getrusage's
    ru_maxrss: Linux carries that across fork + exec, so a child would start at the parent's
    peak (the parent imports torch and JAX)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


def serve_ours(spec: dict[str, Any], channel: Channel) -> None:
    """Our Trainer on one CPU device, one data pipeline per layout: compile every batch shape,
    take the first step of each layout from the same starting weights, warm up, then run timed
    segments on command."""
    import itertools

    import jax
    import jax.numpy as jnp

    from realign_jax.data import batching, loader
    from realign_jax.models.partitioning import make_mesh
    from realign_jax.settings import runs as run_settings
    from realign_jax.data.batching import to_bucket, to_packed
    from realign_jax.train.batches import make_dataset
    from realign_jax.train.trainer import Trainer

    after_import = memory()
    began = time.perf_counter()
    total = 1 + spec["warmup"] + spec["rounds"] * spec["steps"]

    def config(variant: str) -> ml_collections.ConfigDict:
        seq_len = spec["max_row"] if variant == "padded" else spec["packed_len"]
        return our_config(spec["model_dir"], spec["records"], seq_len, spec["mode"], spec["rank"], spec["alpha"],
                          spec["batch"], total, spec["lr"], variant)

    settings = run_settings.load(config(spec["variants"][0]))
    trainer = Trainer(settings, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state = trainer.init_state()
    init_s = time.perf_counter() - began
    skipped = loader.BadRecordCounter()  # stays empty: every record is good

    def batches(variant: str) -> Iterator[Any]:
        """The layout's device batches, built as train/loop.py builds them."""
        data = config(variant).data
        buckets = batching.parse_buckets(data.length_buckets, data.seq_len)
        share = (True,) if data.get("share_prefix") else ()  # the argument exists only with the key

        def shaped(batch: dict[str, Any]) -> dict[str, Any]:
            if data.packing:
                return to_packed(batch, settings.layout, trainer.model_config, trainer.packed_row_multiple(), *share)
            return to_bucket(batch, buckets)

        iterator = iter(make_dataset(settings, trainer.model_config))
        try:
            for raw in iterator:
                yield trainer.device_batch(shaped(loader.take_bad_records(raw, skipped)))
        finally:
            iterator.close()

    began = time.perf_counter()
    programs = set()  # batch shapes: one compiled step each
    for variant in spec["variants"]:
        for batch in itertools.islice(batches(variant), total):
            trainer.executable(state, batch)
            programs.add(tuple(sorted((k, v.shape) for k, v in batch.items())))
    compile_s = time.perf_counter() - began
    streams = {variant: batches(variant) for variant in spec["variants"]}
    first = {}
    for variant, stream in streams.items():
        _, metrics = trainer.step(jax.tree.map(jnp.copy, state), next(stream))
        first[variant] = {k: float(metrics[k]) for k in ("loss", "logps/chosen", "logps/rejected")}
    for variant, stream in streams.items():
        for _ in range(spec["warmup"]):
            state, metrics = trainer.step(state, next(stream))
    jax.block_until_ready(metrics)
    size = spec["peak_size"]

    def peak() -> float:
        return matmul_peak(lambda n: jax.random.normal(jax.random.key(n), (size, size), jnp.float32),
                           jax.jit(jnp.matmul), jax.block_until_ready, size)

    peak_at_start = peak()
    channel.send({"first": first, "init_s": init_s, "compile_s": compile_s, "programs": len(programs)})
    while (command := channel.receive().split())[0] == "run":
        stream = streams[command[1]]
        began = time.perf_counter()
        for _ in range(spec["steps"]):
            previous = metrics
            state, metrics = trainer.step(state, next(stream))
            float(previous["loss"])  # as train/loop.py: a step's metrics are read once the next is queued
        jax.block_until_ready(metrics)
        channel.send({"seconds": time.perf_counter() - began})
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((state.trainable, state.opt_state, state.frozen,
                                                          state.base_start)))
    channel.send({"state_bytes": state_bytes, "rss_after_import": after_import, "peak_rss": memory(),
                  "rss_end": memory("VmRSS"), "peak_flops": max(peak_at_start, peak()),
                  "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}"})


def serve_trl(spec: dict[str, Any], channel: Channel) -> None:
    """TRL's DPOTrainer set up as its docs do; a callback pauses training at the segment
    boundaries and times each segment."""
    import datasets
    import torch
    import transformers
    import trl
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    after_import = memory()
    size = spec["peak_size"]

    def peak() -> float:
        return matmul_peak(lambda n: torch.randn(size, size, generator=torch.Generator().manual_seed(n)),
                           torch.mm, lambda x: x, size)

    peak_at_start = peak()
    warm = 1 + spec["warmup"]
    model = transformers.LlavaForConditionalGeneration.from_pretrained(spec["model_dir"], dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)  # frozen, as ours (LoRA freezes it anyway)
    versions = f"trl {trl.__version__}, transformers {transformers.__version__}"
    peft_config = None
    if spec["mode"] == "lora":
        import peft

        peft_config = peft.LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                      target_modules=PEFT_TARGETS, modules_to_save=PEFT_TRAINED_IN_FULL,
                                      task_type="CAUSAL_LM")
        versions += f", peft {peft.__version__}"

    class Segments(transformers.TrainerCallback):
        """Reports the first step's metrics, then waits for "run" and times each segment."""

        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []
            self.began = self.step_began = self.computing = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.computing += now - self.step_began
            done = state.global_step - warm
            if done < 0 or done % spec["steps"]:
                return
            if done == 0:
                channel.send({"first": {"trl": {k: self.logs[0][k] for k in ("loss", "logps/chosen",
                                                                             "logps/rejected")}}})
            else:
                channel.send({"seconds": now - self.began, "compute_seconds": self.computing})
            if state.global_step < args.max_steps:
                channel.receive()  # "run": the next segment
                self.began, self.computing = time.perf_counter(), 0.0

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=spec["batch"],
            max_steps=warm + spec["rounds"] * spec["steps"], learning_rate=spec["lr"], beta=BETA,
            loss_type=["sigmoid"], max_length=spec["max_row"], gradient_checkpointing=False, bf16=False,
            fp16=False, use_cpu=True, seed=0, train_sampling_strategy="sequential", dataloader_num_workers=0,
            dataloader_pin_memory=False, logging_steps=1, report_to="none", save_strategy="no",
            eval_strategy="no", disable_tqdm=True,
        )
        trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.load_from_disk(spec["trl_dataset"]),
                             processing_class=transformers.AutoProcessor.from_pretrained(spec["model_dir"]),
                             peft_config=peft_config, callbacks=[Segments()])
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
    channel.receive()
    tensors = [*trainer.model.parameters(), *(trainer.ref_model.parameters() if trainer.ref_model else ())]
    tensors += [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    channel.send({"state_bytes": sum(t.numel() * t.element_size() for t in tensors), "rss_after_import": after_import,
                  "peak_rss": memory(), "rss_end": memory("VmRSS"), "peak_flops": max(peak_at_start, peak()),
                  "device": f"torch {torch.__version__} ({torch.get_num_threads()} threads), {versions}"})


SERVERS = {"ours": serve_ours, "trl": serve_trl}


class Side:
    """The parent's handle on one side's process."""

    def __init__(self, side: str, spec: dict[str, Any], log: Path):
        # OpenMP's default active wait spins at every op's barrier: on 2 cores shared with other
        # processes that made TRL's tiny step 5-40x slower and erratic (measured), so threads sleep.
        env = {"OMP_WAIT_POLICY": "PASSIVE"} | dict(os.environ, TQDM_DISABLE="1")
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith("--xla_force_host_platform_device_count"))
        self.side, self.log = side, log
        with open(log, "w") as stderr:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen([sys.executable, __file__, "--serve", side, json.dumps(spec)], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            sys.exit(f"{self.side} side failed (exit {self.proc.returncode}); the end of {self.log}:\n"
                     f"{self.log.read_text()[-4000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict[str, Any]:
        result = self.ask("done")
        self.proc.wait()
        return result


# -- the comparison --------------------------------------------------------------------------------

def run_case(ws: Workspace, mode: str, args: argparse.Namespace, variants: list[str], root: Path) -> None:
    """Both sides on one shape and mode; prints the case's table."""
    spec = {"model_dir": ws.model_dir, "records": ws.records, "trl_dataset": ws.trl_dataset, "max_row": ws.max_row,
            "packed_len": ws.packed_len, "mode": mode, "rank": args.lora_rank, "alpha": args.lora_alpha,
            "batch": args.batch, "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds, "lr": args.lr,
            "peak_size": args.peak_size, "variants": variants}
    began = time.perf_counter()
    sides = {"ours": Side("ours", spec, root / f"{ws.shape}-{mode}-ours.log")}
    ready = sides["ours"].read()
    sides["trl"] = Side("trl", spec, root / f"{ws.shape}-{mode}-trl.log")
    first = ready["first"] | sides["trl"].read()["first"]
    setup_s = time.perf_counter() - began
    segments: dict[str, list[dict[str, Any]]] = {v: [] for v in [*variants, "trl"]}
    for r in range(args.rounds):
        for name in (list(segments) if r % 2 == 0 else list(segments)[::-1]):
            segments[name].append(sides["trl"].ask("run") if name == "trl" else sides["ours"].ask(f"run {name}"))
    final = {side: handle.finish() for side, handle in sides.items()}
    peak = max(f["peak_flops"] for f in final.values())

    config = shape_config(ws.shape)
    start = (1 + args.warmup) * args.batch
    timed = ws.order[start:start + args.rounds * args.steps * args.batch]
    flops = statistics.mean(pair_flops(config, ws.lengths[i], mode, args.lora_rank) for i in timed)
    shared = statistics.mean(shared_pair_flops(config, ws.lengths[i], mode, args.lora_rank) for i in timed)
    lora = f"LoRA r={args.lora_rank} alpha={args.lora_alpha:g}" if mode == "lora" else "full fine-tuning"
    print(f"\n== {ws.shape}, {lora}: batch {args.batch}, {args.rounds} x {args.steps} timed steps; "
          f"{flops / 1e9:.2f} GFLOP needed per pair; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"(torch {final['trl']['peak_flops'] / 1e9:.1f}, jax {final['ours']['peak_flops'] / 1e9:.1f}); "
          f"set-up {setup_s:.0f} s (ours: init {ready['init_s']:.0f} s, {ready['programs']} step programs compiled "
          f"in {ready['compile_s']:.0f} s)")
    rates = {name: [args.batch * args.steps / s["seconds"] for s in runs] for name, runs in segments.items()}
    trl_rate = statistics.mean(rates["trl"])
    trl = final["trl"]
    print(f"ours: {final['ours']['device']}; TRL: {final['trl']['device']}")
    by_round = {name: ", ".join(f"{x:.2f}" for x in values) for name, values in rates.items()}
    width = max(len("pairs/s by round"), *map(len, by_round.values()))
    print(f"{'':28s} {'pairs/s by round':>{width}s} {'mean':>7s} {'/TRL':>6s}  {'util':>6s}")
    for name, values in rates.items():
        rate = statistics.mean(values)
        print(f"{VARIANT_NAMES[name]:28s} {by_round[name]:>{width}s} {rate:7.2f} "
              f"{rate / trl_rate:5.2f}x  {rate * flops / peak:6.1%}")
    for side, label in (("ours", "ours (all layouts)"), ("trl", VARIANT_NAMES["trl"])):
        f = final[side]
        print(f"{label:28s} peak RSS {f['peak_rss'] / 2**20:5.0f} MiB ({f['peak_rss'] / trl['peak_rss']:.2f}x TRL; "
              f"{f['rss_after_import'] / 2**20:.0f} after imports, {f['rss_end'] / 2**20:.0f} at the end), state "
              f"{f['state_bytes'] / 2**20:.2f} MiB ({f['state_bytes'] / trl['state_bytes']:.2f}x TRL)")
    print(f"ours' ceiling: {peak / shared:.2f} pairs/s = {peak / shared / trl_rate:.2f}x TRL (the shared-prefix "
          f"layout's {shared / 1e9:.2f} GFLOP per pair, no padding, at the matmul peak)")
    collation = 1 - sum(s["compute_seconds"] for s in segments["trl"]) / sum(s["seconds"] for s in segments["trl"])
    print(f"TRL spends {collation:.0%} of its loop outside its steps (collation, data loading)")
    print("first step (loss, mean log-prob sum of chosen / rejected):")
    for name, metrics in first.items():
        print(f"  {VARIANT_NAMES[name]:28s} {metrics['loss']:.6f}  {metrics['logps/chosen']:11.4f}  "
              f"{metrics['logps/rejected']:11.4f}")


def our_variants() -> list[str]:
    """Packing with prefix sharing when this checkout has `data.share_prefix`, else packing alone;
    and the config default, length buckets."""
    from realign_jax.settings.sections import DataSettings

    return ["shared" if "share_prefix" in DataSettings.__dataclass_fields__ else "packed", "padded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=(*SHAPES, "all"), default="all")
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step, both sides")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (at least 1)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed segments per side, alternating who goes first")
    parser.add_argument("--records", type=int, default=256, help="at least what the steps read")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--variants", default="", help="our layouts, comma-separated: shared, packed, padded "
                                                       "(default: shared or packed, and padded)")
    parser.add_argument("--peak-size", type=int, default=1024, help="matmul size of the fp32 peak")
    parser.add_argument("--workdir", default="", help="keep checkpoints, data and logs here (default: a temp dir)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        side, spec = args.serve
        SERVERS[side](json.loads(spec), Channel())
        return
    if args.warmup < 1:  # TRL logs a step after its on_step_end: the first step's metrics come one step later
        parser.error("--warmup must be at least 1")
    sys.stdout.reconfigure(line_buffering=True)  # each case's table as soon as it is done
    records = max(args.records, (1 + args.warmup + args.rounds * args.steps) * args.batch)
    variants = args.variants.split(",") if args.variants else our_variants()
    unknown = set(variants) - {"packed", "padded"} - set(our_variants())
    if unknown:
        parser.error(f"--variants {sorted(unknown)}: choose from packed, padded and (when this checkout has "
                     "data.share_prefix) shared")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(args.workdir or temp)
        root.mkdir(parents=True, exist_ok=True)
        for shape in SHAPES if args.shape == "all" else (args.shape,):
            from realign_jax.models.accounting import count_params

            ws = prepare(shape, root, records)
            pixel_diff = check_same_inputs(ws, args.batch)
            config = shape_config(shape)
            lengths = np.array(ws.lengths)
            print(f"\n{shape}: {count_params(config)['total'] / 1e6:.2f}M parameters, {config.num_image_tokens} image "
                  f"tokens; {records} records: prompt {lengths[:, 0].mean():.0f} tokens, answers "
                  f"{lengths[:, 1:].mean():.1f} mean / {lengths[:, 1:].max()} max; TRL max_length = padded "
                  f"data.seq_len = {ws.max_row}, packed data.seq_len = {ws.packed_len}")
            print(f"inputs: TRL's collator and our encoder give the same token ids and answer masks for all "
                  f"{records} records; largest pixel difference {pixel_diff:.1e}")
            for mode in MODES if args.mode == "all" else (args.mode,):
                run_case(ws, mode, args, variants, root)
    print("\npeak RSS includes each framework's import overhead; state = parameters, reference copy and "
          "optimiser moments; util = the needed FLOPs (module docstring) / time / fp32 matmul peak")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
