"""Kill a training run at random moments, restart it each time, and check that it ends where a
run never interrupted ends: the same logged metrics at every step and the same exported weights.

    python benchmarks/kill_resume.py --kills 50                      # the documented size
    python benchmarks/kill_resume.py --kills 3 --steps 40 --checkpoint-every 5 --seed 1  # CI's

Four kinds of interruption take turns:
- `random`: SIGKILL at a random moment while steps run (also during the final export);
- `mid-save`: SIGKILL as soon as a new Orbax temporary folder (`<step>.orbax-checkpoint-tmp`)
  appears, so the asynchronous save never completes. A kill that lands after the save
  finished is reported and redone;
- `sigterm`: a preemption notice: the run must save a checkpoint and exit 0 within
  `sigterm_limit` seconds;
- `sigint`: Ctrl-C, which must do the same.

After each interruption the harness notes the complete checkpoints on disk and the partial
saves, restarts the same command, and reads the step the restart resumed from (its
`resumed from checkpoint step N` line). A restart must resume from the newest complete
checkpoint, never from a partial one. The run is the tiny random LLaVA of
configs/train_llava.py on the Grain random-pairs source, checkpointing every few steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("random", "mid-save", "sigterm", "sigint")
SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}  # the kinds that ask the run to stop
IGNORED_METRICS = ("tokens_per_sec",)  # wall-clock figures differ between any two runs


@dataclasses.dataclass
class Interruption:
    kind: str
    at_step: int  # last step logged before the signal
    partial_saves: list[str]  # Orbax temporary folders on disk after the process died
    complete: list[int]  # complete checkpoints on disk after the process died
    resumed_from: int | None = None  # step the restart continued from (0: from scratch)
    exit_seconds: float | None = None  # sigterm and sigint: signal -> exit
    returncode: int | None = None


def command(workdir: str, steps: int, checkpoint_every: int) -> list[str]:
    return [sys.executable, "-m", "realign_jax.main", "--config=configs/train_llava.py", f"--workdir={workdir}",
            f"--config.train.steps={steps}", f"--config.train.checkpoint_every={checkpoint_every}",
            "--config.train.log_every=1", "--config.data.num_examples=24", "--config.train.keep_checkpoints=3"]


def _logged(workdir: str) -> list[dict]:
    from realign_jax.train.metrics_log import read

    path = os.path.join(workdir, "metrics.jsonl")
    return read(path) if os.path.exists(path) else []


def _last_step(workdir: str) -> int:
    logged = _logged(workdir)
    return logged[-1]["step"] if logged else 0


def _checkpoints(workdir: str) -> tuple[list[int], list[str]]:
    folder = os.path.join(workdir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if "tmp" in n)


def _partial_identities(workdir: str) -> set[tuple[str, int]]:
    """(name, creation time) of the partial saves: a step saved again after a kill reuses the name."""
    identities = set()
    for name in _checkpoints(workdir)[1]:
        try:
            identities.add((name, os.stat(os.path.join(workdir, "checkpoints", name)).st_ctime_ns))
        except FileNotFoundError:  # finished (renamed) or cleaned up meanwhile
            pass
    return identities


def _start(args: list[str], log: str) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own handle
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)


def _resumed_from(log: str) -> int:
    """The step a (re)started run restored, from its 'resumed from checkpoint step N' line (0: none)."""
    with open(log) as f:
        found = re.search(r"resumed from checkpoint step (\d+)", f.read())
    return int(found.group(1)) if found else 0


def _tail(log: str) -> str:
    with open(log) as f:
        return f.read()[-3000:]


def _interrupt(args: list[str], workdir: str, log: str, kind: str, rng: random.Random, steps: int, left: int,
               timeout: float) -> Interruption | None:
    """Start the run and interrupt it once; None when it finished before the moment came. The
    moment is spread so that `left` more interruptions fit in the steps that remain."""
    stale = _partial_identities(workdir)  # partial saves of earlier kills (the restart removes them)
    process = _start(args, log)
    start_step = _last_step(workdir)
    target = start_step + rng.randint(1, max(1, (steps - start_step) // (left + 1)))
    deadline = time.time() + timeout
    sent = None
    while process.poll() is None and time.time() < deadline:
        if kind == "mid-save":
            if _partial_identities(workdir) - stale and _last_step(workdir) > start_step:
                process.kill()
                break
        elif _last_step(workdir) >= target:
            time.sleep(rng.uniform(0.0, 0.05))  # anywhere inside the following step
            if kind in SIGNALS:
                sent = time.time()
                process.send_signal(SIGNALS[kind])
            else:
                process.kill()
            break
        time.sleep(0.002)
    at_step = _last_step(workdir)
    process.wait(timeout=timeout)
    if sent is None and process.returncode == 0:
        return None  # finished before the moment came
    complete, partial = _checkpoints(workdir)
    event = Interruption(kind, at_step, partial, complete, returncode=process.returncode)
    if sent is not None:
        event.exit_seconds = time.time() - sent
        if process.returncode != 0:
            raise RuntimeError(f"{kind} at step {at_step}: exit code {process.returncode}\n{_tail(log)}")
    return event


def run(kills: int, steps: int = 200, checkpoint_every: int = 7, seed: int = 0, sigterm_limit: float = 60.0,
        timeout: float = 600.0, keep: str | None = None) -> dict:
    """Returns the interruptions and the comparison with an uninterrupted run."""
    rng = random.Random(seed)
    root = keep or tempfile.mkdtemp(prefix="kill_resume_")
    os.makedirs(root, exist_ok=True)
    reference, interrupted = os.path.join(root, "reference"), os.path.join(root, "interrupted")
    for folder in (reference, interrupted):
        shutil.rmtree(folder, ignore_errors=True)
    started = time.time()
    reference_log = os.path.join(root, "reference.log")
    if _start(command(reference, steps, checkpoint_every), reference_log).wait(timeout=timeout):
        raise RuntimeError(f"the uninterrupted run failed:\n{_tail(reference_log)}")
    args = command(interrupted, steps, checkpoint_every)
    events: list[Interruption] = []
    done = 0  # interruptions of the planned kinds; a mid-save kill that came after the save finished is redone
    for attempt in range(3 * kills):
        if done == kills:
            break
        log = os.path.join(root, f"interrupted-{attempt}.log")
        event = _interrupt(args, interrupted, log, KINDS[done % len(KINDS)], rng, steps, kills - done, timeout)
        if events and events[-1].resumed_from is None:
            events[-1].resumed_from = _resumed_from(log)
        if event is None:
            break  # this start ran to the end
        events.append(event)
        done += event.kind != "mid-save" or bool(event.partial_saves)
    else:
        raise RuntimeError(f"{kills} interruptions did not fit in {3 * kills} starts")
    if events and events[-1].resumed_from is None:  # the last interruption: restart once more to the end
        log = os.path.join(root, "interrupted-last.log")
        if _start(args, log).wait(timeout=timeout):
            raise RuntimeError(f"the last restart failed:\n{_tail(log)}")
        events[-1].resumed_from = _resumed_from(log)
    return _compare(reference, interrupted, events, steps, time.time() - started, sigterm_limit)


def _compare(reference: str, interrupted: str, events: list[Interruption], steps: int, seconds: float,
             sigterm_limit: float) -> dict:
    def losses(workdir: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in IGNORED_METRICS} for r in _logged(workdir)]

    def weights(workdir: str) -> bytes:
        with open(os.path.join(workdir, "export", "model.safetensors"), "rb") as f:
            return f.read()

    return {
        "interruptions": [dataclasses.asdict(e) for e in events],
        "kinds": {kind: sum(e.kind == kind for e in events) for kind in KINDS},
        "mid_save_kills_with_partial_checkpoint": sum(bool(e.partial_saves) for e in events if e.kind == "mid-save"),
        "mid_save_kills_after_the_save_finished": sum(not e.partial_saves for e in events if e.kind == "mid-save"),
        "resumed_from_newest_complete": all(e.resumed_from == max(e.complete, default=0) for e in events),
        "sigterm_exits_within_limit": all(e.exit_seconds < sigterm_limit for e in events if e.kind == "sigterm"),
        "sigint_exits_within_limit": all(e.exit_seconds < sigterm_limit for e in events if e.kind == "sigint"),
        "slowest_signal_exit_seconds": max((round(e.exit_seconds, 1) for e in events if e.kind in SIGNALS),
                                           default=None),
        "same_logged_metrics": losses(reference) == losses(interrupted),
        "logged_steps": len(losses(interrupted)),
        "same_exported_weights": weights(reference) == weights(interrupted),
        "steps": steps,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    report = run(args.kills, args.steps, args.checkpoint_every, args.seed, keep=args.keep)
    for event in report["interruptions"]:
        print(f"{event['kind']:>8} after step {event['at_step']:>4}: complete checkpoints {event['complete']}, "
              f"partial {event['partial_saves'] or '-'}, resumed from {event['resumed_from']}"
              + (f", exited {event['exit_seconds']:.1f} s after the signal" if event["exit_seconds"] else ""))
    summary = {k: v for k, v in report.items() if k != "interruptions"}
    planned = sum(report["kinds"].values()) - report["mid_save_kills_after_the_save_finished"]
    if planned < args.kills:
        print(f"the run reached its last step after {planned} of {args.kills} interruptions: give it more --steps")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
