"""The sweep says how long its remaining trials will take, from its first finished trial."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray")


def test_sweep_announces_a_long_remainder_after_its_first_trial(capsys):
    from neumours.sweep import progress

    progress.configure(quiet=False, ended={"t0"})
    bar = progress.SweepProgress("unused", total=10, k=2, names=["optimizer.lr"])
    bar._started["t0"] = time.monotonic() - 100.0  # the first trial took 100 s
    bar._concurrent = 2
    bar._announce("t0", "finished")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neumours: note: the sweep (9 more trial(s), 2 at a time)")
    assert "about 8 min" in err[0] and "measured: 100 s for trial t0" in err[0]  # 100 s x 9 / 2 = 450 s
    bar._announce("t0", "finished")  # once per sweep
    assert capsys.readouterr().err == ""


def test_a_short_sweep_or_a_failed_first_trial_says_nothing(capsys):
    from neumours.sweep import progress

    progress.configure(quiet=False, ended={"t0", "t1"})
    bar = progress.SweepProgress("unused", total=3, k=1, names=["optimizer.lr"])
    bar._started.update(t0=time.monotonic() - 5.0, t1=time.monotonic() - 5.0)
    bar._announce("t0", "failed")
    bar._announce("t1", "finished")  # 5 s x 1 left: not long work
    assert capsys.readouterr().err == ""
    progress.configure(quiet=False)
