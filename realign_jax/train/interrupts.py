"""Stop requests from outside the process: SIGTERM (a preemption) and Ctrl-C (SIGINT).

Either one becomes a flag the loop reads after each step: the step in flight finishes, a
checkpoint is written at that step, and the run ends as if it had reached `stop_after`, so
the same command resumes it. A second Ctrl-C does not wait for the step: it exits at once
with status 130. That is as safe as a SIGKILL, which the kill harness covers: Orbax
finalises a checkpoint by renaming it, so an interrupted save leaves the last complete one.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class StopRequests:
    """Installs handlers for SIGTERM and SIGINT until `restore`; `requested` says one came."""

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name, once one arrived
        self._previous = {number: signal.signal(number, self._handle) for number in _NAMES}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.requested == _NAMES[signal.SIGINT]:
            print("\nsecond Ctrl-C: exiting now; the last complete checkpoint is kept", file=sys.stderr, flush=True)
            os._exit(130)
        if self.requested is None and signum == signal.SIGINT:
            print("\nCtrl-C: saving a checkpoint when this step ends (press Ctrl-C again to exit now)",
                  file=sys.stderr, flush=True)
        self.requested = self.requested or _NAMES[signum]

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
