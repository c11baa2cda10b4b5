"""A run killed at random moments, in the middle of an asynchronous checkpoint save and by a
preemption notice, ends with the weights and logged losses of a run never interrupted
(benchmarks/kill_resume.py runs the larger version)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from kill_resume import run  # noqa: E402


@pytest.mark.slow
def test_killed_runs_recover_to_the_uninterrupted_result(tmp_path):
    report = run(kills=3, steps=40, checkpoint_every=5, seed=1, keep=str(tmp_path))
    events = report["interruptions"]
    # A mid-save kill that lands after the save finished is redone, so one really cuts a save.
    assert [e["kind"] for e in events if e["kind"] != "mid-save" or e["partial_saves"]] == \
        ["random", "mid-save", "sigterm"], events
    assert report["mid_save_kills_with_partial_checkpoint"] == 1, events
    assert report["resumed_from_newest_complete"], events
    assert report["sigterm_exits_within_limit"], events
    sigterm = events[-1]
    assert sigterm["returncode"] == 0 and max(sigterm["complete"]) >= sigterm["at_step"], sigterm
    assert report["logged_steps"] == 40
    assert report["same_logged_metrics"] and report["same_exported_weights"], report
