"""Throughput of the data pipeline alone (records -> images decoded and preprocessed, chat
template applied and tokenised -> batches) on this machine's CPU cores, next to the train step
it has to feed.

    python benchmarks/data_pipeline.py [--quick] [--records 256] [--batch_size 8] [--step_seconds S]

Nothing is downloaded. A temporary folder gets a COCO-like synthetic dataset: `--records`
640x480 JPEG photos of smooth random content (Pillow, quality 90, ~90 KB each) and JSONL
preference records (a question, chosen and rejected answers of a few sentences, a rejected
image for rDPO), plus the same records as ArrayRecord shards written by `convert`. The Grain
pipeline (`realign_jax.data.loader.dataset`, default read threads) then runs in each
configuration: (a) JSONL, no worker processes; (b) ArrayRecord, no worker processes; (c) JSONL
with 1 and 2 worker processes. Shapes and layouts: LLaVA-1.5's (336 px, shortest edge 336,
pad-to-square, 576 image tokens, seq_len 1024) for plain DPO (rows chosen, rejected; 1 image)
and rDPO (rows chosen, rejected, chosen_alt_image; 2 images), and the tiny preset's image size
for DPO. `--quick` (under a minute) uses 48 records, 1 s per configuration, 3 steps and no
worker processes.

The figures:
- stage costs: one example's record read, JPEG decode, image preprocessing (pad, resize, crop,
  normalise) and tokenisation of its rows, run serially in this process (one core);
- examples/s: examples the pipeline yields per second of wall-clock time once warm (first
  batch and 2 more skipped, then at least `--seconds`), using every core it can;
  ms/example = 1000 / examples/s; "vs (a)" divides by configuration (a) of the same shapes and
  layout, measured in the same run; "start s" is the time to the first batch (worker
  processes start and import this script) and "close s" the time `close()` takes (Grain
  joins each worker process for up to 25 s, then kills it);
- the train step of the default config (configs/train_llava.py: tiny random model,
  `data.source=random`), timed after compilation, and the best pipeline configuration at that
  model's image size over the step's examples/s: above 1 the pipeline keeps the step fed.
  Both were measured alone; in a run they share the cores, so the ratio is an upper bound;
- for LLaVA-1.5's shapes, the examples/s a step of `--batch_size` examples taking
  `--step_seconds` (measured by you; nothing is assumed) needs, against the best configuration
  of each layout.

The tokenizer is the tests' Llama-like BPE with LLaVA's chat template (tests/test_prompting.py):
its small vocabulary spends ~3.5 tokens a word where Llama's spends ~1.3, so rows are longer
than real ones, and the tiny shapes use seq_len 512 rather than the step's 40 so that real
questions fit (the pipeline's cost hardly depends on seq_len).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

# Only the data side here: Grain's worker processes re-import this script, so the test tokenizer
# (its module imports torch) and the trainer are imported in the functions that use them.
from realign_jax.data import images as image_ops
from realign_jax.data.arrayrecord import ArrayRecordSource, convert
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.loader import dataset
from realign_jax.data.sources import JsonlSource
from realign_jax.models.config import PRESETS
from realign_jax.train.rows import RowLayout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "configs"), os.path.join(ROOT, "tests")]  # train_llava, test_prompting

PHOTO_SIZE = (640, 480)  # COCO's most common size
LAYOUTS = ("dpo", "rdpo")  # rows (chosen, rejected), 1 image | (chosen, rejected, chosen_alt_image), 2 images


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the model wants of an example: image preprocessing, image tokens, row length."""

    name: str
    processing: image_ops.ImageProcessing
    num_image_tokens: int
    seq_len: int


LLAVA = Shapes("llava-1.5 336px/576tok/T1024",
               image_ops.ImageProcessing(size=336, shortest_edge=336, pad_to_square=True), 576, 1024)
_TINY_VISION = PRESETS["tiny"].vision
TINY = Shapes(f"tiny {_TINY_VISION.image_size}px/{PRESETS['tiny'].num_image_tokens}tok/T512",
              image_ops.ImageProcessing(size=_TINY_VISION.image_size, shortest_edge=_TINY_VISION.image_size),
              PRESETS["tiny"].num_image_tokens, 512)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    label: str
    source: str  # "jsonl" | "arrayrecord"
    workers: int


CONFIGS = (
    PipelineConfig("(a) jsonl, threads", "jsonl", 0),
    PipelineConfig("(b) arrayrecord, threads", "arrayrecord", 0),
    PipelineConfig("(c) jsonl, 1 worker", "jsonl", 1),
    PipelineConfig("(c) jsonl, 2 workers", "jsonl", 2),
)
GROUPS = ((LLAVA, "dpo"), (LLAVA, "rdpo"), (TINY, "dpo"))  # (shapes, layout) measured


# -- the synthetic dataset ----------------------------------------------------------------------

SUBJECTS = ("a man", "a woman", "two children", "a brown dog", "a black cat", "a group of people", "a cyclist",
            "an elderly couple", "a young girl", "a waiter", "a skateboarder", "a herd of sheep")
ACTIONS = ("is standing next to", "is sitting on", "is walking towards", "is holding", "is looking at",
           "is leaning against", "is riding", "is playing near", "is carrying", "is resting beside")
OBJECTS = ("a wooden bench", "a red bicycle", "a large umbrella", "a white truck", "a kitchen counter",
           "a pile of books", "a fruit stand", "a stone wall", "a parked motorcycle", "a tall lamp post",
           "a plate of pasta", "a surfboard", "a green sofa", "a traffic light")
PLACES = ("in a busy street", "on a sunny beach", "in a small kitchen", "in a city park", "at a train station",
          "in a living room", "near a river", "in front of a cafe", "on a snowy hill", "in a crowded market")
DETAILS = ("The sky is overcast and the light is soft.", "Several cars are parked along the road.",
           "There are trees with yellow leaves in the background.", "A few plates and cups are on the table.",
           "The walls are painted a pale blue colour.", "People in the distance are waiting to cross.",
           "The ground is wet as if it had rained recently.", "A sign with red letters hangs above the door.")
QUESTIONS = ("Describe the image in detail.", "What is happening in this picture?",
             "What is the person in the image doing, and where are they?",
             "Can you describe the scene and the main objects in it?",
             "What objects can you see on the left side of the image?")


def photo(rng: np.random.Generator) -> Image.Image:
    """Smooth random content at four scales plus sensor-like noise: JPEGs of photo-like size."""
    width, height = PHOTO_SIZE
    pixels = np.full((height, width, 3), 128.0, np.float32)
    for cells, amplitude in ((4, 90), (16, 45), (64, 25), (256, 12)):
        coarse = rng.normal(0, 1, (cells * height // width, cells, 3)).astype(np.float32)
        pixels += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize(
            PHOTO_SIZE, Image.Resampling.BICUBIC)) for c in range(3)], axis=-1)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def answer(rng: np.random.Generator) -> str:
    """Three to five sentences, as detailed-description answers are."""
    first = (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)} "
             f"{rng.choice(PLACES)}.")
    second = f"Behind them, {rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)}."
    return " ".join([first, second, *rng.choice(DETAILS, size=int(rng.integers(1, 4)), replace=False)])


def write_dataset(folder: str, count: int, seed: int) -> tuple[str, float]:
    """`count` photos and one preference record per photo; the JSONL path and mean JPEG bytes."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    sizes = []
    for i in range(count):
        buffer = io.BytesIO()
        photo(rng).save(buffer, "JPEG", quality=90)
        sizes.append(buffer.tell())
        with open(os.path.join(folder, "images", f"{i:06d}.jpg"), "wb") as f:
            f.write(buffer.getvalue())
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as f:
        for i in range(count):
            chosen, rejected = answer(rng), answer(rng)
            other = (i + int(rng.integers(1, count))) % count
            f.write(json.dumps({"id": f"synthetic-{i}", "image": f"images/{i:06d}.jpg",
                                "question": str(rng.choice(QUESTIONS)), "chosen": chosen, "rejected": rejected,
                                "rejected_image": f"images/{other:06d}.jpg"}) + "\n")
    return path, float(np.mean(sizes))


# -- measuring ------------------------------------------------------------------------------------

def tokenizer_with_llava_template() -> Any:
    """The tests' Llama-like BPE with LLaVA-1.5's chat template."""
    from test_prompting import LLAVA_TEMPLATE, build_tokenizer

    return build_tokenizer(LLAVA_TEMPLATE)


def make_encoder(tokenizer: Any, shapes: Shapes, layout: str) -> ExampleEncoder:
    rows = RowLayout.for_objective(layout)
    return ExampleEncoder(tokenizer, shapes.processing, EncoderConfig(
        kinds=rows.kinds, num_images=rows.num_images, seq_len=shapes.seq_len,
        num_image_tokens=shapes.num_image_tokens))


@dataclasses.dataclass(frozen=True)
class Measurement:
    rate: float  # examples/s once warm
    start_s: float  # to the first batch: threads, or worker processes, starting
    close_s: float  # iterator.close(): threads and worker processes stopping


def examples_per_second(batches: Iterator[dict[str, Any]], batch_size: int, warmup: int,
                        min_seconds: float) -> float:
    """Steady-state rate: `warmup` batches first, then at least 3 batches and `min_seconds`."""
    for _ in range(warmup):
        next(batches)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < min_seconds:
        next(batches)
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def measure(source: Any, encoder: ExampleEncoder, workers: int, args: argparse.Namespace) -> Measurement:
    start = time.perf_counter()
    batches = iter(dataset(source, encoder, args.batch_size, seed=0, workers=workers))
    try:
        next(batches)
        first = time.perf_counter() - start
        rate = examples_per_second(batches, args.batch_size, warmup=2, min_seconds=args.seconds)
    finally:
        closing = time.perf_counter()
        batches.close()
    return Measurement(rate, first, time.perf_counter() - closing)


def mean_ms(fn: Callable[[int], Any], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return 1e3 * (time.perf_counter() - start) / count


def stage_costs(source: JsonlSource, encoder: ExampleEncoder, count: int) -> dict[str, float]:
    """ms per example of each stage, serially in this process (images and rows as the layout needs)."""
    records = [source[i] for i in range(count)]
    paths = [[r.image, r.rejected_image][: encoder.config.num_images] for r in records]
    decoded = [[image_ops.load_image(p) for p in ps] for ps in paths]
    stages: dict[str, Callable[[int], Any]] = {
        "read record": lambda i: source[i],
        "decode JPEG": lambda i: [image_ops.load_image(p) for p in paths[i]],
        "preprocess": lambda i: [image_ops.preprocess(image, encoder.processing) for image in decoded[i]],
        "tokenise rows": lambda i: [encoder.row(records[i], kind, "") for kind in encoder.config.kinds],
    }
    return {name: mean_ms(fn, count) for name, fn in stages.items()}


def train_step_seconds(steps: int) -> tuple[float, int, str]:
    """Seconds per step of the default config after compilation, its batch size, the backend."""
    import train_llava
    import jax

    from realign_jax.settings import runs as run_settings
    from realign_jax.train.batches import make_dataset
    from realign_jax.train.trainer import Trainer

    config = train_llava.get_config()
    settings = run_settings.load(config)
    trainer = Trainer(settings)
    state = trainer.init_state()
    host = next(iter(make_dataset(settings, trainer.model_config)))  # random pairs: plain arrays
    state, metrics = trainer.step(state, trainer.device_batch(host))  # compiles
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state, trainer.device_batch(host))
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, settings.train.batch_size, jax.default_backend()


# -- the run --------------------------------------------------------------------------------------

def make_sources(folder: str, count: int) -> dict[str, Any]:
    """The synthetic records as JSONL + images and as ArrayRecord shards."""
    start = time.perf_counter()
    path, jpeg_bytes = write_dataset(folder, count, seed=0)
    jsonl = JsonlSource(path)
    convert(jsonl, os.path.join(folder, "shards"), num_shards=2)
    print(f"dataset: {count} records, {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs of {jpeg_bytes / 1e3:.0f} KB on average, "
          f"written and converted in {time.perf_counter() - start:.0f} s")
    return {"jsonl": jsonl, "arrayrecord": ArrayRecordSource(os.path.join(folder, "shards"))}


def print_stage_costs(tokenizer: Any, source: JsonlSource, count: int) -> None:
    names = ("read record", "decode JPEG", "preprocess", "tokenise rows")
    print("\nstage costs, ms per example, serially on one core:")
    print(f"{'shapes':30s} {'layout':6s} " + " ".join(f"{name:>13s}" for name in names))
    for shapes, layout in GROUPS:
        costs = stage_costs(source, make_encoder(tokenizer, shapes, layout), count)
        print(f"{shapes.name:30s} {layout:6s} " + " ".join(f"{costs[name]:13.2f}" for name in names))


def print_throughput(tokenizer: Any, sources: dict[str, Any], configs: tuple[PipelineConfig, ...],
                     args: argparse.Namespace) -> dict[tuple[Shapes, str], float]:
    """The pipeline table; returns the best examples/s of each (shapes, layout)."""
    print(f"\n{'shapes':30s} {'layout':6s} {'config':26s} {'examples/s':>10s} {'ms/example':>10s} {'vs (a)':>6s} "
          f"{'start s':>7s} {'close s':>7s}")
    best: dict[tuple[Shapes, str], float] = {}
    for shapes, layout in GROUPS:
        encoder = make_encoder(tokenizer, shapes, layout)
        baseline = None
        for config in configs:
            m = measure(sources[config.source], encoder, config.workers, args)
            baseline = baseline or m.rate
            print(f"{shapes.name:30s} {layout:6s} {config.label:26s} {m.rate:10.1f} {1e3 / m.rate:10.1f} "
                  f"{m.rate / baseline:6.2f} {m.start_s:7.1f} {m.close_s:7.1f}", flush=True)
            best[shapes, layout] = max(best.get((shapes, layout), 0.0), m.rate)
    return best


def print_feeding(best: dict[tuple[Shapes, str], float], args: argparse.Namespace) -> None:
    step_seconds, step_batch, backend = train_step_seconds(args.steps)
    step_rate = step_batch / step_seconds
    pipeline = best[TINY, "dpo"]
    print(f"\ndefault train step (configs/train_llava.py: tiny random model, data.source=random, batch {step_batch}, "
          f"{backend}): {1e3 * step_seconds:.1f} ms = {step_rate:.1f} examples/s")
    print(f"best pipeline at that model's shapes ({TINY.name}, dpo): {pipeline:.1f} examples/s = "
          f"{pipeline / step_rate:.2f} x the step's: {'keeps' if pipeline >= step_rate else 'does NOT keep'} it fed "
          "(each measured alone; in a run they share the cores)")
    if args.step_seconds is None:
        print("LLaVA-1.5 shapes: pass --step_seconds (a measured step time for --batch_size examples) to see the "
              "examples/s a step needs")
        return
    needed = args.batch_size / args.step_seconds
    print(f"LLaVA-1.5 shapes: a step of {args.batch_size} examples in {args.step_seconds:g} s needs {needed:.1f} "
          "examples/s;")
    for layout in LAYOUTS:
        rate = best[LLAVA, layout]
        print(f"  {layout:5s} best pipeline {rate:.1f} examples/s = {rate / needed:.2f} x that")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256, help="photos and preference records generated")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per batch (the default config's)")
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per configuration")
    parser.add_argument("--steps", type=int, default=10, help="train steps timed after compilation")
    parser.add_argument("--step_seconds", type=float, default=None,
                        help="a LLaVA-1.5 train step's time (s) for --batch_size examples on this host")
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: 48 records, 1 s per configuration, 3 steps, no worker processes")
    args = parser.parse_args()
    configs = CONFIGS
    if args.quick:
        args.records, args.seconds, args.steps = 48, 1.0, 3
        configs = tuple(c for c in CONFIGS if not c.workers)

    print(f"{os.cpu_count()} CPU cores, batch {args.batch_size}, >= {args.seconds:g} s timed per configuration")
    tokenizer = tokenizer_with_llava_template()
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as folder:
        sources = make_sources(folder, args.records)
        print_stage_costs(tokenizer, sources["jsonl"], min(32, args.records))
        best = print_throughput(tokenizer, sources, configs, args)
    print_feeding(best, args)


if __name__ == "__main__":
    main()
