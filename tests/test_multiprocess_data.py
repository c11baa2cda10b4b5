"""A real two-process `jax.distributed` job on localhost (CPU, 2 devices per process, 4 in all):
each process runs the JSONL pipeline on its shard and turns every batch into global arrays
sharded over all 4 devices, as the trainer does. The test checks that in every epoch the
processes read disjoint records that together cover the dataset, that each epoch is
reshuffled, and that the global arrays hold both processes' rows.

The worker is this file run as a script (the `__main__` part at the bottom). Every record
carries its own index in `ref_logps`, so each row of a batch says which record it came from.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image
from test_prompting import LLAVA_TEMPLATE, build_tokenizer

from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.images import ImageProcessing
from realign_jax.data.loader import dataset
from realign_jax.data.prompting import load_tokenizer
from realign_jax.data.sources import JsonlSource

PROCESSES, DEVICES_PER_PROCESS = 2, 2
NUM_RECORDS, GLOBAL_BATCH, EPOCHS, SEED = 12, 4, 3, 5
STEPS_PER_EPOCH = NUM_RECORDS // GLOBAL_BATCH  # each process: 6 records an epoch, 2 a batch
KEYS = ("ref_logps", "input_ids", "pixel_values")  # the batch keys compared across processes
TIMEOUT_S = 120


# -- the worker: one process of the job ----------------------------------------------------------

def worker(process_id: int, port: int, data_path: str, tokenizer_dir: str, out_dir: str) -> None:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=PROCESSES,
                               process_id=process_id)
    assert jax.process_count() == PROCESSES and jax.device_count() == PROCESSES * DEVICES_PER_PROCESS
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    config = EncoderConfig(kinds=("chosen", "rejected"), num_images=1, seq_len=64, num_image_tokens=16)
    encoder = ExampleEncoder(load_tokenizer(tokenizer_dir), ImageProcessing(size=64, shortest_edge=64), config)
    batches = dataset(JsonlSource(data_path), encoder, GLOBAL_BATCH, seed=SEED,
                      shard_index=jax.process_index(), shard_count=jax.process_count())

    epochs: list[list[int]] = [[] for _ in range(EPOCHS)]
    arrays: dict[str, list[np.ndarray]] = {f"{key}/{part}": [] for key in KEYS for part in ("local", "global")}
    for step, batch in zip(range(EPOCHS * STEPS_PER_EPOCH), batches):
        epochs[step // STEPS_PER_EPOCH] += record_indices(batch["ref_logps"])
        for key in KEYS:
            global_array = jax.make_array_from_process_local_data(sharding, batch[key])
            assert global_array.shape == (GLOBAL_BATCH, *batch[key].shape[1:]), global_array.shape
            arrays[f"{key}/local"].append(batch[key])
            arrays[f"{key}/global"].append(np.asarray(multihost_utils.process_allgather(global_array, tiled=True)))

    out = Path(out_dir)
    (out / f"indices{process_id}.json").write_text(json.dumps({"epochs": epochs}))
    np.savez(out / f"batches{process_id}.npz", **{name: np.stack(parts) for name, parts in arrays.items()})
    jax.distributed.shutdown()


def record_indices(ref_logps: np.ndarray) -> list[int]:
    assert (ref_logps[:, 0] == ref_logps[:, 1]).all(), ref_logps
    return [int(i) for i in ref_logps[:, 0]]


# -- the test ------------------------------------------------------------------------------------

def write_records(folder: Path) -> str:
    """NUM_RECORDS records, each with its own image and its index as its reference log-probs."""
    lines = []
    for i in range(NUM_RECORDS):
        Image.new("RGB", (40 + 2 * i, 30), (20 * i, 240 - 20 * i, 90)).save(folder / f"img{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "image": f"img{i}.png", "question": "What is in the picture?",
                                 "chosen": "A red cat sits on a mat.", "rejected": "There is no dog.",
                                 "ref_logps": {"chosen": i, "rejected": i}}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], envs: list[dict[str, str]], log_dir: Path, name: str = "worker",
                  cwd: str | None = None, timeout: float = TIMEOUT_S) -> list[str]:
    """Starts the processes, stops them all once one fails or time runs out, and fails the
    test with every process's output if any did not exit cleanly; returns their outputs."""
    logs = [log_dir / f"{name}{i}.log" for i in range(len(commands))]
    procs = []
    for command, env, log in zip(commands, envs, logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(command, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break  # the others would wait for it until their own timeouts
            time.sleep(0.1)
    finally:
        stopped = [p.poll() is None for p in procs]
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    if any(p.returncode != 0 for p in procs):
        report = [f"the {len(procs)}-process job failed (limit {timeout} s):"]
        for i, (p, was_stopped, log) in enumerate(zip(procs, stopped, logs)):
            how = "stopped by the test" if was_stopped else f"exit {p.returncode}"
            report.append(f"--- {name} {i} ({how}) ---\n{log.read_text()[-6000:]}")
        pytest.fail("\n".join(report), pytrace=False)
    return [log.read_text() for log in logs]


def run_workers(args: list[str], log_dir: Path) -> None:
    """This file's worker as PROCESSES processes with DEVICES_PER_PROCESS CPU devices each."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"}
    run_processes([[sys.executable, __file__, str(i), *args] for i in range(PROCESSES)], [env] * PROCESSES, log_dir)


def test_two_processes_read_disjoint_shards_and_build_global_batches(tmp_path):
    build_tokenizer(LLAVA_TEMPLATE).save_pretrained(tmp_path / "tokenizer")
    data_path = write_records(tmp_path)
    run_workers([str(free_port()), data_path, str(tmp_path / "tokenizer"), str(tmp_path)], tmp_path)

    epochs = [json.loads((tmp_path / f"indices{i}.json").read_text())["epochs"] for i in range(PROCESSES)]
    for epoch in range(EPOCHS):
        first, second = epochs[0][epoch], epochs[1][epoch]
        assert len(first) == len(second) == NUM_RECORDS // PROCESSES, (epoch, first, second)
        assert not set(first) & set(second), f"epoch {epoch}: both processes read {set(first) & set(second)}"
        assert sorted(first + second) == list(range(NUM_RECORDS)), (epoch, first, second)
    for process, order in enumerate(epochs):
        for epoch in range(1, EPOCHS):
            assert order[epoch] != order[epoch - 1], f"process {process}: epoch {epoch} repeats the order"

    # Every process sees the same global batches: process 0's rows, then process 1's.
    arrays = [np.load(tmp_path / f"batches{i}.npz") for i in range(PROCESSES)]
    for key in KEYS:
        parts = [a[f"{key}/local"] for a in arrays]
        assert all(p.shape[:2] == (EPOCHS * STEPS_PER_EPOCH, GLOBAL_BATCH // PROCESSES) for p in parts)
        expected = np.concatenate(parts, axis=1)
        for process, a in enumerate(arrays):
            np.testing.assert_array_equal(a[f"{key}/global"], expected, err_msg=f"{key}, seen by process {process}")
    # ... and the rows are distinct examples (the pixels differ with the record).
    pixels = arrays[0]["pixel_values/global"]
    assert all(len({row.tobytes() for row in step}) == GLOBAL_BATCH for step in pixels)


if __name__ == "__main__":
    try:
        worker(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6])
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # at a normal exit, jax's shutdown hook would wait for the other process
