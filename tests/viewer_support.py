"""Shared by the viewer tests: a small phantom dataset, a fitted tiny checkpoint, a server on a free port."""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neumours.model.config import INRConfig

CONFIG = INRConfig.tiny()
SHAPE = (40, 40, 32)


def write_phantoms(root: Path, count: int = 2) -> list[Path]:
    from neumours.data.phantom import make_case, write_case

    return [write_case(make_case(SHAPE, seed=3, index=i), root) for i in range(count)]


def store_as_lps(case_dir: Path) -> None:
    """Rewrite a case's files with the first two axes stored reversed (affine diag(-1, -1, 1), as many
    BraTS files are): the same image in the world, another voxel order in the file."""
    import nibabel as nib

    for path in sorted(case_dir.glob("*.nii*")):
        img = nib.load(path)
        data = np.asarray(img.dataobj)[::-1, ::-1, :]
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.array(data.shape[:2]) - 1
        out = nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip, img.header)
        nib.save(out, path)


def fitted_checkpoint(case_dir: Path, path: Path, device, steps: int = 150) -> Path:
    """A tiny INR fitted to the case's ground truth with the voxel loss (a stand-in for training)."""
    from neumours.data import load_case, normalise
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.inputs import CaseVolumes
    from neumours.model.inr import INR
    from neumours.refine.voxel_loss import PaintedVoxels, refine_voxels

    case = load_case(case_dir)
    inr = INR(CONFIG, device, seed=0)
    vols = CaseVolumes.upload(device, [normalise(case.images)])
    rng = np.random.default_rng(0)
    tumour = np.argwhere(case.label > 0)
    brain = np.argwhere(case.images[0] > 0)
    outside = np.argwhere(case.images[0] == 0)  # else the model has never seen the air and calls it tumour
    positions = np.concatenate([tumour[rng.choice(len(tumour), 1500)], brain[rng.choice(len(brain), 2000)],
                                outside[rng.choice(len(outside), 1000)]])
    points = PaintedVoxels.upload(inr, vols, positions, case.label[tuple(positions.T)])
    refine_voxels(inr, points, steps=steps, lr=2e-2)
    return save_checkpoint(path, inr.bridge.params.numpy(), CONFIG)


@dataclass
class RunningServer:
    url: str
    token: str
    worker: object
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event | None = None
    app: object = None

    def drop_sockets(self) -> None:
        """Close every page's WebSocket from the server's side (as a restart or a network drop would)."""
        from neumours.viewer.server import STATE

        async def drop():
            for client in list(self.app[STATE].clients):
                await client.ws.close(code=1012, message=b"server restart")

        asyncio.run_coroutine_threadsafe(drop(), self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        self.worker.stop()


def start_server(source: Path, checkpoint: Path, out: Path | None = None, max_upload: int | None = None,
                 device: str = "cpu") -> RunningServer:
    """``neumours view``'s server on 127.0.0.1 and a free port, in a thread of its own."""
    from aiohttp import web

    from neumours.cli.view import start_viewer
    from neumours.viewer.server import DEFAULT_MAX_UPLOAD, create_app

    worker = start_viewer(source, checkpoint, out, device)
    token = secrets.token_urlsafe(16)
    app = create_app(worker, token, max_upload or DEFAULT_MAX_UPLOAD)
    ready = threading.Event()
    box: dict = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop

        async def main() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["port"] = site._server.sockets[0].getsockname()[1]
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await runner.cleanup()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("viewer server did not start")
    return RunningServer(f"http://127.0.0.1:{box['port']}", token, worker, thread, box["loop"], box["stop"], app)
