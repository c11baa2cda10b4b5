"""Where logged steps go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

On resume, lines after the restored step are dropped first: those steps run again and are
logged again, so the file never holds two different values for one step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax


class MetricsLog:
    def __init__(self, workdir: str, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if not self.enabled:
            return
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(kept)
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
