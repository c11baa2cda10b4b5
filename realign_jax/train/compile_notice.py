"""What a user sees while XLA compiles a train step.

The first step of a run compiles for tens of seconds on a CPU (minutes for a 7B model on an
accelerator) and would otherwise look like a hang, and tqdm would count that time as the
first step's, so its first ETA says minutes where the run takes seconds. `CompileNotice`
says what is compiling, ticks the elapsed seconds on the progress bar, and afterwards moves
the bar's clock forward by the compile time so the rate and ETA count steps only.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from tqdm import tqdm

TICK_SECONDS = 1.0


class CompileNotice:
    """`with CompileNotice(bar, "the dpo step for batch (8, 3, 64)"):` around one compile."""

    def __init__(self, bar: tqdm, what: str):
        self.bar, self.what = bar, what
        self.seconds = 0.0
        self._start = 0.0
        self._done = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="compile-notice", daemon=True)

    def _tick(self) -> None:
        while not self._done.wait(TICK_SECONDS):
            self.bar.set_postfix_str(f"compiling: {time.perf_counter() - self._start:.0f} s")

    def __enter__(self) -> CompileNotice:
        self._start = time.perf_counter()
        if not self.bar.disable:  # only the process that shows the bar says anything
            self.bar.write(f"compiling {self.what} (once per batch shape; the compile cache makes reruns "
                           "start faster)")
            self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self.seconds = time.perf_counter() - self._start
        if self.bar.disable or kind is not None:
            return
        self.bar.write(f"compiled in {self.seconds:.1f} s")
        self.bar.set_postfix_str("")
        # The compile is not a step: leave it out of the bar's rate and ETA.
        self.bar.start_t += self.seconds
        self.bar.last_print_t += self.seconds
