"""The training loop behind `mode=train` and `mode=sft`: data -> step -> metrics + checkpoints.

It resumes from the newest checkpoint in `<workdir>/checkpoints` (parameters, optimiser,
step, RNG and the data iterator: Grain's, or the online rounds of train/online.py),
saves every `train.checkpoint_every` steps, at the end and when the process receives SIGTERM
(TPU preemption) or Ctrl-C, and exports the merged model in Hugging Face format at the end.
`train` reads as its phases: `_prepare` (build and restore), the step loop, `_finish`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
from typing import TYPE_CHECKING, Any

import jax
from tqdm import tqdm

from realign_jax.data import loader
from realign_jax.train.checkpoint import Checkpointer
from realign_jax.train.compile_notice import CompileNotice
from realign_jax.data.batching import BatchShape, shape_batch
from realign_jax.train.batches import batch_shape, make_dataset, side_files_folder, with_epochs_as_steps
from realign_jax.train.interrupts import StopRequests
from realign_jax.train.metrics_log import MetricsLog
from realign_jax.train.multihost import maybe_initialize_distributed
from realign_jax.settings.keys import as_dict
from realign_jax.settings.runs import TrainSettings, load
from realign_jax.train.trainer import Trainer
from realign_jax.train.workdir import QuietFullDisk, check_free_space, check_writable, claim, disk_full, is_disk_full

if TYPE_CHECKING:
    from realign_jax.train.online import RoundSampler


class NonFiniteSteps:
    """Counts the steps whose loss or gradient was not finite (the step left the parameters
    as they were) and applies train.on_nonfinite: 'skip' goes on until more than
    `max_consecutive` such steps come in a row, 'stop' ends the run at the first.

    A step's flag is read when the next step has been queued (`queue`), so the device never
    waits on the host; `check_pending` reads it at once where the loop syncs anyway (logging,
    saving)."""

    def __init__(self, policy: str, max_consecutive: int, checkpoints_dir: str):
        self.policy, self.max_consecutive, self.checkpoints_dir = policy, max_consecutive, checkpoints_dir
        self.total, self.consecutive = 0, 0
        self._pending: tuple[int, Any] | None = None  # (step, metrics) not checked yet

    def queue(self, step: int, metrics: dict[str, Any]) -> None:
        """Check the previous step, and hold this one until the next."""
        self.check_pending()
        self._pending = (step, metrics)

    def check_pending(self) -> None:
        if self._pending is not None:
            step, metrics = self._pending
            self._pending = None
            self._check(step, metrics)

    def _check(self, step: int, metrics: dict[str, Any]) -> None:
        if not float(metrics["nonfinite"]):
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.policy == "stop" or self.consecutive > self.max_consecutive:
            values = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v)) or "a gradient"
            why = ("train.on_nonfinite='stop'" if self.policy == "stop" else
                   f"{self.consecutive} non-finite steps in a row (train.max_consecutive_skips="
                   f"{self.max_consecutive})")
            raise FloatingPointError(
                f"step {step}: {bad} is not finite; its update was not applied. Stopped by {why}. The checkpoints "
                f"in {self.checkpoints_dir} hold only finite parameters: lower optim.lr, check the data near this "
                "step, or set train.on_nonfinite='skip'")

    def state(self) -> dict[str, int]:
        return {"total": self.total}

    def restore(self, state: dict[str, int]) -> None:
        self.total = int(state.get("total", 0))


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


class XlaProfile:
    """`--xla`: the first step's optimised HLO and memory analysis, and a trace of the steps
    [train.profile_start, train.profile_start + train.profile_steps)."""

    def __init__(self, enabled: bool, workdir: str, start: int, steps: int):
        self.enabled, self.workdir, self.start, self.steps = enabled, workdir, start, steps
        self.tracing = False

    def before_step(self, step: int) -> None:
        """`step` is the number of steps done so far."""
        if self.enabled and step + 1 == self.start:
            jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
            self.tracing = True

    def after_step(self, step: int, trainer: Trainer, state: Any, batch: Any, outputs: dict[str, Any]) -> None:
        if self.enabled and "xla" not in outputs:
            outputs["xla"] = _write_xla_artifacts(trainer.executable(state, batch), self.workdir)
        if self.tracing and step + 1 == self.start + self.steps:
            jax.block_until_ready(state)
            self.stop()
            outputs["profile"] = os.path.join(self.workdir, "profile")

    def stop(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False


class Throughput:
    """Tokens per second over the steps since the last log line (compiles left out)."""

    def __init__(self) -> None:
        self.tokens, self.start = 0.0, time.perf_counter()

    def add(self, host_batch: dict[str, Any]) -> None:
        self.tokens += float(host_batch["attention_mask"].sum()) * jax.process_count()

    def leave_out(self, seconds: float) -> None:
        """Take a compile's time out of the current window."""
        self.start += seconds

    def take(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.start, 1e-9)
        self.tokens, self.start = 0.0, now
        return rate


@dataclasses.dataclass
class _Run:
    """What the loop works with, once built and (on resume) restored."""

    settings: TrainSettings
    trainer: Trainer
    state: Any
    iterator: Any
    shape: BatchShape  # how each host batch is bucketed or packed
    checkpoints: Checkpointer
    bad_records: loader.BadRecordCounter
    nonfinite: NonFiniteSteps
    bytes_written: int  # what the checkpoints and the export take on disk (the work dir's check)

    def data_state(self) -> dict[str, Any]:
        """What a checkpoint keeps beside the train state."""
        return {"iterator": self.iterator.get_state(), "skipped": self.bad_records.state(),
                "nonfinite": self.nonfinite.state()}


def _prepare(settings: TrainSettings, workdir: str, overwrite: bool, online_sampler: RoundSampler | None) -> _Run:
    """Work dir, train state, data and checkpoints; restored from the newest checkpoint when
    there is one."""
    maybe_initialize_distributed()
    check_writable(workdir)
    if jax.process_index() == 0:
        claim(workdir, as_dict(settings), overwrite)
    checkpoints_dir = os.path.join(workdir, "checkpoints")
    trainer = Trainer(settings)
    state = trainer.init_state()
    bytes_written = trainer.bytes_written(state, settings.train.keep_checkpoints, settings.train.export)
    check_free_space(workdir, bytes_written)
    if settings.online:
        from realign_jax.train.online import OnlineBatches

        # The lambda reads the run's state when a round starts: the policy as trained up to then.
        iterator = OnlineBatches(settings, trainer.model_config, workdir,
                                 lambda: trainer.policy(run.state), online_sampler)
    else:
        iterator = iter(make_dataset(settings, trainer.model_config))
    run = _Run(settings, trainer, state, iterator,
               batch_shape(settings, trainer.model_config, trainer.packed_row_multiple()),
               Checkpointer(checkpoints_dir, settings.train.checkpoint_every, settings.train.keep_checkpoints,
                            trainer.bytes_written(state, 0, False)),
               loader.BadRecordCounter(),
               NonFiniteSteps(settings.train.on_nonfinite, settings.train.max_consecutive_skips, checkpoints_dir),
               bytes_written)
    if run.checkpoints.latest_step() is not None:
        run.state, data_state = run.checkpoints.restore(run.state)
        run.iterator.set_state(data_state["iterator"])
        run.bad_records.restore(data_state["skipped"])
        run.nonfinite.restore(data_state.get("nonfinite", {}))
        print(f"resumed from checkpoint step {int(run.state.step)} in {checkpoints_dir}", flush=True)
    return run


def _log_line(run: _Run, metrics: Any, throughput: Throughput) -> dict[str, float]:
    """The metrics of a log step, fetched from the device, with the loop's own counters."""
    run.nonfinite.check_pending()  # the metrics are fetched here anyway
    line = {k: float(v) for k, v in jax.device_get(metrics).items()}
    line["tokens_per_sec"] = throughput.take()
    line["data/skipped"] = float(run.bad_records.total)
    line["train/skipped_nonfinite"] = float(run.nonfinite.total)
    return line


def _epoch_done(epoch: int, counter: loader.BadRecordCounter, read_ahead: collections.Counter) -> str | None:
    """The line saying what the epochs up to `epoch` skipped (None when nothing), leaving out
    the skips the batch that crossed into the next epoch met there."""
    skipped = counter.counts - read_ahead
    if not skipped:
        return None
    return (f"epoch {epoch} done: {sum(skipped.values())} bad records skipped so far {dict(skipped)}, "
            f"e.g. {counter.examples[0]}")


def _finish(run: _Run, workdir: str, step: int, outputs: dict[str, Any]) -> None:
    """After the last step: every save done, a run that never updated refused, the export."""
    run.checkpoints.wait()
    run.nonfinite.check_pending()
    if step and run.nonfinite.total >= step:  # skip let every step through without its update
        raise FloatingPointError(
            f"none of the {step} steps had a finite loss and gradient, so no update was applied and nothing "
            "is exported: check the config's numbers (loss.beta, optim.lr) and the data (ref_logps)")
    if step == run.settings.train.steps and run.settings.train.export:
        outputs["export"] = os.path.join(workdir, "export")
        # The tokenizer and processor files the run read travel with the weights.
        run.trainer.export(run.state, outputs["export"], copy_side_files_from=side_files_folder(run.settings) or None)


def train(config: TrainSettings | Any, workdir: str, *, xla: bool = False, stop_after: int | None = None,
          overwrite: bool = False, online_sampler: RoundSampler | None = None) -> dict[str, Any]:
    """Run (or resume) training on `config`'s settings (a ConfigDict is loaded and checked first);
    returns the last logged metrics and the output paths.

    `stop_after` ends the run early after that step with a checkpoint, as a preemption would.
    `overwrite` deletes the checkpoints of a different config in `workdir` instead of refusing.
    `online_sampler` writes the rounds when `online_bdhs.every` or `online_dpo.every` is set
    (main.train passes the method's, from pairs/).
    """
    run = _prepare(with_epochs_as_steps(load(config)), workdir, overwrite, online_sampler)
    settings, trainer = run.settings, run.trainer
    step = int(run.state.step)
    log = MetricsLog(workdir, resume_step=step)
    stop_requests = StopRequests()
    profile = XlaProfile(xla, workdir, settings.train.profile_start, settings.train.profile_steps)
    throughput = Throughput()
    outputs: dict[str, Any] = {"workdir": workdir, "resumed_from": step or None}
    last: dict[str, float] = {}
    epoch = 0
    bar = tqdm(total=settings.train.steps, initial=step, desc=settings.objective, unit="step",
               disable=jax.process_index() != 0)
    quiet = QuietFullDisk(workdir)
    quiet.install()
    full = False
    try:
        while step < settings.train.steps:
            # The next batch, its skipped records counted (and reported when an epoch ends).
            raw = next(run.iterator)
            host_batch = shape_batch(loader.take_bad_records(raw, run.bad_records), run.shape)
            if getattr(raw, "epoch", epoch) > epoch:
                line = _epoch_done(epoch, run.bad_records, loader.read_ahead(raw, raw.epoch))
                if line:
                    bar.write(line)
                epoch = raw.epoch
            batch = trainer.device_batch(host_batch)

            # The step (compiled first for a new batch shape); its finiteness is read once the
            # next one is queued.
            if not trainer.is_compiled(batch):
                shape = tuple(batch["input_ids"].shape)
                with CompileNotice(bar, f"the {settings.objective} step for input_ids {shape}") as notice:
                    trainer.compile_step(run.state, batch)
                throughput.leave_out(notice.seconds)
            profile.before_step(step)
            run.state, metrics = trainer.step(run.state, batch)
            step += 1
            run.nonfinite.queue(step, metrics)
            profile.after_step(step, trainer, run.state, batch, outputs)
            throughput.add(host_batch)

            # Metrics, then a checkpoint when due, asked for (SIGTERM, Ctrl-C) or at the end.
            if step % settings.train.log_every == 0 or step == settings.train.steps:
                last = _log_line(run, metrics, throughput)
                log.write(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_sec']:.0f}")
            bar.update(1)
            stopping = stop_requests.requested is not None or (stop_after is not None and step >= stop_after)
            if stopping or step == settings.train.steps or run.checkpoints.due(step):
                run.nonfinite.check_pending()
                trainer.check_finite(run.state, step)
                run.checkpoints.save(step, run.state, run.data_state())
            if stopping:
                outputs["stopped_at"] = step
                break
        _finish(run, workdir, step, outputs)
    except Exception as error:
        if not is_disk_full(error):
            raise
        full = True  # a save, the metrics or the export hit a full disk: one line, below
    finally:
        profile.stop()
        bar.close()
        run.iterator.close()  # stops Grain's read-ahead threads and worker processes
        stop_requests.restore()
        for closing in (run.checkpoints.close, log.close):  # each ends even when a full disk failed the other
            try:
                closing()
            except Exception as error:
                if not is_disk_full(error):
                    raise
                full = True
        if not full:  # after a full disk, the failed save's threads keep reporting until the process ends
            quiet.remove()
    if full:
        raise disk_full(workdir, run.bytes_written, run.checkpoints.latest_step()) from None
    if run.bad_records.total:
        outputs["skipped_records"] = dict(run.bad_records.counts)
    outputs["metrics"] = last
    outputs["step"] = step
    return outputs
