"""``neumours view`` refuses bad input before serving: one ``neumours: error:`` line, exit status 2."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp")

from neumours.cli.main import main  # noqa: E402
from viewer_support import write_phantoms  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("view_cli")
    return root, write_phantoms(root, count=1)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neumours: error: "), err
    return err[0]


def test_missing_checkpoint(dataset, capsys, tmp_path):
    root, _ = dataset
    missing = tmp_path / "none.safetensors"
    assert main(["view", str(root), "--checkpoint", str(missing), "--device", "cpu", "--no-browser"]) == 2
    assert str(missing) in _error_line(capsys)


def test_out_folder_holding_inputs(dataset, capsys, tmp_path):
    root, cases = dataset
    ckpt = tmp_path / "x.safetensors"
    ckpt.write_bytes(b"")
    assert main(["view", str(root), "--checkpoint", str(ckpt), "--out", str(cases[0]), "--no-browser"]) == 2
    assert "--out holds input files" in _error_line(capsys)


def test_bad_port(dataset, capsys, tmp_path):
    root, _ = dataset
    assert main(["view", str(root), "--checkpoint", str(tmp_path / "x"), "--port", "70000", "--no-browser"]) == 2
    assert "--port" in _error_line(capsys)


def test_precision_reaches_the_session(dataset, capsys, tmp_path):
    """``view --precision bf16`` builds the session's INR in bf16: off CUDA that is one error line."""
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.params import init_params

    root, _ = dataset
    config = INRConfig.tiny()
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", init_params(config, seed=0), config)
    assert main(["view", str(root), "--checkpoint", str(ckpt), "--device", "cpu", "--precision", "bf16",
                 "--no-browser"]) == 2
    line = _error_line(capsys)
    assert "bf16" in line and "CUDA" in line, line
