"""Checks on the work dir before a run spends hours in it: that it can be written, that the disk
holds what the run will write, and that its checkpoints belong to this config.

A run resumes from whatever checkpoints its work dir holds, so pointing a changed config at an
old work dir would silently continue the old run under new settings. The config a run started
with is kept in `<workdir>/run_config.json`; a later run whose config differs in a key that
changes what the checkpoints mean is refused, naming the keys, unless it asks to overwrite.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from typing import Any

from realign_jax.files import changed_keys, write_atomically

RUN_CONFIG = "run_config.json"
# Keys a resumed run may change: logging, checkpoint cadence, length of the run, profiling,
# the mesh (Orbax restores into any sharding) and how the step is computed, not what it computes.
MAY_CHANGE = ("train.steps", "train.epochs", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.export",
              "train.profile_start", "train.profile_steps", "train.on_nonfinite", "train.max_consecutive_skips",
              "data.workers", "inspect", "mesh", "model.remat", "model.attention_impl")
OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "export", "online_bdhs", "online_dpo", RUN_CONFIG)


def check_writable(workdir: str) -> None:
    """Create the work dir and write a probe file there, or fail with one line. The probe has a
    name of its own: every process of a multi-host run probes the same shared folder."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe"):
            pass
    except OSError as error:
        raise ValueError(f"--workdir={workdir}: cannot write there ({error.strerror or error})") from None


def check_free_space(workdir: str, needed_bytes: int) -> None:
    free = shutil.disk_usage(workdir).free
    if free < needed_bytes:
        raise ValueError(f"--workdir={workdir}: {_size(free)} free on its disk, but this run writes about "
                         f"{_size(needed_bytes)} (checkpoints and the export); free some space or choose another "
                         "--workdir")


def check_room(folder: str, needed_bytes: int, what: str) -> None:
    """ENOSPC unless `folder`'s disk has `needed_bytes` free: a writer checks before it starts, so a
    disk that filled is one error here, not a writer thread dying (or blocking the loop) on it."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(errno.ENOSPC, f"{free} bytes free for {what} ({needed_bytes} needed)")


class DiskFull(OSError):
    """The work dir's disk filled during the run; the message says what to do."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from (Orbax wraps its writer threads'), is
    ENOSPC."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class QuietFullDisk(logging.Filter):
    """Drops the reports of writes that failed on a full disk (Orbax logs each of its writer
    threads' failures, asyncio each unread one, TensorBoard's writer thread dies with a
    traceback, tensorstore's callbacks print the closed event loop of the failed save): the loop
    reports the full disk once, in one line. A report is dropped only when it is of a full disk,
    or of a closed event loop while the work dir's disk has no room left."""

    LOGGERS = ("absl", "asyncio")

    def __init__(self, workdir: str) -> None:
        super().__init__()
        self.workdir = workdir
        self._thread_hook, self._native_hook = threading.excepthook, sys.excepthook

    def _full_disk_report(self, error: BaseException | None) -> bool:
        if error is None:
            return False
        if is_disk_full(error):
            return True
        return isinstance(error, RuntimeError) and "Event loop is closed" in str(error) and \
            shutil.disk_usage(self.workdir).free < (1 << 20)

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        if not self._full_disk_report(args.exc_value):
            self._thread_hook(args)

    def _native_failed(self, kind: type, error: BaseException, trace: Any) -> None:
        """Native callbacks (tensorstore's) print their errors through sys.excepthook."""
        if not self._full_disk_report(error):
            self._native_hook(kind, error, trace)

    def filter(self, record: logging.LogRecord) -> bool:
        failed = record.exc_info[1] if record.exc_info else None
        return not ("No space left on device" in record.getMessage() or self._full_disk_report(failed))

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        self._thread_hook, threading.excepthook = threading.excepthook, self._thread_failed
        self._native_hook, sys.excepthook = sys.excepthook, self._native_failed

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
        threading.excepthook, sys.excepthook = self._thread_hook, self._native_hook


def disk_full(workdir: str, needed_bytes: int, complete_step: int | None) -> DiskFull:
    kept = f"the newest complete checkpoint, step {complete_step}, is kept" if complete_step else \
        "no checkpoint was complete yet"
    return DiskFull(f"--workdir={workdir}: the disk filled during the run "
                    f"({_size(shutil.disk_usage(workdir).free)} free; this run writes about {_size(needed_bytes)} "
                    f"of checkpoints and export); {kept}: free some space and run the same command to resume")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _binding(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys that must match for a checkpoint to be resumed."""
    return {k: v for k, v in _flat(config).items()
            if not any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)}


def claim(workdir: str, config: dict[str, Any], overwrite: bool = False) -> None:
    """Refuse a work dir whose checkpoints come from a different config, or with `overwrite`
    delete that run's outputs first; then record this config as the work dir's."""
    path = os.path.join(workdir, RUN_CONFIG)
    current = json.loads(json.dumps(config, default=list))
    has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
        name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
    if has_checkpoints and os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        old, new = _binding(previous), _binding(current)
        changed = changed_keys(old, new)
        if changed and not overwrite:
            shown = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in changed[:6])
            more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
            raise ValueError(f"--workdir={workdir} holds checkpoints of a run with a different config ({shown}{more}); "
                             "use another --workdir, or pass --overwrite to delete that run's checkpoints and logs")
        if changed:
            for name in OUTPUTS:
                target = os.path.join(workdir, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
    write_atomically(path, json.dumps(current, indent=1, sort_keys=True))
