"""The work dir is checked before training: writable, room for what the run writes, and its
checkpoints from this config (or --overwrite)."""

import os
import re
import subprocess
import sys
import uuid

import pytest

from realign_jax.train.loop import train
from realign_jax.train.workdir import check_free_space, check_writable
from test_train import REPO, small_config


def _config(**overrides):
    config = small_config("dpo", **{"train__steps": 2, "train__checkpoint_every": 1, **overrides})
    config.train.export = False
    return config


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real tmpfs of the given size and options; skipped where mounting is not allowed."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> str:
        target = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return str(target)

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_a_workdir_that_is_a_file_is_refused_at_once(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write there"):
        train(_config(), str(tmp_path / "taken" / "run"))


def test_a_read_only_disk_is_refused_before_anything_is_built(tiny_filesystem):
    folder = tiny_filesystem("1m", read_only=True)
    with pytest.raises(ValueError, match=r"--workdir=.*cannot write there \(Read-only file system\)"):
        check_writable(os.path.join(folder, "run"))


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_the_first_step(tiny_filesystem):
    folder = tiny_filesystem("64k")
    with pytest.raises(ValueError, match=r"[\d.]+ KiB free on its disk, but this run writes about [\d.]+ KiB"):
        train(_config(), os.path.join(folder, "run"))
    assert not os.path.exists(os.path.join(folder, "run", "checkpoints"))


def test_free_space_is_compared_with_the_real_disk(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    check_free_space(str(tmp_path), free // 2)
    with pytest.raises(ValueError, match="free on its disk"):
        check_free_space(str(tmp_path), free + (1 << 30))


def test_checkpoints_of_another_config_are_refused_unless_overwritten(tmp_path):
    workdir = str(tmp_path)
    train(_config(), workdir)
    with pytest.raises(ValueError, match=r"different config \(loss.beta: 0.1 -> 0.5\).*--overwrite"):
        train(_config(loss__beta=0.5), workdir)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]  # nothing was deleted
    # Extending the run, or logging differently, is the same run: it resumes.
    assert train(_config(train__steps=3, train__log_every=2), workdir)["resumed_from"] == 2
    fresh = train(_config(loss__beta=0.5), workdir, overwrite=True)
    assert fresh["resumed_from"] is None and fresh["step"] == 2


def _fill(folder: str) -> str:
    """A file taking every byte left on `folder`'s disk at once (fallocate), then any crumbs."""
    import shutil

    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as f:
        os.posix_fallocate(f.fileno(), 0, max(shutil.disk_usage(folder).free - (1 << 16), 0))
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:  # full
            pass
    return path


def test_a_disk_that_fills_during_the_run_ends_in_one_line_and_keeps_the_last_checkpoint(tiny_filesystem):
    """The disk fills after the first checkpoint: the run stops with one line naming the work
    dir, the space the run needs and the checkpoint kept (the next save does not start without
    room, the metrics' failed writes are reported once); once space is freed the same command
    resumes from that checkpoint and finishes."""
    import time

    folder = tiny_filesystem("64m")
    workdir = os.path.join(folder, "run")
    command = [sys.executable, "-m", "realign_jax.main", "--config=configs/train_llava.py", f"--workdir={workdir}",
               "--config.train.steps=120", "--config.train.checkpoint_every=40", "--config.train.export=False"]
    log = os.path.join(os.path.dirname(folder), "stderr.txt")  # a file: a pipe nobody reads fills and blocks the run
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
    first = os.path.join(workdir, "checkpoints", "40")
    deadline = time.time() + 240
    while not os.path.isdir(first) and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(0.5)  # the save's last metadata written: the disk fills 40 steps before the next save
    filler = _fill(folder)
    process.wait(timeout=240)
    with open(log) as f:
        stderr = f.read()
    assert process.returncode == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert f"--workdir={workdir}: the disk filled during the run" in lines[0]
    assert re.search(r"this run writes about [\d.]+ [KM]iB .*newest complete checkpoint, step \d+, is kept", lines[0])
    kept = int(re.search(r"checkpoint, step (\d+)", lines[0]).group(1))
    assert kept == 40 and os.listdir(os.path.join(workdir, "checkpoints")) == ["40"]

    os.remove(filler)
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint step {kept}" in resumed.stdout and "step 120:" in resumed.stdout
