"""Where logged steps go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

On resume, lines after the restored step are dropped first: those steps run again and are
logged again, so the file never holds two different values for one step. A last line cut off
by a kill is dropped too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from realign_jax.files import write_atomically
from realign_jax.train.workdir import check_room


LINE_ROOM = 1 << 20  # bytes a logged step may need (metrics.jsonl, TensorBoard events): checked first


class MetricsLog:
    def __init__(self, workdir: str, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if not self.enabled:
            return
        if os.path.isfile(self.path):
            kept = [line for line in _complete_lines(self.path) if json.loads(line)["step"] <= resume_step]
            write_atomically(self.path, "".join(kept))
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # TensorBoard writes from a thread: on a full disk it dies and the next events block
        # the loop on its queue, so a full disk is refused here first.
        check_room(os.path.dirname(self.path), LINE_ROOM, f"the metrics of step {step}")
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _complete_lines(path: str) -> list[str]:
    """The file's lines that end in a newline: a kill in the middle of a write cuts the last one."""
    with open(path) as f:
        return [line for line in f if line.endswith("\n") and line.strip()]


def read(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _complete_lines(path)]
