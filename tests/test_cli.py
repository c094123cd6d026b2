"""The neumours command: synth, inspect, train, plot, demo; bad input is one line and exit 2."""

from __future__ import annotations

import pytest

from neumours.cli.main import main


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_synth_and_inspect(tmp_path, capsys):
    code, out, _ = run(["synth", "--out", tmp_path / "data", "--cases", "2", "--shape", "24", "24", "16",
                        "--quiet"], capsys)
    assert code == 0 and "wrote 2" in out
    code, out, _ = run(["inspect", tmp_path / "data"], capsys)
    assert code == 0 and out.count("case Phantom-") == 2 and "WT" in out and "mL" in out


@pytest.mark.parametrize("args, message", [
    (["inspect", "/no/such/case"], "does not exist"),
    (["synth", "--out", "x", "--cases", "0"], "--cases must be at least 1"),
    (["synth", "--out", "x", "--shape", "8", "8", "8"], "--shape"),
    (["train", "--data", "/no/such/data", "--out", "run"], "does not exist"),
    (["train", "--data", "/no/such/data"], "either --out RUN"),
    (["plot", "/no/such/run"], "no metrics file"),
    (["demo", "--cases", "1"], "--cases must be at least 2"),
    (["inspect", "/tmp", "--device", "tpu"], None),
])
def test_bad_input_is_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if message is None:  # argparse's own errors also exit 2
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        return
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.startswith("neumours: error:") and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_train_then_plot(tmp_path, capsys):
    run(["synth", "--out", tmp_path / "data", "--cases", "3", "--shape", "24", "24", "16", "--quiet"], capsys)
    code, out, _ = run(["train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--preset", "tiny",
                        "--steps", "6", "--val-every", "3", "--device", "cpu"], capsys)
    assert code == 0 and "trained 6 steps" in out
    assert (tmp_path / "run" / "curves.png").is_file()
    code, out, _ = run(["train", "--data", tmp_path / "data", "--resume", tmp_path / "run", "--steps", "8",
                        "--device", "cpu"], capsys)
    assert code == 0 and "trained 8 steps" in out
    code, out, _ = run(["plot", tmp_path / "run", tmp_path / "run", "--out", tmp_path / "both.png"], capsys)
    assert code == 0 and (tmp_path / "both.png").is_file()


def test_demo_small(tmp_path, capsys):
    code, out, _ = run(["demo", "--out", tmp_path, "--cases", "4", "--shape", "28", "28", "20", "--steps", "10",
                        "--device", "cpu"], capsys)
    assert code == 0 and "Whole Tumor" in out
    for name in ("segmentations.png", "montage.png", "evaluation/summary.md", "evaluation/per_case.csv",
                 "run/best.safetensors"):
        assert (tmp_path / name).is_file(), name
