"""The training loop behind `mode=train` and `mode=sft`: data -> step -> metrics + checkpoints.

It resumes from the newest checkpoint in `<workdir>/checkpoints` (parameters, optimiser,
step, RNG and the data iterator), saves every `train.checkpoint_every` steps, at the end and
when the process receives SIGTERM (TPU preemption), and exports the merged model in
Hugging Face format at the end.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
from tqdm import tqdm

from realign_jax.data import images as image_ops
from realign_jax.data import pipeline, prompting, random_pairs
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.sources import JsonlSource
from realign_jax.models.config import LlavaConfig
from realign_jax.train.checkpoint import Checkpointer
from realign_jax.train.metrics_log import MetricsLog
from realign_jax.train.settings import TrainSettings, parse
from realign_jax.train.trainer import Trainer

def make_dataset(data: Any, settings: TrainSettings, model: LlavaConfig,
                 counter: pipeline.BadRecordCounter | None = None) -> Any:
    """The batches of this process for the configured source (`settings.parse` checked its name)."""
    if data.source == "jsonl":
        return _jsonl_dataset(data, settings, model, counter)
    spec = random_pairs.RandomPairsSpec(
        kinds=settings.layout.kinds, num_images=settings.layout.num_images, seq_len=data.seq_len,
        vocab_size=model.text.vocab_size, image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens, image_size=model.vision.image_size,
        num_examples=data.num_examples, seed=data.seed)
    return random_pairs.dataset(spec, settings.batch_size, shard_index=jax.process_index(),
                                shard_count=jax.process_count())


def _jsonl_dataset(data: Any, settings: TrainSettings, model: LlavaConfig,
                   counter: pipeline.BadRecordCounter | None) -> Any:
    folder = data.tokenizer or settings.model.get("path")
    if not folder:
        raise ValueError("data.source='jsonl' needs a tokenizer: set data.tokenizer or model.path")
    tokenizer = prompting.load_tokenizer(folder)
    image_id = tokenizer.convert_tokens_to_ids(prompting.IMAGE_PLACEHOLDER)
    if image_id != model.image_token_id:
        raise ValueError(f"data.tokenizer={folder!r}: '{prompting.IMAGE_PLACEHOLDER}' is token {image_id} but the "
                         f"model's image_token_id is {model.image_token_id}")
    spec = image_ops.ImageSpec.for_checkpoint(folder, model.vision.image_size)
    source = JsonlSource(data.path, data.image_root or None)
    encoder = ExampleEncoder(tokenizer, spec, EncoderConfig(
        kinds=settings.layout.kinds, num_images=settings.layout.num_images, seq_len=data.seq_len,
        num_image_tokens=model.num_image_tokens, truncation=data.truncation))
    return pipeline.dataset(source, encoder, settings.batch_size, seed=data.seed, on_bad_record=data.on_bad_record,
                            counter=counter, shard_index=jax.process_index(), shard_count=jax.process_count())


def maybe_initialize_distributed() -> None:
    """Join the other processes of a multi-host run (TPU pod slice, SLURM, or an explicit
    coordinator); a single process does nothing."""
    markers = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")
    multi = os.environ.get("JAX_COORDINATOR_ADDRESS") or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") \
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if multi and any(m in os.environ for m in markers):
        jax.distributed.initialize()


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _write_xla_artifacts(compiled: Any, workdir: str) -> list[str]:
    directory = os.path.join(workdir, "xla")
    os.makedirs(directory, exist_ok=True)
    hlo = os.path.join(directory, "train_step.optimized_hlo.txt")
    with open(hlo, "w") as f:
        f.write(compiled.as_text())
    memory = os.path.join(directory, "train_step.memory.txt")
    with open(memory, "w") as f:
        f.write(str(compiled.memory_analysis()) + "\n")
    return [hlo, memory]


def train(config: Any, workdir: str, *, xla: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the last logged metrics and the output paths.

    `stop_after` ends the run early after that step with a checkpoint, as a preemption would.
    """
    settings = parse(config)
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    trainer = Trainer(settings)
    state = trainer.init_state()
    bad_records = pipeline.BadRecordCounter()
    iterator = iter(make_dataset(config.data, settings, trainer.model_config, bad_records))
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), settings.checkpoint_every,
                               settings.keep_checkpoints)
    if checkpoints.latest_step() is not None:
        state, data_state = checkpoints.restore(state)
        iterator.set_state(data_state)
    step = int(state.step)
    log = MetricsLog(workdir, resume_step=step)
    preemption = _Preemption()
    outputs: dict[str, Any] = {"workdir": workdir, "resumed_from": step or None}
    last: dict[str, float] = {}
    profiling = False
    window_tokens, window_start = 0.0, time.perf_counter()
    bar = tqdm(total=settings.steps, initial=step, desc=settings.objective, unit="step",
               disable=jax.process_index() != 0)
    try:
        while step < settings.steps:
            host_batch = next(iterator)
            batch = trainer.device_batch(host_batch)
            if xla and step + 1 == settings.profile_start:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
                profiling = True
            state, metrics = trainer.step(state, batch)
            step += 1
            if xla and "xla" not in outputs:
                outputs["xla"] = _write_xla_artifacts(trainer._compiled, workdir)
            if profiling and step + 1 == settings.profile_start + settings.profile_steps:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profiling = False
                outputs["profile"] = os.path.join(workdir, "profile")
            window_tokens += float(host_batch["attention_mask"].sum()) * jax.process_count()
            if step % settings.log_every == 0 or step == settings.steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                # The first window after a (re)start includes compilation.
                last["tokens_per_sec"] = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0.0, now
                last["data/skipped"] = float(bad_records.total)
                log.write(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_sec']:.0f}")
            bar.update(1)
            stopping = preemption.requested or (stop_after is not None and step >= stop_after)
            if stopping or step == settings.steps or checkpoints.due(step):
                checkpoints.save(step, state, iterator.get_state())
            if stopping:
                outputs["stopped_at"] = step
                break
        checkpoints.wait()
        if step == settings.steps and settings.export:
            outputs["export"] = os.path.join(workdir, "export")
            trainer.export(state, outputs["export"], copy_side_files_from=settings.model.get("path") or None)
    finally:
        if profiling:
            jax.profiler.stop_trace()
        bar.close()
        preemption.restore()
        checkpoints.close()
        log.close()
    if bad_records.total:
        outputs["skipped_records"] = dict(bad_records.counts)
    outputs["metrics"] = last
    outputs["step"] = step
    return outputs
