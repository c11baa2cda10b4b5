"""Training as two real `jax.distributed` processes on localhost (CPU, 2 devices each) logs the
same losses as one process with 4 devices, checkpoints, resumes and exports: the command a
pod slice or a SLURM job runs on every host."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_multiprocess_data import free_port, run_processes

from realign_jax.train.metrics_log import read

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/train_llava.py", "--config.train.steps=6", "--config.train.checkpoint_every=3",
        "--config.train.log_every=1", "--config.data.num_examples=32"]
TIMEOUT_S = 300


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
    return env


def _run_processes(workdir: str, log_dir: Path, name: str, count: int = 2) -> list[str]:
    """The training command as `count` jax.distributed processes with 2 CPU devices each."""
    port = free_port()
    command = [sys.executable, "-m", "realign_jax.main", f"--workdir={workdir}", *ARGS]
    envs = [_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(i))
            for i in range(count)]
    return run_processes([command] * count, envs, log_dir, name=name, cwd=REPO, timeout=TIMEOUT_S)


def _losses(workdir: str) -> list[float]:
    return [r["loss"] for r in read(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    single = str(tmp_path / "single")
    result = subprocess.run([sys.executable, "-m", "realign_jax.main", f"--workdir={single}", *ARGS], cwd=REPO,
                            capture_output=True, text=True, env=_env(4), timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / "multi")
    _run_processes(multi, tmp_path, "first")
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3", "6"]
    assert len(_losses(multi)) == 6
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=2e-5)
    exported = os.path.join(multi, "export", "model.safetensors")
    with open(exported, "rb") as f:
        weights = f.read()
    # Run again: both processes restore step 6 from the shared checkpoint and export the same model.
    outputs = _run_processes(multi, tmp_path, "again")
    assert all("resumed from checkpoint step 6" in out for out in outputs)
    with open(exported, "rb") as f:
        assert f.read() == weights


@pytest.mark.slow
def test_a_refusal_on_one_process_ends_every_process_with_its_line(tmp_path):
    """Process 0 refuses the work dir (checkpoints of another config); process 1, already in the
    run's first collective, exits within seconds with the same line instead of waiting ~100 s
    for the heartbeat timeout."""
    import time

    workdir = str(tmp_path / "run")
    first = subprocess.run([sys.executable, "-m", "realign_jax.main", f"--workdir={workdir}", *ARGS], cwd=REPO,
                           capture_output=True, text=True, env=_env(4), timeout=TIMEOUT_S)
    assert first.returncode == 0, first.stderr[-3000:]

    port = free_port()
    command = [sys.executable, "-m", "realign_jax.main", f"--workdir={workdir}", *ARGS, "--config.loss.beta=0.5"]
    logs = [tmp_path / f"refused{i}.log" for i in range(2)]
    processes = []
    for i, log in enumerate(logs):
        env = _env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        with open(log, "w") as f:
            processes.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT))
    exited = []
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT_S)
            exited.append(time.monotonic())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert exited[1] - exited[0] < 20, (exited, outputs)  # not the ~100 s heartbeat timeout
    message = "holds checkpoints of a run with a different config (loss.beta: 0.1 -> 0.5)"
    assert all(message in out and "Traceback" not in out for out in outputs), outputs
    assert "error: process 0: --workdir=" in outputs[1]  # process 1 names who refused
