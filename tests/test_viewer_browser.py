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
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)"),
              pytest.mark.integration]

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


def _wait_painted(server, count, timeout=60.0):
    """Wait until the server's session holds ``count`` painted voxels: the page updates its own counts at
    once, the server when its message has been handled."""
    deadline = time.monotonic() + timeout
    while (held := server.worker.submit(lambda s: s.painted_count()).result(60)) != count:
        assert time.monotonic() < deadline, f"the server holds {held} painted voxels, not {count}"
        time.sleep(0.05)


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


# ---------------------------------------------------------------------------------------------------
# The controls, on one page of one server shared by the tests below (each leaves the page as it found
# it: pen off, nothing painted, overlay INR, T1c with the automatic window, camera at home).

VIEWER = "window.neumoursViewer"
COUNTS = f"{VIEWER}.paintCounts()"


class Controls:
    def __init__(self, server, page, case_dir, errors):
        self.server, self.page, self.case_dir, self.errors = server, page, case_dir, errors
        self.session = server.worker.session

    def axial_tile(self):
        """(rows, cols) of the screen in NiiVue's axial tile (bottom left of the multiplanar layout)."""
        gl = self.page.locator("#gl").bounding_box()
        return (slice(int(gl["y"] + gl["height"] / 2), int(gl["y"] + gl["height"])),
                slice(int(gl["x"]), int(gl["x"] + gl["width"] / 2)))

    def keys(self, *keys):
        self.page.evaluate("() => document.activeElement && document.activeElement.blur()")
        for key in keys:
            self.page.keyboard.press(key)

    def frames(self):
        return self.page.evaluate(FRAMES)

    def no_page_errors(self):
        """No script errors on the page since the last check (they are forgotten: one test's stay its own)."""
        errors = list(self.errors)
        self.errors.clear()
        assert not errors, errors

    def shows(self, modality):
        """Wait until the slice views show ``modality`` under the overlay."""
        self.page.wait_for_function(f"(() => {{ const v = {VIEWER}.nv.volumes; return v.length === 2"
                                    f" && !!v[0] && String(v[0].name).startsWith({modality!r}); }})()", timeout=60_000)

    def opacity(self, value):
        self.page.evaluate(f"() => {{ const v = {VIEWER}.nv; v.setOpacity(1, {value}); v.drawScene(); }}")
        self.page.wait_for_timeout(300)


@pytest.fixture(scope="module")
def controls(tmp_path_factory, cpu_device):
    root = tmp_path_factory.mktemp("controls")
    data = root / "data"
    data.mkdir()
    cases = write_phantoms(data, count=1)
    checkpoint = fitted_checkpoint(cases[0], root / "tiny.safetensors", cpu_device, steps=60)
    server = start_server(data, checkpoint, root / "out")
    p = playwright.sync_playwright().start()
    browser = _launch(p)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/?token={server.token}&scale=0.25")
        page.wait_for_function(f"{FRAMES} >= 1", timeout=120_000)
        _wait_text(page, "#role", "editing")
        yield Controls(server, page, cases[0], errors)
    finally:
        browser.close()
        p.stop()
        server.stop()


def test_slice_modality_and_window_presets(controls, tmp_path):
    import nibabel as nib

    page = controls.page
    assert page.evaluate(f"{VIEWER}.nv.volumes[0].name").startswith("t1c")
    page.select_option("#modality", "t2f")  # FLAIR, for oedema
    controls.shows("t2f")
    flair = np.asarray(nib.load(next(controls.case_dir.glob("*t2f.nii*"))).dataobj, np.float64)
    assert page.evaluate(f"{VIEWER}.nv.volumes[0].global_max") == pytest.approx(flair.max(), rel=1e-5)

    window = f"(() => {{ const v = {VIEWER}.nv.volumes[0]; return [v.cal_min, v.cal_max, v.global_min, v.global_max]; }})()"
    shown = {}
    for preset in ("brain", "full", "auto"):
        page.select_option("#window", preset)
        page.wait_for_timeout(300)
        shown[preset] = page.evaluate(window)
        tile = controls.axial_tile()
        shown[preset + "_pixels"] = _pixels(page, tmp_path / f"{preset}.png")[tile]
    lo, hi = controls.session.state.windows()["t2f"]  # 0.5 and 99.5 % of the brain's FLAIR intensities
    assert shown["brain"][:2] == pytest.approx([lo, hi], rel=1e-5)
    assert shown["full"][:2] == pytest.approx([flair.min(), flair.max()], rel=1e-5)
    assert shown["brain"][:2] != pytest.approx(shown["full"][:2])
    assert np.abs(shown["brain_pixels"] - shown["full_pixels"]).mean() > 1.0, "the window did not change the slices"

    page.select_option("#modality", "t1c")
    controls.shows("t1c")
    controls.no_page_errors()


def test_legend_hides_and_shows_a_label_in_both_views(controls, tmp_path):
    page = controls.page
    controls.opacity(1)
    box3d = page.locator("#view3d").bounding_box()
    clip3d = {k: box3d[k] for k in ("x", "y", "width", "height")}

    def shot(name):
        pixels = _pixels(page, tmp_path / f"{name}.png")[controls.axial_tile()]
        return _near(pixels, CLASS_RGB[3]).sum(), _near(pixels, CLASS_RGB[2]).sum()

    def frame_after(action):
        frames = controls.frames()
        action()
        page.wait_for_function(f"{FRAMES} >= {frames + 1}", timeout=120_000)
        page.wait_for_timeout(300)
        return _pixels(page, tmp_path / "frame.png", clip3d)

    et, ed = shot("all")
    assert et > 20 and ed > 20, "the axial slice shows no ET or ED to hide"
    def changed(a, b):
        return (np.abs(a - b).max(axis=-1) > 30).mean()

    shown3d = frame_after(lambda: controls.keys("r"))  # a frame of the home camera
    hidden3d = frame_after(lambda: page.uncheck("#legend input[data-label='3']"))
    et_hidden, ed_hidden = shot("no_et")
    assert et_hidden < 0.05 * et and ed_hidden > 0.8 * ed, (et, et_hidden, ed, ed_hidden)
    assert changed(hidden3d, shown3d) > 0.002, "hiding ET did not change the 3-D view"
    back3d = frame_after(lambda: page.check("#legend input[data-label='3']"))
    assert shot("again")[0] > 0.8 * et
    assert changed(back3d, shown3d) < changed(hidden3d, shown3d)
    controls.opacity(0.6)
    controls.no_page_errors()


def test_keyboard_shortcuts(controls):
    page, sess = controls.page, controls.session
    pen_on = "document.querySelector('button.pen.on').dataset.pen"
    for key, pen in (("1", 1), ("2", 2), ("3", 3), ("4", 4), ("0", 0)):
        controls.keys(key)
        assert page.evaluate(pen_on) == str(pen) and page.evaluate(f"{VIEWER}.nv.opts.penValue") == pen, key
    controls.keys("Escape")
    assert page.evaluate(pen_on) == "-1" and not page.evaluate(f"{VIEWER}.nv.opts.drawingEnabled")

    # z takes back the last stroke, and past the first stroke takes back nothing (no wrap-round).
    rows, cols = controls.axial_tile()
    cx, cy = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
    controls.keys("3")
    page.mouse.click(cx, cy)
    page.mouse.click(cx + 20, cy)
    assert page.evaluate(COUNTS) == [0, 0, 0, 2, 0]
    controls.keys("z")
    assert page.evaluate(COUNTS) == [0, 0, 0, 1, 0]
    controls.keys("z", "z", "z")
    assert page.evaluate(COUNTS) == [0, 0, 0, 0, 0]

    # Ctrl+Z takes back a refinement and gives its paint back.
    page.mouse.click(cx, cy)
    controls.keys("Escape")
    page.fill("#steps", "2")
    page.click("#refine")
    _wait_text(page, "#progress", "refined")
    assert page.evaluate(COUNTS) == [0, 0, 0, 0, 0]
    controls.keys("Control+z")
    _wait_text(page, "#progress", "undone")
    page.wait_for_function(f"{COUNTS}[3] === 1", timeout=60_000)
    page.click("#clear")
    page.wait_for_function(f"{COUNTS}[3] === 0", timeout=10_000)
    _wait_painted(controls.server, 0)

    # Arrow up / down: the axial slice one voxel up and back.
    where = f"Array.from({VIEWER}.nv.frac2vox({VIEWER}.nv.scene.crosshairPos))"
    start = page.evaluate(where)
    controls.keys("ArrowUp")
    assert page.evaluate(where) == [start[0], start[1], start[2] + 1]
    controls.keys("ArrowDown", "ArrowDown")
    assert page.evaluate(where) == [start[0], start[1], start[2] - 1]
    controls.keys("ArrowUp")

    # r and the button: the camera back home, and a frame of it.
    camera = f"(() => {{ const c = {VIEWER}.cam; return [c.azimuth, c.elevation, c.zoom, ...c.target]; }})()"
    home = page.evaluate(camera)
    for reset in (lambda: controls.keys("r"), lambda: page.click("#reset-camera")):
        page.evaluate(f"() => Object.assign({VIEWER}.cam, {{azimuth: 123, elevation: -40, zoom: 2.5, target: [0.1, 0, 0]}})")
        frames = controls.frames()
        reset()
        assert page.evaluate(camera) == home
        page.wait_for_function(f"{FRAMES} > {frames}", timeout=120_000)
    assert sess.history.undoable() == 0
    controls.no_page_errors()


def test_cursor_readout_and_tumour_volumes(controls):
    from neumours.data import load_case

    page = controls.page
    case = load_case(controls.case_dir)
    labels = controls.server.worker.submit(lambda s: s.state.labels.copy()).result(60)
    names = ("background", "NCR", "ED", "ET")
    x, y, z = (int(v) for v in np.argwhere(labels == 3)[0])
    page.evaluate(f"() => {{ const v = {VIEWER}.nv; v.scene.crosshairPos = v.vox2frac([{x}, {y}, {z}]);"
                  " v.drawScene(); v.createOnLocationChange(); }")
    _wait_text(page, "#cursor", f"voxel {x}, {y}, {z}", timeout=30_000)
    import re

    text = page.locator("#cursor").text_content()
    for m, name in enumerate(("T1", "T1c", "T2", "FLAIR")):
        shown = re.search(rf"· {name} (-?[0-9.]+)", text)
        assert shown and abs(float(shown.group(1)) - case.images[m][x, y, z]) <= 0.051, (name, text)
    assert f"INR {names[labels[x, y, z]]}" in text and f"truth {names[case.label[x, y, z]]}" in text

    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=4)
    for k in (1, 2, 3):
        assert page.locator(f"#legend [data-ml='{names[k]}']").text_content() == f"{counts[k] * voxel_ml:.2f} mL"
    controls.no_page_errors()


def test_errors_are_a_banner_over_the_page(controls):
    page = controls.page
    page.click("#refine")  # nothing painted: an error, shown where the user looks
    page.wait_for_function("!document.getElementById('error').hidden", timeout=120_000)
    banner = page.locator("#error")
    assert "nothing to apply" in banner.text_content()
    style = page.evaluate("(() => { const s = getComputedStyle(document.getElementById('error'));"
                          " return [s.backgroundColor, s.color, s.fontWeight, s.fontSize]; })()")
    assert style[0] == "rgb(170, 34, 34)" and style[1] == "rgb(255, 255, 255)" and int(style[2]) >= 600, style
    box = banner.bounding_box()
    assert box["width"] > 1200 and box["height"] >= 20 and box["y"] < 100, box
    banner.locator("button").click()
    assert banner.is_hidden()
    controls.no_page_errors()


def test_reconnects_after_the_server_drops_the_socket(controls):
    page, server = controls.page, controls.server
    rows, cols = controls.axial_tile()
    controls.keys("2")
    page.mouse.click((cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2)
    controls.keys("Escape")
    assert page.evaluate(COUNTS) == [0, 0, 1, 0, 0]
    frames = controls.frames()
    # Every banner shown, recorded as it appears (the page may reconnect within a second).
    page.evaluate("""() => { const e = document.getElementById('error'); window.banners = [];
        new MutationObserver(() => { if (!e.hidden) window.banners.push([e.className, e.textContent]); })
          .observe(e, { attributes: true, childList: true, subtree: true, characterData: true }); }""")
    server.drop_sockets()
    page.wait_for_function("window.banners.some(([kind, text]) => kind === 'warning'"
                           " && text.includes('disconnected from the server'))", timeout=30_000)
    # Back by itself: editing again, the banner gone, frames flowing, the unsent paint kept (and sent).
    page.wait_for_function("document.getElementById('error').hidden", timeout=60_000)
    _wait_text(page, "#role", "editing", timeout=60_000)
    page.evaluate(f"() => {VIEWER}.cam.azimuth += 10")
    page.keyboard.press("r")
    page.wait_for_function(f"{FRAMES} > {frames}", timeout=120_000)
    page.wait_for_function(f"{COUNTS}[2] === 1", timeout=60_000)
    _wait_painted(server, 1)
    assert all(kind == "warning" for kind, _ in page.evaluate("window.banners")), page.evaluate("window.banners")
    page.click("#clear")
    page.wait_for_function(f"{COUNTS}[2] === 0", timeout=10_000)
    controls.no_page_errors()
