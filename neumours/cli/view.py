"""The ``neumours view`` command: an interactive browser viewer with live INR corrections.

    neumours view CASE_OR_DATASET --checkpoint CKPT [--out DIR] [--port P] [--host 127.0.0.1]
                  [--device KIND] [--precision P] [--no-browser]

Prints one line with the URL (``http://127.0.0.1:P/?token=...``) and serves until
interrupted. Everything is checked before the server starts (cases, checkpoint,
output folder, device), each problem one ``neumours: error:`` line.
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
from pathlib import Path

from neumours.cli.options import add_command, add_device_option, add_precision_option, finite_float, int_range
from neumours.errors import NeumoursError

INSTALL_HINT = "neumours view needs aiohttp and Pillow: pip install 'neumours[view]'"


def _require_extra() -> None:
    try:
        import aiohttp  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        raise NeumoursError(INSTALL_HINT) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_viewer(source, checkpoint, out=None, device: str = "auto", precision: str = "auto"):
    """The cases, a started :class:`~neumours.viewer.worker.DeviceWorker` with the first case open, and the refs.

    ``precision``: the INR kernels' precision ("auto", "fp32" or "bf16"), as ``segment --precision``.

    Raises:
        NeumoursError: no cases, a bad checkpoint, an output folder that holds inputs
            or cannot be written, an unavailable device.
    """
    from neumours.data import list_cases
    from neumours.device import get_device
    from neumours.data.layouts import case_files
    from neumours.outputs import Output, check_outputs
    from neumours.viewer.session import ViewerSession
    from neumours.viewer.worker import DeviceWorker

    refs = list_cases(source)
    if out is not None:  # Save writes there: a folder of its own, holding no input
        check_outputs([Output(Path(out), "--out", folder=True)], [*case_files(refs), ("--checkpoint", checkpoint)])

    def make_session() -> ViewerSession:
        return ViewerSession(refs, checkpoint, get_device(device), out, precision=precision)

    worker = DeviceWorker(make_session)
    try:
        worker.wait_ready()
        worker.submit(lambda s: s.open_case(refs[0].case_id)).result()
    except BaseException:
        worker.stop()
        raise
    return worker


def view_command(args) -> None:
    """Run ``neumours view`` with parsed arguments (see :func:`add_parsers`)."""
    _require_extra()  # --port and --max-upload-mb are checked by their parser types
    import asyncio
    import socket

    from aiohttp import web

    from neumours.viewer.server import create_app

    worker = start_viewer(args.source, args.checkpoint, args.out, args.device, args.precision)
    token = secrets.token_urlsafe(24)
    app = create_app(worker, token, max_upload=int(args.max_upload_mb * 1024 * 1024))
    if not _is_loopback(args.host):
        print(f"neumours: warning: serving on {args.host}, reachable from other machines; anyone with the "
              "URL's token can view the cases and change the model", file=sys.stderr)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, args.host, args.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NeumoursError(f"{args.host}:{args.port}: cannot listen ({exc.strerror or exc})") from None
        sock = site._server.sockets[0]  # the bound port (useful with --port 0)
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if sock.family == socket.AF_INET6 else args.host
        url = f"http://{host}:{port}/?token={token}"
        print(url, flush=True)
        if not args.no_browser:
            import webbrowser

            try:
                webbrowser.open(url)
            except webbrowser.Error:
                pass
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    finally:
        worker.stop()


def add_parsers(sub) -> None:
    """Add the ``view`` subcommand to the ``neumours`` command's subparsers."""
    p = add_command(sub, "view", "interactive browser viewer: slices, live 3-D render, corrections that refine the INR",
                    "Serve a browser viewer of a case (or a dataset folder: a case list to switch between) "
                    "segmented by an INR checkpoint: NiiVue slice views with the segmentation overlay, the Slang "
                    "raymarcher's 3-D view streamed from the device, and corrections (slice paint, 3-D strokes) "
                    "that refine the INR's weights and update both views. Prints the URL with its access token.",
                    epilog=f"Needs the view extra: {INSTALL_HINT.split(': ', 1)[1]}",
                    examples=("neumours view data --checkpoint run/best.safetensors --out refined/",
                              "neumours view data --checkpoint run/best.safetensors --precision fp32 --no-browser"))
    p.add_argument("source", type=Path, help="a case folder or a dataset folder of cases (any supported layout)")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for Save (refined checkpoint and segmentation); without it Save is disabled")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback warns)")
    p.add_argument("--port", type=int_range(0, 65535), default=8765, help="TCP port (0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open the local web browser")
    p.add_argument("--max-upload-mb", type=finite_float(gt=0, max=4096), default=32.0,
                   help="largest correction message from the page, MiB")
    add_device_option(p)
    add_precision_option(p)
    p.set_defaults(func=view_command)
