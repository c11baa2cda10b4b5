"""The first compile of a step is announced, ticks on the bar, and stays out of its ETA."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from realign_jax.train import compile_notice
from realign_jax.train.compile_notice import CompileNotice


def test_a_compile_ticks_on_the_bar_and_is_left_out_of_its_rate(monkeypatch, capsys):
    monkeypatch.setattr(compile_notice, "TICK_SECONDS", 0.05)
    screen = io.StringIO()
    bar = tqdm(total=40, file=screen, mininterval=0, ascii=True)
    with CompileNotice(bar, "the dpo step for input_ids (8, 2, 64)") as notice:
        time.sleep(0.6)  # what XLA's compile would take
        assert "compiling: " in screen.getvalue()  # the bar shows the seconds while it waits
    bar.update(1)
    elapsed = bar.format_dict["elapsed"]
    bar.close()
    out = capsys.readouterr().out
    assert "compiling the dpo step for input_ids (8, 2, 64)" in out and f"compiled in {notice.seconds:.1f} s" in out
    assert notice.seconds >= 0.6
    assert elapsed < 0.3, elapsed  # the bar's clock counts the step, not the 0.6 s compile


def test_a_hidden_bar_prints_nothing(capsys):
    bar = tqdm(total=3, disable=True)
    with CompileNotice(bar, "the step") as notice:
        pass
    assert capsys.readouterr().out == "" and notice.seconds >= 0
