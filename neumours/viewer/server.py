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
- ``GET /ws``: the WebSocket (:mod:`neumours.viewer.protocol`); a browser's
  handshake must come from the page's own origin (``Origin`` equal to ``Host``; 403 otherwise);
- ``GET /favicon.ico``: the page's icon.

Clients: **one editor at a time**. The first page to connect edits (paint, 3-D
strokes, Refine, Undo, Cancel, case switch, Save); every other page is read-only:
it follows the editor's case and refinements and orbits its own 3-D view. When
the editor leaves, the longest-connected page becomes the editor (a ``role``
message tells each page which it is).

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
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from neumours.conventions import MODALITIES
from neumours.errors import NeumoursError
from neumours.refine.masks import DONT_CARE, NOT_TUMOUR, TUMOUR
from neumours.viewer import protocol
from neumours.viewer.protocol import OVERLAYS, PAINT_BACKGROUND, ProtocolError
from neumours.viewer.session import KEEP_WEIGHT, RefineCancelled, ViewerSession, ViewSettings
from neumours.viewer.worker import DeviceWorker

STATIC = Path(__file__).parent / "static"
#: The page's files: URL name -> (file under static/, content type). Nothing else is served.
STATIC_FILES = {
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
    "niivue.js": ("niivue/niivue.js", "text/javascript"),
    "NIIVUE_LICENSE": ("niivue/LICENSE", "text/plain"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
TOKEN_COOKIE = "neumours_token"
#: Largest binary WebSocket message (a crop of a 240 x 240 x 155 case is 8.9 MB).
DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
#: Largest HTTP request body (the server takes no HTTP uploads).
MAX_HTTP_BODY = 64 * 1024
#: Binary messages up to this many times the upload limit are read and answered with an error;
#: beyond it aiohttp closes the socket (code 1009, which the page reports).
OVERSIZE_REPLY_FACTOR = 8
#: WebSocket ping interval: a page that misses its pong for half of it is dropped. Long: on a loaded
#: CPU a refinement step can hold the interpreter for many seconds, and the page must survive it.
HEARTBEAT_S = 120.0
#: Requests only the editing page may make.
EDIT_TYPES = ("open", "strokes", "mask", "clear", "refine", "undo", "save", "cancel")
_OVERLAY_VOLUMES = ("inr", "denoised", "ground_truth", "probabilities")
log = logging.getLogger("neumours.viewer")


@web.middleware
async def _security(request: web.Request, handler):
    """Token on every request; security headers on every response."""
    expected = request.app[TOKEN]
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
    response.set_cookie(TOKEN_COOKIE, request.app[TOKEN], httponly=True, samesite="Strict", path="/")
    return response


async def _static(request: web.Request) -> web.StreamResponse:
    entry = STATIC_FILES.get(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / entry[0], headers={"Content-Type": entry[1]})


async def _run(request_or_app, job):
    """Run ``job(session)`` on the device worker and await it."""
    app = request_or_app if isinstance(request_or_app, web.Application) else request_or_app.app
    return await asyncio.wrap_future(app[WORKER].submit(job))


async def _favicon(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def _volume(request: web.Request) -> web.Response:
    case, kind = request.match_info["case"], request.match_info["kind"]
    session: ViewerSession = request.app[SESSION]
    if case not in session.refs or kind not in MODALITIES + _OVERLAY_VOLUMES:
        raise web.HTTPNotFound()
    try:
        if kind in MODALITIES + ("inr", "ground_truth"):  # host data: served while a refinement runs
            data, name = await asyncio.to_thread(session.volume_bytes, case, kind)
        else:
            data, name = await _run(request, lambda s: s.volume_bytes(case, kind))
    except NeumoursError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"Content-Disposition": f'inline; filename="{name}"', "X-Volume-Name": name})


@dataclass
class _State:
    """The server's mutable state: connected pages, the editing page, whether a refinement runs."""

    clients: set = field(default_factory=set)
    editor: object = None
    refining: bool = False


# The application's shared objects (typed keys: aiohttp warns about plain strings).
WORKER = web.AppKey("worker", DeviceWorker)
SESSION = web.AppKey("session", ViewerSession)
TOKEN = web.AppKey("token", str)
MAX_UPLOAD = web.AppKey("max_upload", int)
STATE = web.AppKey("state", _State)


class _Client:
    """One WebSocket connection: its socket and its view settings."""

    ids = itertools.count()

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.id = next(self.ids)
        self.settings = ViewSettings()


def _role_message(app: web.Application, client: _Client) -> dict:
    editor = app[STATE].editor
    return {"type": "role", "editor": editor is client, "clients": len(app[STATE].clients)}


async def _assign_editor(app: web.Application) -> None:
    """Make the longest-connected page the editor if none is; tell every page its role."""
    clients = sorted(app[STATE].clients, key=lambda c: c.id)
    if app[STATE].editor not in app[STATE].clients:
        app[STATE].editor = clients[0] if clients else None
    for client in clients:
        await _send(client, _role_message(app, client))


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
    for client in list(app[STATE].clients):
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
    hidden = message.get("hidden_labels", list(current.hidden_labels))
    if not (isinstance(hidden, list) and len(hidden) <= 3
            and all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 3 for h in hidden)):
        raise ProtocolError("hidden_labels must be a list of labels 1..3 (NCR, ED, ET)")
    return ViewSettings(mods, (lo, hi), protocol.number(message, "gamma", 0.1, 5.0, current.gamma),
                        protocol.number(message, "step", 0.002, 0.2, current.step),
                        protocol.number(message, "label_opacity", 0.0, 10.0, current.label_opacity),
                        overlay, protocol.integer(message, "quality", 10, 100, current.quality),
                        tuple(sorted(set(hidden))),
                        protocol.number(message, "threshold", 0.05, 0.95, current.threshold))


def _pending_messages(session: ViewerSession) -> list[bytes]:
    """The open case's pending corrections as binary messages the page redraws (paint crop, 3-D mask)."""
    paint, mask = session.pending_crops()
    case = session.state.case.case_id
    out = []
    if paint is not None:
        origin, crop = paint
        out.append(protocol.pack({"type": "pending_paint", "case": case, "origin": list(origin),
                                  "shape": list(crop.shape)}, crop.tobytes()))
    if mask is not None:
        view, (x0, y0), crop = mask
        camera = {"azimuth": view.azimuth, "elevation": view.elevation, "zoom": view.zoom,
                  "target": list(view.target), "fov": view.fov}
        out.append(protocol.pack({"type": "pending_mask", "case": case, "camera": camera, "width": view.width,
                                  "height": view.height, "origin": [y0, x0], "shape": list(crop.shape)},
                                 crop.tobytes()))
    return out


def _status(session: ViewerSession) -> dict:
    """What every page shows of the shared state: history, pending corrections, tumour volumes."""
    info = session.info()
    keys = ("undo_depth", "refinements", "history", "volumes_ml", "pending", "pending_elsewhere", "case")
    return {"type": "status", **{k: info[k] for k in keys}}


async def _handle_text(app: web.Application, client: _Client, message: dict) -> None:
    kind = message["type"]
    worker: DeviceWorker = app[WORKER]
    session: ViewerSession = app[SESSION]
    if kind in EDIT_TYPES and app[STATE].editor is not client:
        raise ProtocolError(f"{kind}: this page is read-only (another page is editing; it views only)")
    if kind == "ping":
        await _send(client, {"type": "pong", "id": message.get("id"), "dropped": worker.dropped,
                             "rendered": worker.rendered})
    elif kind == "hello":
        def hello(s):
            return s.info(), _pending_messages(s)

        # While a refinement holds the device thread, a new page is answered from host state at once.
        info, pending = hello(session) if app[STATE].refining else await _run(app, hello)
        await _send(client, _role_message(app, client))
        await _send(client, info)
        for m in pending:
            await _send(client, m)
    elif kind == "open":
        case = message.get("case")
        if not isinstance(case, str):
            raise ProtocolError("open needs a case id")
        if app[STATE].refining:
            raise ProtocolError("open: a refinement is running (Cancel it or wait)")
        info, pending = await _run(app, lambda s: (s.open_case(case), _pending_messages(s)))
        await _broadcast(app, info)
        for m in pending:
            await _broadcast(app, m)
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
    elif kind == "probe":
        voxel = message.get("voxel")
        if not (isinstance(voxel, list) and len(voxel) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in voxel)):
            raise ProtocolError("probe needs voxel: three integers")
        await _send(client, session.probe(voxel))  # host arrays only: answered while a refinement runs
    elif kind == "clear":
        what = message.get("what", "all")
        if what not in ("all", "paint", "mask"):
            raise ProtocolError("clear's what must be all, paint or mask")
        status = await _run(app, lambda s: (s.clear(what), _status(s))[1])
        await _send(client, {"type": "cleared", "what": what})
        await _broadcast(app, status)
    elif kind == "cancel":
        if not app[STATE].refining:
            raise ProtocolError("cancel: no refinement is running")
        session.cancel()
        await _send(client, {"type": "cancelling"})
    elif kind == "refine":
        steps = protocol.integer(message, "steps", 1, 500, 20)
        lr = protocol.number(message, "lr", 1e-6, 1e-1, 1e-3)
        anchored = bool(message.get("anchor", False))
        keep = protocol.number(message, "keep", 0.0, 100.0, KEEP_WEIGHT)
        if app[STATE].refining:
            raise ProtocolError("refine: a refinement is already running")
        loop = asyncio.get_running_loop()
        settings = client.settings
        started = time.perf_counter()

        def progress(stage, row):  # on the worker thread, after each step
            elapsed = time.perf_counter() - started
            done = row["step"] + 1
            update = {"type": "progress", "stage": stage, "step": row["step"], "steps": steps,
                      "loss": row.get("voxel_loss", row.get("image_loss")), "anchor": row["anchor"],
                      "elapsed": elapsed, "remaining": elapsed / done * (steps - done)}
            asyncio.run_coroutine_threadsafe(_send(client, update), loop)
            worker.serve_renders()  # frames keep flowing to every page while the refinement runs

        app[STATE].refining = True
        await _broadcast(app, {"type": "busy", "refining": True})
        try:
            result = await _run(app, lambda s: s.refine(steps, lr, anchored, settings, progress, keep=keep))
        except RefineCancelled as exc:
            await _broadcast(app, {"type": "cancelled", "message": str(exc)})
            return
        finally:
            app[STATE].refining = False
            await _broadcast(app, {"type": "busy", "refining": False})
        await _finish_change(app, "refined", result)
    elif kind == "undo":
        if app[STATE].refining:
            raise ProtocolError("undo: a refinement is running (Cancel restores the weights)")
        result = await _run(app, lambda s: s.undo())
        await _finish_change(app, "undone", result)
        if result.get("restored_here"):
            for m in await _run(app, _pending_messages):
                await _broadcast(app, m)
    elif kind == "save":
        await _send(client, {"type": "saved", **await _run(app, lambda s: s.save())})


async def _finish_change(app: web.Application, kind: str, result: dict) -> None:
    crop = _labels_message(result["labels"])
    if crop is not None:
        await _broadcast(app, crop)
    status = await _run(app, _status)
    summary = {"type": kind, "changed": result["labels"] is not None, "undo_depth": status["undo_depth"]}
    if "rows" in result:
        losses = [r.get("voxel_loss", r.get("image_loss")) for r in result["rows"]]
        stages = sorted({r["kind"] for r in result["rows"]})  # "render" (3-D mask) and/or "voxel" (slice paint)
        summary.update(seconds=result["seconds"], first_loss=losses[0], last_loss=losses[-1], stages=stages)
    if "case" in result:
        summary["case"] = result["case"]
    await _broadcast(app, summary)
    await _broadcast(app, status)


async def _handle_binary(app: web.Application, client: _Client, data: bytes) -> None:
    header, payload = protocol.unpack(data)
    kind = header["type"]
    if kind in EDIT_TYPES and app[STATE].editor is not client:
        raise ProtocolError(f"{kind}: this page is read-only (another page is editing; it views only)")
    if kind == "strokes":
        replace = header.get("replace", False)
        if not isinstance(replace, bool):
            raise ProtocolError("strokes' replace must be true or false")

        def paint(s: ViewerSession) -> int:  # one job: checked against the case open when it runs
            info = s.info()
            if header.get("case") != info["case"]:
                raise ProtocolError(f"strokes for case {header.get('case')!r}, but {info['case']!r} is open")
            origin, values = protocol.parse_crop(header, payload, tuple(info["shape"]),
                                                 tuple(range(PAINT_BACKGROUND + 1)))
            return s.paint(origin, values, replace=replace)

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


def _same_origin(request: web.Request) -> bool:
    """No Origin (not a browser: scripts, tests) or an Origin whose host:port is the request's Host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    if not _same_origin(request):
        raise web.HTTPForbidden(text="WebSocket from another origin: open the viewer's own URL")
    limit = app[MAX_UPLOAD]
    # aiohttp closes a socket on messages beyond max_msg_size; up to OVERSIZE_REPLY_FACTOR times the
    # protocol's limit the server reads the message and answers with an error instead.
    ws = web.WebSocketResponse(max_msg_size=limit * OVERSIZE_REPLY_FACTOR + (1 << 20), heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    client = _Client(ws)
    app[STATE].clients.add(client)
    await _assign_editor(app)
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
                    raise ProtocolError(f"message of {len(msg.data)} bytes exceeds the limit of {limit} "
                                        "(--max-upload-mb)")
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
        app[STATE].clients.discard(client)
        app[WORKER].forget(client.id)
        if app[STATE].editor is client:
            app[STATE].editor = None
        await _assign_editor(app)
    return ws


def create_app(worker: DeviceWorker, token: str, max_upload: int = DEFAULT_MAX_UPLOAD) -> web.Application:
    """The aiohttp application of a started :class:`DeviceWorker` (whose session is ready)."""
    app = web.Application(middlewares=[_security], client_max_size=MAX_HTTP_BODY,
                          handler_args={"max_line_size": 256 * 1024, "max_field_size": 256 * 1024})
    app[WORKER] = worker
    app[SESSION] = worker.wait_ready()
    app[TOKEN] = token
    app[MAX_UPLOAD] = int(max_upload)
    app[STATE] = _State()
    app.router.add_get("/", _index)
    app.router.add_get("/favicon.ico", _favicon)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/volume/{case}/{kind}", _volume)
    app.router.add_get("/ws", _websocket)
    return app
