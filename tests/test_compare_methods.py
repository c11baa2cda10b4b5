"""benchmarks/compare_methods.py's seed statistics: the bootstrap interval of a mean."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from compare_methods import bootstrap_interval  # noqa: E402


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_less_noise():
    rng = np.random.default_rng(1)
    noisy, quiet = 0.7 + 0.05 * rng.standard_normal(5), 0.7 + 0.005 * rng.standard_normal(5)
    lo, hi = bootstrap_interval(noisy)
    assert lo < noisy.mean() < hi and min(noisy) <= lo and hi <= max(noisy)
    q_lo, q_hi = bootstrap_interval(quiet)
    assert (q_hi - q_lo) < (hi - lo) / 5
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5)  # no spread between seeds: no interval
    # A paired difference clearly above 0 excludes it; one centred on 0 does not.
    assert bootstrap_interval(np.array([0.02, 0.03, 0.025, 0.018, 0.03]))[0] > 0
    lo0, hi0 = bootstrap_interval(np.array([0.02, -0.03, 0.01, -0.01, 0.005]))
    assert lo0 < 0 < hi0
