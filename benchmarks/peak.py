"""The measured matmul peak the benchmarks report utilisation against (step_throughput.py,
trl_side_by_side.py), for any framework: JAX's or torch's arrays go in through three callables."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def matmul_peak(make: Callable[[int], Any], matmul: Callable[[Any, Any], Any], wait: Callable[[Any], Any],
                size: int, bursts: int = 5, repeats: int = 5) -> float:
    """Matmul FLOP/s (2 size^3 per product) on this machine in the arrays' dtype: `make(seed)`
    gives a size x size operand, `matmul` multiplies two, `wait` blocks until a result is done.
    After one product to warm up (and compile), the best of `bursts` bursts of `repeats`
    products, each burst waited on once at its end (so an asynchronous framework queues them):
    other processes on shared cores only ever slow a burst down."""
    a, b = make(0), make(1)
    wait(matmul(a, b))
    best = 0.0
    for _ in range(bursts):
        began = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        wait(out)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - began))
    return best
