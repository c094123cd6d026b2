"""The viewer's web server (aiohttp): the page, the case volumes and the WebSocket of the 3-D view.

aiohttp rather than Starlette + uvicorn: one dependency gives the HTTP server,
WebSockets with message-size limits, a client (the tests) and a test server, and
it runs inside any event loop, so tests and the command start it the same way.

Routes (every request needs the token: ``?token=``, the ``X-Neumours-Token``
header or the cookie the page sets; none -> 401, a wrong one -> 403):

- ``GET /``: the page; ``GET /static/NAME``: its files, a fixed list (anything else 404);
- ``GET /api/volume/CASE/KIND``: NIfTI bytes of the open case (a modality, or an
  overlay: ``inr``, ``denoised``, ``ground_truth``, ``probabilities``); only cases
  given on the command line, never a path from the client (404 otherwise);
- ``GET /ws``: the WebSocket (:mod:`neumours.viewer.protocol`).

The event loop never touches the device: every request that needs it becomes a
job of the :class:`~neumours.viewer.worker.DeviceWorker`. A bad message gets an
error reply on its socket; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import traceback
from pathlib import Path

from aiohttp import WSMsgType, web

from neumours.conventions import MODALITIES
from neumours.errors import NeumoursError
from neumours.refine.masks import DONT_CARE, NOT_TUMOUR, TUMOUR
from neumours.viewer import protocol
from neumours.viewer.protocol import OVERLAYS, PAINT_BACKGROUND, ProtocolError
from neumours.viewer.session import KEEP_WEIGHT, ViewerSession, ViewSettings
from neumours.viewer.worker import DeviceWorker

STATIC = Path(__file__).parent / "static"
#: The page's files: URL name -> (file under static/, content type). Nothing else is served.
STATIC_FILES = {
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
    "niivue.js": ("niivue/niivue.js", "text/javascript"),
    "NIIVUE_LICENSE": ("niivue/LICENSE", "text/plain"),
}
TOKEN_COOKIE = "neumours_token"
#: Largest binary WebSocket message (a crop of a 240 x 240 x 155 case is 8.9 MB).
DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
#: Largest HTTP request body (the server takes no HTTP uploads).
MAX_HTTP_BODY = 64 * 1024
_OVERLAY_VOLUMES = ("inr", "denoised", "ground_truth", "probabilities")
log = logging.getLogger("neumours.viewer")


@web.middleware
async def _security(request: web.Request, handler):
    """Token on every request; security headers on every response."""
    expected = request.app["token"]
    given = (request.query.get("token") or request.headers.get("X-Neumours-Token")
             or request.cookies.get(TOKEN_COOKIE))
    if not given:
        raise web.HTTPUnauthorized(text="token required: open the URL the viewer printed")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPForbidden(text="wrong token")
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


async def _index(request: web.Request) -> web.Response:
    response = web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html"})
    response.set_cookie(TOKEN_COOKIE, request.app["token"], httponly=True, samesite="Strict", path="/")
    return response


async def _static(request: web.Request) -> web.StreamResponse:
    entry = STATIC_FILES.get(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / entry[0], headers={"Content-Type": entry[1]})


async def _run(request_or_app, job):
    """Run ``job(session)`` on the device worker and await it."""
    app = request_or_app if isinstance(request_or_app, web.Application) else request_or_app.app
    return await asyncio.wrap_future(app["worker"].submit(job))


async def _volume(request: web.Request) -> web.Response:
    case, kind = request.match_info["case"], request.match_info["kind"]
    session: ViewerSession = request.app["session"]
    if case not in session.refs or kind not in MODALITIES + _OVERLAY_VOLUMES:
        raise web.HTTPNotFound()
    try:
        data, name = await _run(request, lambda s: s.volume_bytes(case, kind))
    except NeumoursError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"Content-Disposition": f'inline; filename="{name}"', "X-Volume-Name": name})


class _Client:
    """One WebSocket connection: its socket and its view settings."""

    ids = itertools.count()

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.id = next(self.ids)
        self.settings = ViewSettings()


async def _send(client: _Client, message: dict | bytes) -> None:
    if client.ws.closed:
        return
    try:
        if isinstance(message, bytes):
            await client.ws.send_bytes(message)
        else:
            await client.ws.send_str(json.dumps(message))
    except (ConnectionResetError, RuntimeError):
        pass


async def _broadcast(app: web.Application, message: dict | bytes) -> None:
    for client in list(app["clients"]):
        await _send(client, message)


def _labels_message(changed) -> bytes | None:
    if changed is None:
        return None
    origin, crop = changed
    return protocol.pack({"type": "labels", "layer": "inr", "origin": list(origin), "shape": list(crop.shape)},
                         crop.tobytes())


def _settings_from(message: dict, current: ViewSettings) -> ViewSettings:
    mods = dict(current.modalities)
    mods.update(protocol.parse_modalities(message))
    window = message.get("window", list(current.window))
    if not (isinstance(window, list) and len(window) == 2):
        raise ProtocolError("window must be [lo, hi] percentiles")
    lo = protocol.number({"window": window[0]}, "window", 0.0, 99.5)
    hi = protocol.number({"window": window[1]}, "window", 0.5, 100.0)
    if not hi > lo:
        raise ProtocolError("window needs hi > lo")
    overlay = message.get("overlay", current.overlay)
    if overlay not in OVERLAYS:
        raise ProtocolError(f"overlay must be one of {', '.join(OVERLAYS)}")
    return ViewSettings(mods, (lo, hi), protocol.number(message, "gamma", 0.1, 5.0, current.gamma),
                        protocol.number(message, "step", 0.002, 0.2, current.step),
                        protocol.number(message, "label_opacity", 0.0, 10.0, current.label_opacity),
                        overlay, protocol.integer(message, "quality", 10, 100, current.quality))


async def _handle_text(app: web.Application, client: _Client, message: dict) -> None:
    kind = message["type"]
    worker: DeviceWorker = app["worker"]
    if kind == "ping":
        await _send(client, {"type": "pong", "id": message.get("id"), "dropped": worker.dropped,
                             "rendered": worker.rendered})
    elif kind == "hello":
        await _send(client, await _run(app, lambda s: s.info()))
    elif kind == "open":
        case = message.get("case")
        if not isinstance(case, str):
            raise ProtocolError("open needs a case id")
        await _broadcast(app, await _run(app, lambda s: s.open_case(case)))
    elif kind == "settings":
        client.settings = _settings_from(message, client.settings)
        await _send(client, {"type": "settings", "ok": True})
    elif kind == "render":
        view = protocol.parse_view(message)
        settings = client.settings
        request_id = message.get("id")
        future = worker.request_render(client.id, lambda s: s.render(view, settings))
        try:
            data, meta = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():
                return  # replaced by a newer request of this client: a stale frame, dropped
            raise
        await _send(client, protocol.pack({"type": "frame", "id": request_id, **meta}, data))
    elif kind == "clear":
        await _run(app, lambda s: s.clear())
        await _send(client, {"type": "cleared"})
    elif kind == "refine":
        steps = protocol.integer(message, "steps", 1, 500, 20)
        lr = protocol.number(message, "lr", 1e-6, 1e-1, 1e-3)
        anchored = bool(message.get("anchor", False))
        keep = protocol.number(message, "keep", 0.0, 100.0, KEEP_WEIGHT)
        loop = asyncio.get_running_loop()
        settings = client.settings

        def progress(stage, row):
            update = {"type": "progress", "stage": stage, "step": row["step"], "steps": steps,
                      "loss": row.get("voxel_loss", row.get("image_loss")), "anchor": row["anchor"]}
            asyncio.run_coroutine_threadsafe(_broadcast(app, update), loop)

        result = await _run(app, lambda s: s.refine(steps, lr, anchored, settings, progress, keep=keep))
        await _finish_change(app, "refined", result)
    elif kind == "undo":
        await _finish_change(app, "undone", await _run(app, lambda s: s.undo()))
    elif kind == "save":
        await _send(client, {"type": "saved", **await _run(app, lambda s: s.save())})


async def _finish_change(app: web.Application, kind: str, result: dict) -> None:
    crop = _labels_message(result["labels"])
    if crop is not None:
        await _broadcast(app, crop)
    info = await _run(app, lambda s: s.info())
    summary = {"type": kind, "changed": result["labels"] is not None, "undo_depth": info["undo_depth"]}
    if "rows" in result:
        losses = [r.get("voxel_loss", r.get("image_loss")) for r in result["rows"]]
        stages = sorted({r["kind"] for r in result["rows"]})  # "render" (3-D mask) and/or "voxel" (slice paint)
        summary.update(seconds=result["seconds"], first_loss=losses[0], last_loss=losses[-1], stages=stages)
    await _broadcast(app, summary)


async def _handle_binary(app: web.Application, client: _Client, data: bytes) -> None:
    header, payload = protocol.unpack(data)
    kind = header["type"]
    if kind == "strokes":
        def paint(s: ViewerSession) -> int:  # one job: checked against the case open when it runs
            info = s.info()
            if header.get("case") != info["case"]:
                raise ProtocolError(f"strokes for case {header.get('case')!r}, but {info['case']!r} is open")
            origin, values = protocol.parse_crop(header, payload, tuple(info["shape"]),
                                                 tuple(range(PAINT_BACKGROUND + 1)))
            return s.paint(origin, values)

        await _send(client, {"type": "painted", "voxels": await _run(app, paint)})
    elif kind == "mask":
        view = protocol.parse_view(header)
        origin, values = protocol.parse_crop(header, payload, (view.height, view.width),
                                             (NOT_TUMOUR, TUMOUR, DONT_CARE))
        await _run(app, lambda s: s.set_mask(view, (origin[1], origin[0]), values))
        await _send(client, {"type": "masked", "tumour": int((values == TUMOUR).sum()),
                             "not_tumour": int((values == NOT_TUMOUR).sum())})
    else:
        raise ProtocolError(f"binary messages are strokes or mask, not {kind!r}")


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limit = app["max_upload"]
    # aiohttp closes a socket on messages beyond max_msg_size; up to one MiB past the
    # protocol's limit the server still answers with an error instead.
    ws = web.WebSocketResponse(max_msg_size=limit + (1 << 20), heartbeat=30.0)
    await ws.prepare(request)
    client = _Client(ws)
    app["clients"].add(client)
    tasks: set[asyncio.Task] = set()

    async def handle(msg):
        request_type = None
        try:
            if msg.type == WSMsgType.TEXT:
                message = protocol.parse_text(msg.data)
                request_type = message["type"]
                await _handle_text(app, client, message)
            else:
                if len(msg.data) > limit:
                    raise ProtocolError(f"message of {len(msg.data)} bytes exceeds the limit of {limit}")
                await _handle_binary(app, client, msg.data)
        except (ProtocolError, NeumoursError) as exc:
            await _send(client, {"type": "error", "request": request_type, "message": str(exc)})
        except ValueError as exc:  # checks of the library (shapes, ranges) on a valid-looking message
            await _send(client, {"type": "error", "request": request_type, "message": str(exc)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one request end the server
            log.error("viewer request failed:\n%s", traceback.format_exc())
            await _send(client, {"type": "error", "request": request_type, "message": f"internal error: {exc}"})

    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                # Renders of one client run concurrently with its other requests, so a long
                # refinement never blocks the latest-frame slot (the worker orders the device work).
                task = asyncio.create_task(handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        app["clients"].discard(client)
        app["worker"].forget(client.id)
    return ws


def create_app(worker: DeviceWorker, token: str, max_upload: int = DEFAULT_MAX_UPLOAD) -> web.Application:
    """The aiohttp application of a started :class:`DeviceWorker` (whose session is ready)."""
    app = web.Application(middlewares=[_security], client_max_size=MAX_HTTP_BODY)
    app["worker"] = worker
    app["session"] = worker.wait_ready()
    app["token"] = token
    app["max_upload"] = int(max_upload)
    app["clients"] = set()
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/volume/{case}/{kind}", _volume)
    app.router.add_get("/ws", _websocket)
    return app

