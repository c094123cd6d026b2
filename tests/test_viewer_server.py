"""``neumours view``'s server over HTTP and WebSocket on the CPU device: frames, corrections, undo, save, security.

One server (a phantom dataset of two cases, a tiny INR fitted to the first) serves
every test of this module; the tests run in file order and share its state.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from neumours.data import load_case  # noqa: E402
from neumours.viewer import protocol  # noqa: E402
from neumours.viewer.protocol import SERVER_BINARY_TYPES, View  # noqa: E402
from viewer_support import start_server  # noqa: E402

MAX_UPLOAD = 64 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory, viewer_fit):
    """Two phantoms and a tiny INR fitted 60 steps to the first (conftest's viewer_fit, copied here)."""
    root = tmp_path_factory.mktemp("viewer")
    data = root / "data"
    shutil.copytree(viewer_fit["data"], data)
    cases = [data / case.name for case in viewer_fit["cases"]]
    checkpoint = Path(shutil.copy2(viewer_fit["checkpoint"], root / "tiny.safetensors"))
    out = root / "out"
    server = start_server(data, checkpoint, out, max_upload=MAX_UPLOAD)
    yield {"server": server, "cases": cases, "checkpoint": checkpoint, "out": out}
    server.stop()


def run(coro):
    return asyncio.run(coro)


class Client:
    """A WebSocket client that skips progress updates and returns the reply of the type asked for."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, message: dict | bytes) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        else:
            await self.ws.send_str(json.dumps(message))

    async def reply(self, *types: str, timeout: float = 300.0):
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.BINARY:
                header, payload = protocol.unpack(msg.data, SERVER_BINARY_TYPES)
                if header["type"] in types:
                    return header, bytes(payload)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                if message["type"] in types:
                    return message
                # Broadcasts of the shared state (status, role, busy) and progress are skipped.
                if message["type"] == "error" or "error" in types and message["type"] not in (
                        "progress", "status", "role", "busy"):
                    raise AssertionError(f"expected {types}, got {message}")
            else:
                raise AssertionError(f"socket closed: {msg}")


async def session(server, body, editor=True):
    """Run ``body(client)`` on a new socket; with ``editor``, once the server made it the editing page
    (the previous test's page may still be leaving)."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/ws?token={server.token}", max_msg_size=0) as ws:
            c = Client(ws)
            while editor and not (await c.reply("role", timeout=60))["editor"]:
                pass
            return await body(c)


def render_message(width=64, height=48, azimuth=30.0, request_id=1):
    return {"type": "render", "id": request_id, "camera": {"azimuth": azimuth, "elevation": 20.0, "zoom": 1.2},
            "width": width, "height": height}


def test_token_required_and_checked(served):
    server = served["server"]
    case_id = load_case(served["cases"][0]).case_id

    async def body():
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/api/volume/{case_id}/t1n"
            assert (await http.get(url)).status == 401
            assert (await http.get(url + "?token=wrong")).status == 403
            assert (await http.get(url, headers={"X-Neumours-Token": "x" + server.token})).status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{server.url}/ws")
            assert err.value.status == 401
            ok = await http.get(url + f"?token={server.token}")
            assert ok.status == 200
            return await ok.read()

    import gzip

    import nibabel as nib

    raw = run(body())
    image = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    assert image.shape == load_case(served["cases"][0]).shape


def test_traversal_and_unknown_paths_are_404(served):
    server = served["server"]
    case_id = load_case(served["cases"][0]).case_id
    paths = ["/static/..%2F..%2Fsession.py", "/static/../session.py", "/static/session.py",
             f"/api/volume/{case_id}/..%2F..%2Fetc%2Fpasswd", "/api/volume/..%2F..%2Fetc/t1n",
             f"/api/volume/{served['cases'][0]}/t1n", "/etc/passwd", f"/api/volume/{case_id}/seg"]

    async def body():
        async with aiohttp.ClientSession() as http:
            return [(await http.get(f"{server.url}{p}?token={server.token}")).status for p in paths]

    assert run(body()) == [404] * len(paths)


def test_frame_has_the_requested_size_and_matches_the_renderer(served, cpu_device):
    from neumours.device import upload
    from neumours.infer.segment import Segmenter
    from neumours.render import Frame, render_device
    from neumours.render.io import to_uint8
    from neumours.render.raymarch import ChannelVolume, Scene
    from neumours.viewer.session import ViewSettings

    server = served["server"]

    async def body(c):
        await c.send({"type": "settings", "quality": 100})
        await c.reply("settings")
        await c.send(render_message(72, 40))
        return await c.reply("frame")

    header, jpeg = run(session(server, body))
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert image.shape == (40, 72, 3) and (header["width"], header["height"]) == (72, 40)

    # The same camera and settings through neumours.render on a device of the test's own.
    case = load_case(served["cases"][0])
    sess = server.worker.session
    view = protocol.parse_view(render_message(72, 40))
    camera, settings = sess.camera(view), sess.render_settings(ViewSettings(quality=100))
    cache = Segmenter(served["checkpoint"], cpu_device).cache(case.images)
    scene = Scene(cpu_device, case.shape, case.spacing, mri=ChannelVolume.upload(cpu_device, case.images),
                  labels=upload(cpu_device, cache.labels(), np.uint32))
    frame = Frame.allocate(cpu_device, 72, 40)
    render_device(scene, camera, settings, frame)
    expected = to_uint8(frame.to_numpy()[0])
    assert expected.std() > 5.0, "reference frame is blank"
    # Same pixels through the same encoder give the same JPEG: compare decoded images exactly.
    again = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(expected)).save(again, "JPEG", quality=100)
    np.testing.assert_array_equal(image, np.asarray(Image.open(again).convert("RGB")))
    assert np.abs(image.astype(np.float64) - expected).mean() < 8.0


def test_stale_renders_are_dropped_not_queued(served):
    server = served["server"]

    async def body(c):
        for azimuth in range(12):
            await c.send(render_message(96, 96, float(azimuth), request_id=azimuth))
        frames = []
        while True:
            header, _ = await c.reply("frame")
            frames.append(header)
            if header["id"] == 11:  # the newest request is always rendered
                await c.send({"type": "ping", "id": 7})
                pong = await c.reply("pong")
                return frames, pong

    frames, pong = run(session(server, body))
    ids = [f["id"] for f in frames]
    assert ids == sorted(ids) and len(frames) < 12 and pong["dropped"] >= 12 - len(frames)


def _painted_box(case_id, sess):
    """A 4 x 4 x 4 box of brain the INR calls background, far from the tumour."""
    labels = sess.state.labels
    brain = sess.state.case.images[0] > 0
    for x in range(4, labels.shape[0] - 8, 2):
        for y in range(4, labels.shape[1] - 8, 2):
            for z in range(4, labels.shape[2] - 8, 2):
                box = (slice(x, x + 4), slice(y, y + 4), slice(z, z + 4))
                if brain[box].all() and (labels[box] == 0).all():
                    return (x, y, z), box
    raise AssertionError("no background box in the brain")


def test_paint_refine_changes_weights_and_painted_labels_undo_restores_bits(served):
    server = served["server"]
    sess = server.worker.session
    case_id = sess.state.case.case_id
    origin, box = _painted_box(case_id, sess)
    before_weights = sess.inr.bridge.params.detach().clone().numpy()
    before_labels = sess.state.labels.copy()
    et = 3
    crop = np.full((4, 4, 4), et, np.uint8)

    async def body(c):
        await c.send(protocol.pack({"type": "strokes", "case": case_id, "origin": list(origin), "shape": [4, 4, 4]},
                                   crop.tobytes()))
        painted = await c.reply("painted")
        await c.send({"type": "refine", "steps": 20, "lr": 2e-2})
        progress = await c.reply("progress")
        labels_header, labels_crop = await c.reply("labels")
        refined = await c.reply("refined")
        after_weights = sess.inr.bridge.params.detach().clone().numpy()
        after_labels = sess.state.labels.copy()
        await c.send({"type": "undo"})
        undone = await c.reply("undone")
        return painted, progress, labels_header, labels_crop, refined, after_weights, after_labels, undone

    painted, progress, lh, lc, refined, w1, l1, undone = run(session(server, body))
    assert painted["voxels"] == 64 and progress["steps"] == 20
    assert not np.array_equal(w1, before_weights)
    assert (l1[box] == et).mean() > (before_labels[box] == et).mean() + 0.5
    assert refined["last_loss"] < refined["first_loss"]
    # The labels message is the changed crop of the new labels.
    o, s = lh["origin"], lh["shape"]
    np.testing.assert_array_equal(np.frombuffer(lc, np.uint8).reshape(s),
                                  l1[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]])
    assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before_weights)  # bit for bit
    np.testing.assert_array_equal(sess.state.labels, before_labels)
    assert undone["undo_depth"] == 0


def test_refine_anchors_to_the_other_cases_when_asked(served):
    """The page's "other cases" box sends anchor: true; the anchor term then enters the loss."""
    server = served["server"]
    sess = server.worker.session
    case_id = sess.state.case.case_id
    origin, _ = _painted_box(case_id, sess)
    before = sess.inr.bridge.params.detach().clone().numpy()
    crop = np.full((4, 4, 4), 3, np.uint8)

    async def body(c):
        anchors = []
        for anchored in (False, True):
            await c.send(protocol.pack({"type": "strokes", "case": case_id, "origin": list(origin),
                                        "shape": [4, 4, 4]}, crop.tobytes()))
            await c.reply("painted")
            await c.send({"type": "refine", "steps": 2, "lr": 1e-3, "keep": 0, "anchor": anchored})
            await c.reply("progress")  # step 0: the anchor's targets are the current predictions (loss 0)
            anchors.append((await c.reply("progress"))["anchor"])
            await c.reply("refined")
        for _ in range(2):
            await c.send({"type": "undo"})
            await c.reply("undone")
        return anchors

    without, with_anchor = run(session(server, body))
    assert without == 0 and with_anchor > 0
    assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before)


def test_3d_mask_refines_by_the_render_loss_and_is_projected_onto_voxels(served):
    server = served["server"]
    sess = server.worker.session
    before_weights = sess.inr.bridge.params.detach().clone().numpy()
    width, height = 32, 24
    camera = {"azimuth": 30.0, "elevation": 20.0, "zoom": 1.2}
    values = np.full((8, 8), 1, np.uint8)  # TUMOUR over the image centre

    async def body(c):
        await c.send({"type": "clear"})
        await c.reply("cleared")
        await c.send(protocol.pack({"type": "mask", "camera": camera, "width": width, "height": height,
                                    "origin": [8, 12], "shape": [8, 8]}, values.tobytes()))
        masked = await c.reply("masked")
        corrected = await asyncio.wrap_future(server.worker.submit(lambda s: s._masked_voxels()))
        await c.send({"type": "refine", "steps": 3, "lr": 1e-2})
        refined = await c.reply("refined")
        after = sess.inr.bridge.params.detach().clone().numpy()
        await c.send({"type": "undo"})
        await c.reply("undone")
        await c.send({"type": "clear"})
        await c.reply("cleared")
        return masked, corrected, refined, after

    masked, corrected, refined, after = run(session(server, body))
    assert masked == {"type": "masked", "tumour": 64, "not_tumour": 0}
    assert refined["stages"] == ["render"] and not np.array_equal(after, before_weights)
    # The camera looks at the box centre: the centre voxel is behind masked pixels, most corners are not
    # (the far corner behind the centre is).
    import itertools

    shape = corrected.shape
    corners = [corrected[c] for c in itertools.product(*[(0, n - 1) for n in shape])]
    assert corrected[shape[0] // 2, shape[1] // 2, shape[2] // 2] and sum(corners) <= 2
    assert 0 < corrected.mean() < 0.5


def test_save_writes_checkpoint_and_segmentation_on_the_input_grid(served):
    import nibabel as nib

    server = served["server"]

    async def body(c):
        await c.send({"type": "save"})
        return await c.reply("saved")

    saved = run(session(server, body))
    case = load_case(served["cases"][0])
    seg = nib.load(saved["segmentation"])
    assert seg.shape == case.shape and np.allclose(seg.affine, case.affine)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), server.worker.session.state.labels)
    out = served["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case.case_id}_refined.safetensors",
                                                            f"{case.case_id}_seg.nii.gz"])


def test_bad_messages_get_an_error_reply_and_the_server_goes_on(served):
    server = served["server"]
    sess = server.worker.session
    case_id = sess.state.case.case_id
    shape = sess.state.case.shape
    bad = [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"type": "delete_everything"}),
        json.dumps({"type": "render", "camera": {"azimuth": "x"}, "width": 64, "height": 64}),
        json.dumps({"type": "render", "camera": {}, "width": 100000, "height": 64}),
        json.dumps({"type": "open", "case": "../../etc"}),
        json.dumps({"type": "refine", "steps": -3}),
        b"\x01",
        protocol.pack({"type": "strokes", "case": case_id, "origin": [shape[0] - 1, 0, 0], "shape": [4, 4, 4]},
                      bytes(64)),
        protocol.pack({"type": "strokes", "case": case_id, "origin": [0, 0, 0], "shape": [2, 2, 2]}, b"\x09" * 8),
        protocol.pack({"type": "strokes", "case": case_id, "origin": [0, 0, 0], "shape": [2, 2, 2]}, b"\x01" * 7),
        protocol.pack({"type": "strokes", "case": case_id, "origin": [0, 0, 0], "shape": [2, 2, 2]},
                      bytes(MAX_UPLOAD + 1)),  # beyond the server's upload limit
        json.dumps({"type": "ping", "pad": "x" * (protocol.MAX_TEXT_BYTES + 1)}),
    ]

    async def body(c):
        replies = []
        for message in bad:
            await c.send(message) if isinstance(message, bytes) else await c.ws.send_str(message)
            replies.append(await c.reply("error"))
        await c.send({"type": "clear"})
        await c.reply("cleared")
        await c.send({"type": "refine"})  # nothing painted
        replies.append(await c.reply("error"))
        await c.send({"type": "ping", "id": 3})
        return replies, await c.reply("pong")

    replies, pong = run(session(server, body))
    assert all(r["type"] == "error" and r["message"] for r in replies)
    assert pong["id"] == 3


# ---------------------------------------------------------------------------------------------- editing model


def _strokes(case_id, origin, value=3, size=4):
    crop = np.full((size,) * 3, value, np.uint8)
    return protocol.pack({"type": "strokes", "case": case_id, "origin": list(origin), "shape": [size] * 3},
                         crop.tobytes())


def test_refine_consumes_corrections_and_undo_gives_them_back(served):
    server = served["server"]
    sess = server.worker.session
    case_id = sess.state.case.case_id
    origin, box = _painted_box(case_id, sess)
    before = sess.inr.bridge.params.detach().clone().numpy()

    async def body(c):
        await c.send({"type": "clear"})
        await c.reply("cleared")
        await c.send(_strokes(case_id, origin))
        await c.reply("painted")
        await c.send({"type": "refine", "steps": 3, "lr": 1e-2})
        await c.reply("refined")
        after_refine = await c.reply("status")
        await c.send({"type": "refine", "steps": 3})  # nothing new painted
        again = await c.ws.receive_json(timeout=60)
        while again["type"] != "error":
            again = await c.ws.receive_json(timeout=60)
        await c.send({"type": "undo"})
        await c.reply("undone")
        after_undo = await c.reply("status")
        header, crop = await c.reply("pending_paint")
        return after_refine, again, after_undo, header, crop

    after_refine, again, after_undo, header, crop = run(session(server, body))
    assert after_refine["pending"]["painted"] == 0 and after_refine["undo_depth"] == 1
    assert after_refine["history"][-1]["painted"] == 64 and after_refine["history"][-1]["by_pen"] == {"ET": 64}
    assert "nothing to apply" in again["message"]
    assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before)
    assert after_undo["pending"]["painted"] == 64 and after_undo["undo_depth"] == 0
    assert header["origin"] == list(origin) and header["shape"] == [4, 4, 4]
    assert (np.frombuffer(crop, np.uint8) == 3).all()
    assert (sess.state.paint[box] == 3).all()  # pending again: the next Refine applies them once more
    run(session(server, lambda c: _clear(c)))


async def _clear(c):
    await c.send({"type": "clear"})
    return await c.reply("cleared")


def test_second_page_is_read_only_and_takes_over_when_the_editor_leaves(served):
    server = served["server"]
    case_id = server.worker.session.state.case.case_id

    async def body(editor):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{server.url}/ws?token={server.token}", max_msg_size=0) as ws2:
                viewer = Client(ws2)
                role = await viewer.reply("role")
                refused = []
                for message in ({"type": "refine"}, {"type": "undo"}, {"type": "open", "case": case_id},
                                _strokes(case_id, (0, 0, 0))):
                    await viewer.send(message)
                    refused.append(await viewer.reply("error"))
                await viewer.send(render_message(40, 30))
                frame, _ = await viewer.reply("frame")
                await editor.ws.close()
                while not (await viewer.reply("role"))["editor"]:
                    pass
                await viewer.send({"type": "clear"})
                return role, refused, frame, await viewer.reply("cleared")

    role, refused, frame, cleared = run(session(server, body))
    assert role["editor"] is False and role["clients"] == 2
    assert all("read-only" in r["message"] for r in refused)
    assert frame["width"] == 40 and cleared["type"] == "cleared"


def test_cancel_restores_the_weights_bit_for_bit_while_frames_flow(served):
    server = served["server"]
    sess = server.worker.session
    case_id = sess.state.case.case_id
    origin, _ = _painted_box(case_id, sess)
    before = sess.inr.bridge.params.detach().clone().numpy()

    async def body(c):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{server.url}/ws?token={server.token}", max_msg_size=0) as ws2:
                other = Client(ws2)
                await c.send(_strokes(case_id, origin))
                await c.reply("painted")
                await c.send({"type": "refine", "steps": 500, "lr": 1e-2})
                first = await c.reply("progress")
                await c.send({"type": "refine", "steps": 5})  # a double click: refused, not queued
                double = await c.reply("error")
                await other.send(render_message(40, 30))  # another page's frame comes during the refinement
                frame, _ = await other.reply("frame")
                await c.send({"type": "cancel"})
                cancelled = await c.reply("cancelled")
                await c.send({"type": "ping", "id": 1})
                await c.reply("pong")
                return first, double, frame, cancelled

    first, double, frame, cancelled = run(session(server, body))
    assert first["steps"] == 500 and "remaining" in first and "loss" in first
    assert "already running" in double["message"]
    assert frame["width"] == 40
    assert "cancelled" in cancelled["message"]
    assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before)  # bit for bit
    assert sess.painted_count() == 64 and len(sess.history) == 0  # still pending, nothing recorded
    run(session(server, _clear))


def test_case_switch_keeps_history_pending_and_the_saved_log(served):
    from safetensors import safe_open

    server = served["server"]
    sess = server.worker.session
    first = sess.state.case.case_id
    second = load_case(served["cases"][1]).case_id
    origin, _ = _painted_box(first, sess)
    before = sess.inr.bridge.params.detach().clone().numpy()

    async def body(c):
        await c.send(_strokes(first, origin))
        await c.reply("painted")
        await c.send({"type": "refine", "steps": 2, "lr": 1e-2})
        await c.reply("refined")
        await c.send(_strokes(first, origin, value=2, size=2))  # pending, not refined, on the first case
        await c.reply("painted")
        await c.send({"type": "open", "case": second})
        opened = await c.reply("case")
        await c.send({"type": "save"})
        saved = await c.reply("saved")
        await c.send({"type": "undo"})
        undone = await c.reply("undone")
        status = await c.reply("status")
        await c.send({"type": "open", "case": first})
        back = await c.reply("case")
        header, crop = await c.reply("pending_paint")
        await c.send({"type": "clear"})
        await c.reply("cleared")
        return opened, saved, undone, status, back, header, crop

    opened, saved, undone, status, back, header, crop = run(session(server, body))
    assert opened["case"] == second and opened["undo_depth"] == 1 and opened["pending_elsewhere"] == [first]
    with safe_open(saved["checkpoint"], "np") as f:
        meta = f.metadata()
    assert meta["refinements"] == "1" and json.loads(meta["refinement_log"])[0]["case"] == first
    assert undone["case"] == first and status["undo_depth"] == 0
    assert np.array_equal(sess.inr.bridge.params.detach().numpy(), before)
    # Back on the first case: the undone refinement's 64 ET voxels, under the 8 ED voxels painted after it.
    assert back["pending"]["painted"] == 64 and back["pending"]["by_pen"] == {"ED": 8, "ET": 56}
    assert header["origin"] == list(origin) and sorted(set(np.frombuffer(crop, np.uint8))) == [2, 3]
    for path in served["out"].iterdir():
        if path.name.startswith(second):
            path.unlink()  # the save test expects only the first case's files


def test_oversized_and_hostile_requests_get_replies_without_tracebacks(served, caplog):
    import logging

    server = served["server"]
    deep = "[" * 20000 + "]" * 20000

    async def body(c):
        await c.ws.send_str('{"type": "ping", "x": ' + deep + "}")
        deep_reply = await c.reply("error")
        await c.send(b"\x00" * (4 * MAX_UPLOAD))  # far beyond the limit, still answered
        big_reply = await c.reply("error")
        await c.send({"type": "probe", "voxel": [1, 2, 3]})
        probe = await c.reply("probe")
        await c.send({"type": "settings", "hidden_labels": [5]})
        hidden = await c.reply("error")
        async with aiohttp.ClientSession() as http:
            long_url = (await http.get(f"{server.url}/?token={server.token}&pad={'x' * 100_000}")).status
            icon = await http.get(f"{server.url}/favicon.ico?token={server.token}")
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{server.url}/ws?token={server.token}", headers={"Origin": "http://evil.example"})
            same = await http.ws_connect(f"{server.url}/ws?token={server.token}", headers={"Origin": server.url})
            await same.close()
        return deep_reply, big_reply, probe, hidden, long_url, icon.status, icon.content_type, err.value.status

    with caplog.at_level(logging.ERROR):
        deep_reply, big_reply, probe, hidden, long_url, icon, icon_type, origin = run(session(server, body))
    assert "nested too deeply" in deep_reply["message"] and "exceeds the limit" in big_reply["message"]
    assert set(probe["intensities"]) == {"t1n", "t1c", "t2w", "t2f"} and probe["label"] in ("background", "NCR", "ED", "ET")
    assert "hidden_labels" in hidden["message"]
    assert long_url == 200 and icon == 200 and icon_type == "image/svg+xml" and origin == 403
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_large_renders_are_downscaled_to_the_time_budget(served):
    server = served["server"]
    renderer = server.worker.session.renderer
    budget = renderer.budget_s

    async def body(c):
        # A budget that fits about 256 x 128 pixels at the default step (0.02) by the renderer's own estimate.
        renderer.budget_s = renderer.seconds_per_sample * 256 * 128 / 0.02
        try:
            await c.send(render_message(2048, 1024))
            return await c.reply("frame")
        finally:
            renderer.budget_s = budget

    header, jpeg = run(session(server, body, editor=False))
    assert header["downscaled"] and header["requested"] == [2048, 1024]
    assert 16 < header["width"] < 2048 and abs(header["width"] / header["height"] - 2.0) < 0.2
    assert Image.open(io.BytesIO(jpeg)).size == (header["width"], header["height"])


def test_tumour_above_keeps_tumour_and_makes_the_rest_background():
    from neumours.viewer.renderer import tumour_above

    probs = np.zeros((4, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.04, 0.03, 0.03]  # air: a little of every tumour class
    probs[:, 1, 0, 0] = [0.2, 0.1, 0.6, 0.1]  # tumour (0.8)
    out = tumour_above(probs, 0.5)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], probs[:, 1])
    assert probs[0, 0, 0, 0] == np.float32(0.9)  # the input is left as it was


def test_probability_view_shows_tumour_not_the_whole_field(served):
    """The 3-D probability overlay, thresholded, leaves every ray that meets no tumour as the MRI alone
    (the overlay "none"); a threshold out of range is refused."""
    server = served["server"]

    async def body(c):
        frames = {}
        for name, settings in (("none", {"overlay": "none"}), ("inr", {"overlay": "inr"}),
                               ("probs", {"overlay": "probabilities", "threshold": 0.5})):
            await c.send({"type": "settings", "quality": 100, **settings})
            await c.reply("settings")
            await c.send(render_message(64, 48))
            header, jpeg = await c.reply("frame")
            assert not header["downscaled"]
            frames[name] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int32)
        await c.send({"type": "settings", "threshold": 1.5})
        frames["error"] = await c.reply("error")
        await c.send({"type": "settings", "overlay": "inr", "threshold": 0.5})
        await c.reply("settings")
        return frames

    frames = run(session(server, body, editor=False))
    assert "threshold must be in [0.05, 0.95]" in frames["error"]["message"]
    # The same view without a threshold (every voxel's softmax share of tumour rendered), as it was before.
    from neumours.viewer.session import ViewSettings

    view = protocol.parse_view(render_message(64, 48))
    jpeg, _ = server.worker.submit(lambda s: s.render(view, ViewSettings(overlay="probabilities", threshold=0.0,
                                                                         quality=100))).result(300)
    unthresholded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int32)
    tumour = np.abs(frames["inr"] - frames["none"]).max(axis=-1) > 30  # rays that meet the INR's tumour
    assert 0.01 < tumour.mean() < 0.6, tumour.mean()
    away = ~_grown(tumour, 3)
    tint = np.percentile(np.abs(frames["probs"] - frames["none"]).max(axis=-1)[away], 99)
    tint_before = np.percentile(np.abs(unthresholded - frames["none"]).max(axis=-1)[away], 99)
    assert tint <= 4 and tint < tint_before, (tint, tint_before)  # no tint away from the tumour (JPEG noise only)
    assert (np.abs(frames["probs"] - frames["none"]).max(axis=-1)[tumour] > 30).mean() > 0.5  # tumour shown


def _grown(mask, radius):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=radius)
