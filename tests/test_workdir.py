"""The work dir is checked before training: writable, room for what the run writes, and its
checkpoints from this config (or --overwrite)."""

import os
import subprocess
import uuid

import pytest

from realign_jax.train.loop import train
from realign_jax.train.workdir import check_free_space, check_writable
from test_train import small_config


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
