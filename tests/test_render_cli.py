"""``neumours render`` and examples/render_case.py on a tiny phantom case, on the CPU device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from neumours.cli.main import main
from neumours.data.phantom import make_case, write_case
from neumours.render.io import mp4_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return write_case(make_case((24, 24, 16), seed=3), tmp_path_factory.mktemp("cases"))


def run(args, capsys) -> tuple[int, str, str]:
    code = main(["render", *map(str, args), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_render_writes_png(case_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    code, stdout, _ = run([case_dir, "--ground-truth", "--out", out, "--size", "32x24", "--azimuth", "60",
                           "--elevation", "10", "--modalities", "t2f=1,t1c=0.5", "--step", "0.05"], capsys)
    assert code == 0 and "wrote" in stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert image.max() > 0 and image[0, 0].tolist() == [0, 0, 0]  # something drawn; black corner
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left


def test_render_with_seg_file_and_turntable_gif(case_dir, tmp_path, capsys):
    seg = next(case_dir.glob("*-seg.nii.gz"))
    out = tmp_path / "spin.gif"
    code, _, _ = run([case_dir, "--seg", seg, "--out", out, "--size", "20x16", "--turntable", "3"], capsys)
    assert code == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (20, 16)


def test_render_with_probabilities(case_dir, tmp_path, capsys):
    seg = next(case_dir.glob("*-seg.nii.gz"))
    label = np.asarray(nib.load(seg).dataobj)
    probs = tmp_path / "probs.nii.gz"
    nib.save(nib.Nifti1Image(np.eye(4, dtype=np.float32)[label], np.eye(4)), probs)
    hard, soft = tmp_path / "hard.png", tmp_path / "soft.png"
    assert run([case_dir, "--seg", seg, "--out", hard, "--size", "20x16"], capsys)[0] == 0
    assert run([case_dir, "--probs", probs, "--out", soft, "--size", "20x16"], capsys)[0] == 0
    assert np.asarray(Image.open(soft)).max() > 0
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 16, 3), np.float32), np.eye(4)), probs)
    code, _, stderr = run([case_dir, "--probs", probs, "--out", soft, "--size", "20x16"], capsys)
    assert code == 2 and "does not match case" in stderr


def bad_seg(tmp_path) -> Path:
    path = tmp_path / "small-seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 15), np.uint8), np.eye(4)), path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--size", "big"], "--size must be WIDTHxHEIGHT"),
    (["--size", "0x10"], "width and height"),
    (["--modalities", "t2f=1,dwi=2"], "unknown modality 'dwi'"),
    (["--modalities", "t2f=heavy"], "not a number"),
    (["--step", "0"], "--step must be > 0"),
    (["--step", "-0.1"], "--step must be > 0"),
    (["--turntable", "0"], "at least 1 frame"),
    (["--checkpoint", "model.safetensors"], "model.safetensors"),
    (["--seg", "x.nii.gz", "--denoise"], "--denoise applies to --checkpoint only"),
    ("SEG", "does not match case"),
])
def test_bad_input_is_one_line_and_no_output(case_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "img.png"
    if extra == "SEG":
        extra = ["--seg", bad_seg(tmp_path)]
    code, stdout, stderr = run([case_dir, "--out", out, "--size", "8x6", *extra], capsys)
    assert code == 2
    assert stderr.startswith("neumours: error:") and message in stderr and stderr.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".img.png*"))


def test_render_from_checkpoint(case_dir, tmp_path, capsys):
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.inr import INR
    from neumours.device import get_device

    config = INRConfig.tiny()
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(config, get_device("cpu")).state_dict(), config)
    out = tmp_path / "inr.png"
    code, stdout, _ = run([case_dir, "--checkpoint", checkpoint, "--denoise", "--out", out, "--size", "12x8",
                           "--device", "cpu"], capsys)
    assert code == 0 and np.asarray(Image.open(out)).shape == (8, 12, 3)


def test_output_suffix_checks(case_dir, tmp_path, capsys):
    code, _, stderr = run([case_dir, "--out", tmp_path / "img.gif", "--size", "8x6"], capsys)
    assert code == 2 and "--turntable" in stderr
    code, _, stderr = run([case_dir, "--out", tmp_path / "spin.png", "--size", "8x6", "--turntable", "2"], capsys)
    assert code == 2 and ".gif or .mp4" in stderr
    if not mp4_available():
        code, _, stderr = run([case_dir, "--out", tmp_path / "spin.mp4", "--size", "8x6", "--turntable", "2"], capsys)
        assert code == 2 and "imageio-ffmpeg" in stderr
    assert not list(tmp_path.iterdir())


def test_example_script_writes_still_and_turntable(case_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("render_case", ROOT / "examples" / "render_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    still, turntable = module.main([str(case_dir), "--out", str(tmp_path), "--size", "24x16", "--frames", "2",
                                    "--device", "cpu"])
    assert np.asarray(Image.open(still)).shape == (16, 24, 3)
    with Image.open(turntable) as gif:
        assert gif.n_frames == 2
    assert "wrote" in capsys.readouterr().out
