"""A screenshot of `neumours view` in a real browser (README's docs/viewer.png is made so).

    python examples/viewer_screenshot.py CASE_OR_DATASET --checkpoint CKPT --out viewer.png
        [--size 1600x900] [--scale 1.0] [--overlay inr] [--modality t2f] [--device auto] [--browser PATH]

Starts `neumours view --port 0 --no-browser` on the checkpoint, opens the printed URL in headless
Chromium (Playwright: the system's `chromium`, or --browser, or Playwright's own), waits for the
3-D view's first still frame, puts the slice views' crosshair on the tumour (the axial slice with
most of it, at its centre there), then writes the page as a PNG. Nothing is painted or refined.
Needs the test extra (playwright) and the view extra.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from neumours.cli.options import finite_float
from neumours.cli.render import image_size

FRAMES = "Number(document.getElementById('view3d').dataset.frames || 0)"


def start_viewer(source: Path, checkpoint: Path, device: str) -> tuple[subprocess.Popen, str]:
    """``neumours view`` in a child process and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "neumours.cli.main", "view", str(source), "--checkpoint",
                             str(checkpoint), "--port", "0", "--no-browser", "--device", device],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # the URL, once the first case is open and cached
    if not line.startswith("http"):
        proc.wait(30)
        raise SystemExit(f"viewer_screenshot: neumours view did not start (exit {proc.returncode})")
    return proc, line


def screenshot(url: str, out: Path, size: tuple[int, int], scale: float, overlay: str, modality: str,
               browser_path: str | None, timeout_s: float = 600.0) -> Path:
    """The viewer page at ``url`` as a PNG at ``out`` (``size`` = width, height of the window)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        browser = p.chromium.launch(executable_path=browser_path, args=args)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}&scale={scale}")
        page.wait_for_function(f"{FRAMES} >= 1", timeout=timeout_s * 1000)
        if modality != "t1c":
            page.select_option("#modality", modality)
            page.wait_for_function(f"String(window.neumoursViewer.nv.volumes[0]?.name).startsWith({modality!r})",
                                   timeout=timeout_s * 1000)
        if overlay != "inr":
            page.select_option("#overlay", overlay)
            page.wait_for_function(f"(() => {{ const v = window.neumoursViewer.nv.volumes; return v.length === 2"
                                   f" && !!v[1] && String(v[1].name).startsWith({overlay!r}); }})()", timeout=timeout_s * 1000)
        if page.evaluate("window.neumoursViewer.focusTumour()") is None:
            print("viewer_screenshot: the overlay shows no tumour; the crosshair stays at the centre", file=sys.stderr)
        # A still frame at the page's chosen size (the first one may be a small, fast one), and the readouts.
        frames = page.evaluate(FRAMES)
        page.keyboard.press("r")
        page.wait_for_function(f"{FRAMES} > {frames}", timeout=timeout_s * 1000)
        page.wait_for_function("document.getElementById('cursor').textContent.includes('voxel')", timeout=60_000)
        time.sleep(2.0)  # a sharper still frame, if the page asks for one
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    if errors:
        raise SystemExit(f"viewer_screenshot: the page reported errors: {errors}")
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a case folder or a dataset folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("viewer.png"))
    parser.add_argument("--size", type=image_size, default="1600x900", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--scale", type=finite_float(gt=0, max=1), default=1.0,
                        help="cap of the 3-D view's size, in (0, 1] (1: the canvas)")
    parser.add_argument("--overlay", default="inr", choices=("inr", "denoised", "ground_truth", "probabilities"))
    parser.add_argument("--modality", default="t1c", choices=("t1c", "t2f", "t1n", "t2w"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="Chromium to drive (default: the system's; none: Playwright's own)")
    args = parser.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds through the finally below, so the viewer child stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    proc, url = start_viewer(args.source, args.checkpoint, args.device)
    try:
        out = screenshot(url, args.out, args.size, args.scale, args.overlay, args.modality,
                         args.browser)
    finally:
        proc.terminate()
        proc.wait(30)
    print(out)
    return out


if __name__ == "__main__":
    main()
