"""The viewer page in a real browser: headless Chromium (the system's) driven by Playwright.

Opens the page on a phantom case served on the CPU device, checks NiiVue's canvas
and a non-blank 3-D frame, drags to rotate (the frame changes), paints an ET stroke
on the axial slice and a "not tumour" stroke on the 3-D view, presses Refine and
checks that the overlay turned the painted place to ET's colour while the rest of
the slice kept its colours. Screenshots go to the test's tmp dir. The 3-D view renders at a
quarter of the canvas (``?scale=0.25``): the CPU device is slow.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")

from PIL import Image  # noqa: E402

from viewer_support import fitted_checkpoint, start_server, store_as_lps, write_phantoms  # noqa: E402

#: NiiVue's label colours on the page (app.js labelColormap): NCR, ED, ET.
CLASS_RGB = {1: np.array([230, 51, 51]), 2: np.array([51, 204, 51]), 3: np.array([255, 217, 26])}
FRAMES = "Number(document.getElementById('view3d').dataset.frames || 0)"


def _pixels(page, path, clip=None):
    page.screenshot(path=str(path), clip=clip)
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int32)


def _near(pixels, colour, tol=40):
    return (np.abs(pixels - colour).max(axis=-1) < tol)


def _wrong_spot(labels, truth):
    """(x, y, z, class): the centre of 3x3 voxels of one axial slice that all have ``class`` in the
    ground truth while the INR says otherwise at the centre (the most such voxels first)."""
    from scipy import ndimage

    for cls in (3, 1, 2):
        inner = ndimage.binary_erosion(truth == cls, structure=np.ones((3, 3, 1), bool)) & (labels != cls)
        if inner.any():
            z = int(np.argmax(inner.sum(axis=(0, 1))))
            x, y = np.argwhere(inner[:, :, z])[0]
            return int(x), int(y), z, cls
    raise AssertionError("the INR agrees with the ground truth everywhere: nothing to correct")


def _crosshair(pixels, tile):
    """Screen (x, y) where NiiVue's red crosshair lines cross inside ``tile`` (row and column slices)."""
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    sub = red[tile]
    cols, rows = np.flatnonzero(sub.mean(axis=0) > 0.5), np.flatnonzero(sub.mean(axis=1) > 0.5)
    assert len(cols) and len(rows), "no crosshair on the axial tile"
    return tile[1].start + cols.mean(), tile[0].start + rows.mean()


@pytest.mark.parametrize("storage", ["ras", "lps"])
def test_page_paint_refine_updates_the_overlay(tmp_path, cpu_device, viewer_fit, storage):
    data = tmp_path / "data"
    data.mkdir()
    cases = write_phantoms(data, count=1)
    if storage == "lps":  # NiiVue shows (and draws) in RAS: the page must map strokes back to the file's order
        store_as_lps(cases[0])
        checkpoint = fitted_checkpoint(cases[0], tmp_path / "tiny.safetensors", cpu_device, steps=60)
    else:  # the same fit as conftest's viewer_fit (same phantom, seed and steps): made once per run
        checkpoint = Path(shutil.copy2(viewer_fit["checkpoint"], tmp_path / "tiny.safetensors"))
    server = start_server(data, checkpoint, tmp_path / "out")
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server.url}/?token={server.token}&scale=0.25")
            page.wait_for_function(f"{FRAMES} >= 1", timeout=120_000)
            assert page.locator("#gl").is_visible()
            box3d = page.locator("#view3d").bounding_box()
            clip3d = {k: box3d[k] for k in ("x", "y", "width", "height")}
            first = _pixels(page, tmp_path / "frame1.png", clip3d)
            assert first.std() > 5.0, "the 3-D frame is blank"

            # Drag to rotate: a new frame, different pixels.
            frames = page.evaluate(FRAMES)
            cx, cy = box3d["x"] + box3d["width"] / 2, box3d["y"] + box3d["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 120, cy + 10, steps=4)
            page.mouse.up()
            page.wait_for_function(f"{FRAMES} >= {frames + 2}", timeout=120_000)
            page.wait_for_timeout(500)
            second = _pixels(page, tmp_path / "frame2.png", clip3d)
            assert np.abs(second - first).mean() > 2.0, "dragging did not change the 3-D frame"

            # A correction a user would make: on the axial slice, three by three voxels of one class
            # where the ground truth has that class and the INR says otherwise, painted with that pen.
            labels, truth = server.worker.submit(lambda s: (s.state.labels.copy(), s.state.case.label.copy())).result(60)
            x, y, z, cls = _wrong_spot(labels, truth)
            rx, ry = (x, y) if storage == "ras" else (truth.shape[0] - 1 - x, truth.shape[1] - 1 - y)  # NiiVue's RAS voxel
            page.evaluate(f"() => {{ const v = window.neumoursViewer.nv; v.scene.crosshairPos = v.vox2frac([{rx}, {ry}, {z}]);"
                          " v.drawScene(); }")
            page.wait_for_timeout(500)
            gl = page.locator("#gl").bounding_box()
            tile = (slice(int(gl["y"] + gl["height"] / 2), int(gl["y"] + gl["height"])),
                    slice(int(gl["x"]), int(gl["x"] + gl["width"] / 2)))  # the axial tile: bottom left
            sx, sy = _crosshair(_pixels(page, tmp_path / "crosshair.png"), tile)
            px = gl["width"] / 2 / truth.shape[0]  # screen pixels per voxel on the tile (approximately)
            # No crosshair over the painted place, and an opaque overlay: pixels then show the label colours.
            hide = "() => { const v = window.neumoursViewer.nv; v.setCrosshairWidth(0); v.setOpacity(1, 1); v.drawScene(); }"
            page.evaluate(hide)
            page.wait_for_timeout(300)
            before = _pixels(page, tmp_path / "before.png")
            page.click(f"button[data-pen='{cls}']")
            for dy in (-1, 0, 1):
                page.mouse.move(sx - px, sy + dy * px)
                page.mouse.down()
                page.mouse.move(sx + px, sy + dy * px, steps=6)
                page.mouse.up()
            # A "not tumour" stroke on the 3-D view, in its top left corner (air: nothing there may be tumour).
            page.click("button[data-mode='not_tumour']")
            page.mouse.move(box3d["x"] + 20, box3d["y"] + 20)
            page.mouse.down()
            page.mouse.move(box3d["x"] + 80, box3d["y"] + 40, steps=5)
            page.mouse.up()
            page.click("#refine")
            _wait_text(page, "#progress", "refined", timeout=600_000)
            page.wait_for_timeout(2000)
            assert "render + voxel" in page.locator("#progress").text_content()  # both corrections were used
            after = _pixels(page, tmp_path / "after.png")

            # The painted voxels turned to their class's colour; the rest of the axial tile kept its colours.
            page.evaluate(hide)
            page.wait_for_timeout(500)
            after = _pixels(page, tmp_path / "after.png")
            r = int(px)
            spot = (slice(int(sy) - r, int(sy) + r + 1), slice(int(sx) - r, int(sx) + r + 1))
            hit_before, hit_after = _near(before[spot], CLASS_RGB[cls]).mean(), _near(after[spot], CLASS_RGB[cls]).mean()
            assert hit_after > hit_before + 0.3, (cls, hit_before, hit_after)
            away = np.zeros(before.shape[:2], bool)
            away[tile] = True
            away[int(sy) - 5 * r:int(sy) + 5 * r + 1, int(sx) - 5 * r:int(sx) + 5 * r + 1] = False
            changed = np.abs(after - before).max(axis=-1) > 40
            if storage == "ras" and os.environ.get("NEUMOURS_VIEWER_SCREENSHOT"):  # docs/viewer.png is made so
                page.evaluate("() => { const v = window.neumoursViewer.nv; v.setCrosshairWidth(1); v.setOpacity(1, 0.6);"
                              " v.drawScene(); }")
                page.wait_for_timeout(500)
                page.screenshot(path=os.environ["NEUMOURS_VIEWER_SCREENSHOT"])
            assert changed[away].mean() < 0.05, f"{changed[away].mean():.1%} of the tile away from the stroke changed"
            assert not errors, errors
            browser.close()
    finally:
        server.stop()


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])


def _wait_text(page, selector, text, timeout=300_000):
    """Wait until ``selector``'s text holds ``text``; on a timeout, say what the page showed instead."""
    try:
        page.wait_for_function(f"document.querySelector({selector!r}).textContent.includes({text!r})", timeout=timeout)
    except playwright.TimeoutError:
        shown = {s: page.locator(s).text_content() for s in (selector, "#progress", "#error", "#stats")}
        raise AssertionError(f"waited for {text!r} in {selector}; the page shows {shown}") from None


def test_page_editing_model(tmp_path, viewer_fit):
    """Brush size, pen colour, Refine consuming the paint, Undo giving it back, a case switch keeping the
    history, Cancel restoring the weights bit for bit, and a second page that views only."""
    data = tmp_path / "data"
    shutil.copytree(viewer_fit["data"], data)  # two phantoms and a fit to the first, made once per run
    checkpoint = Path(shutil.copy2(viewer_fit["checkpoint"], tmp_path / "tiny.safetensors"))
    server = start_server(data, checkpoint, tmp_path / "out")
    sess = server.worker.session
    first = sess.state.case.case_id
    url = f"{server.url}/?token={server.token}&scale=0.25"
    counts = "window.neumoursViewer.paintCounts()"
    try:
        with playwright.sync_playwright() as p:
            browser = _launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function(f"{FRAMES} >= 1", timeout=120_000)
            _wait_text(page, "#role", "editing")

            # Brush 5: one click paints a 5 x 5 square of the axial slice, in ET's overlay colour.
            page.evaluate("() => { const v = window.neumoursViewer.nv; v.setOpacity(1, 0); v.drawScene(); }")
            page.wait_for_timeout(300)
            gl = page.locator("#gl").bounding_box()
            tile = (slice(int(gl["y"] + gl["height"] / 2), int(gl["y"] + gl["height"])),
                    slice(int(gl["x"]), int(gl["x"] + gl["width"] / 2)))
            sx, sy = _crosshair(_pixels(page, tmp_path / "crosshair.png"), tile)
            page.evaluate("() => { const b = document.getElementById('brush'); b.value = '5';"
                          " b.dispatchEvent(new Event('input')); }")
            page.keyboard.press("3")  # the ET pen
            page.mouse.click(sx, sy)
            page.wait_for_timeout(500)
            assert page.evaluate(counts) == [0, 0, 0, 25, 0]
            painted = _pixels(page, tmp_path / "painted.png")
            spot = painted[int(sy) - 2:int(sy) + 3, int(sx) - 2:int(sx) + 3]
            assert _near(spot, CLASS_RGB[3]).mean() > 0.8, spot.reshape(-1, 3)[:5]
            assert "ET 25" in page.locator("#pending").text_content()

            # Refine consumes the paint: the drawing is empty, and a second Refine has nothing to apply.
            page.fill("#steps", "2")
            page.click("#refine")
            _wait_text(page, "#progress", "refined")
            assert page.evaluate(counts) == [0, 0, 0, 0, 0]
            assert page.locator("#pending").text_content() == "none"
            page.click("#refine")
            page.wait_for_function("!document.getElementById('error').hidden", timeout=120_000)
            assert "nothing to apply" in page.locator("#error").text_content()

            # Undo refine gives the paint back to the page.
            page.click("#undo")
            _wait_text(page, "#progress", "undone")
            page.wait_for_function(f"{counts}[3] === 25", timeout=60_000)
            assert sess.painted_count() == 25 and len(sess.history) == 0

            # Refine again, switch case: the history stays (and Undo there restores the first case's paint).
            page.click("#refine")
            _wait_text(page, "#progress", "refined")
            second = [c for c in page.eval_on_selector_all("#case option", "os => os.map(o => o.value)") if c != first][0]
            page.select_option("#case", second)
            page.wait_for_function(f"window.neumoursViewer.caseId() === {second!r}", timeout=120_000)
            _wait_text(page, "#history", "1 refinement(s) applied, 1 undoable")
            page.click("#undo")
            _wait_text(page, "#history", f"pending on {first}")
            page.select_option("#case", first)
            page.wait_for_function(f"window.neumoursViewer.caseId() === {first!r} && {counts}[3] === 25", timeout=120_000)

            # Cancel: the weights come back bit for bit; Refine is locked while it runs.
            before = sess.inr.bridge.params.detach().clone().numpy()
            page.fill("#steps", "500")
            page.click("#refine")
            _wait_text(page, "#progress", "step")
            assert page.locator("#refine").is_disabled() and page.locator("#cancel").is_enabled()
            page.click("#cancel")
            _wait_text(page, "#progress", "cancelled")
            assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before)
            page.wait_for_function("!document.getElementById('refine').disabled", timeout=60_000)

            # A second page views only.
            other = browser.new_page(viewport={"width": 1000, "height": 600})
            other.goto(url)
            _wait_text(other, "#role", "view only")
            assert other.locator("#refine").is_disabled() and other.locator("button[data-pen='3']").is_disabled()
            _wait_text(page, "#role", "+1 viewing")
            page.screenshot(path=str(tmp_path / "page.png"))
            if os.environ.get("NEUMOURS_VIEWER_SCREENSHOT_MODEL"):
                page.screenshot(path=os.environ["NEUMOURS_VIEWER_SCREENSHOT_MODEL"])
            assert not errors, errors
            browser.close()
    finally:
        server.stop()
