"""``neumours view`` on the GPU: server render rate, streamed frame round trip, correction round trip, memory.

A 240 x 240 x 155 phantom case and an untrained paper-size INR (precision auto:
bf16 tensor cores on CUDA) served by the viewer's own server on loopback. Timed:

- server render of a 1920 x 1080 frame of the session's scene (MRI + INR labels,
  empty-space skipping), frames/s, against the torch reference integrator
  (``neumours.render.reference``, float32, same GPU, same camera) in the same run;
- streamed 1280 x 720 frames over the WebSocket: time from sending the render
  request to the decoded JPEG (render + encode + transfer + decode), median and p95;
- a correction round trip: paint a 16^3 ET crop, 20 refinement steps, re-cache, the
  changed crop and the next 1280 x 720 frame, median of several;
- device memory held by the session (torch.cuda.mem_get_info before the session
  and after the round trips; the torch peer's cached buffers are freed first, so
  they do not count as the session's).

    python benchmarks/viewer_latency.py [--shape 240 240 155] [--frames 200] [--corrections 5] [--json viewer_latency.json]
    python benchmarks/viewer_latency.py --device cpu --shape 24 24 16 --frames 3 --corrections 1 --small   # try it
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from PIL import Image  # noqa: E402

from neumours.data.phantom import make_case, write_case  # noqa: E402
from neumours.model.checkpoint import save_checkpoint  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.render import Frame, render_device  # noqa: E402
from neumours.render.reference import TorchScene, camera_rays, march_rays  # noqa: E402
from neumours.viewer import protocol  # noqa: E402
from neumours.viewer.protocol import SERVER_BINARY_TYPES  # noqa: E402
from neumours.viewer.server import create_app  # noqa: E402
from neumours.viewer.session import ViewSettings  # noqa: E402


def serve(app):
    """The app on 127.0.0.1 and a free port in a thread; returns the port."""
    box, ready = {}, threading.Event()

    def run():
        loop = asyncio.new_event_loop()

        async def main():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["port"] = site._server.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.Event().wait()

        loop.run_until_complete(main())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(600)
    return box["port"]


def percentile_ms(values, q):
    return float(np.percentile(np.asarray(values) * 1e3, q))


async def stream(url, token, frames, corrections, case_id, shape, width, height):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws?token={token}", max_msg_size=0) as ws:
            async def reply(*types):
                while True:
                    msg = await ws.receive(timeout=600)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        header, payload = protocol.unpack(msg.data, SERVER_BINARY_TYPES)
                        if header["type"] in types:
                            return header, bytes(payload)
                    else:
                        message = json.loads(msg.data)
                        if message["type"] == "error":
                            raise RuntimeError(message["message"])
                        if message["type"] in types:
                            return message, b""

            async def one_frame(azimuth):
                t0 = time.perf_counter()
                await ws.send_str(json.dumps({"type": "render", "id": 0, "width": width, "height": height,
                                              "camera": {"azimuth": azimuth, "elevation": 20.0}}))
                header, jpeg = await reply("frame")
                Image.open(io.BytesIO(jpeg)).convert("RGB").load()
                return time.perf_counter() - t0, header

            for i in range(3):  # warm-up
                await one_frame(float(i))
            stream_times, render_ms, encode_ms = [], [], []
            for i in range(frames):
                seconds, header = await one_frame(3.0 * i)
                stream_times.append(seconds)
                render_ms.append(header["render_ms"])
                encode_ms.append(header["encode_ms"])
            encoder = header["encoder"]

            side = max(1, min(16, *(s // 3 for s in shape)))
            origin = [s // 2 - side // 2 for s in shape]
            round_trips, refine_s, phases = [], [], []
            for k in range(corrections):
                t0 = time.perf_counter()
                crop = np.full((side,) * 3, 3, np.uint8)
                await ws.send_bytes(protocol.pack({"type": "strokes", "case": case_id, "origin": origin,
                                                   "shape": [side] * 3}, crop.tobytes()))
                await reply("painted")
                t_painted = time.perf_counter()
                await ws.send_str(json.dumps({"type": "refine", "steps": 20, "lr": 1e-3}))
                refined, _ = await reply("refined")
                t_refined = time.perf_counter()
                await one_frame(10.0 + k)
                t_frame = time.perf_counter()
                round_trips.append(t_frame - t0)
                refine_s.append(refined["seconds"])
                # Where the round trip goes: the paint reply, the refine reply around the session's own
                # refine + re-cache time (queueing, the changed crop and the status messages), the frame.
                phases.append({"paint": t_painted - t0, "refine_reply_extra": t_refined - t_painted - refined["seconds"],
                               "frame": t_frame - t_refined})
                await ws.send_str(json.dumps({"type": "undo"}))
                await reply("undone")
            return {"stream_times": stream_times, "render_ms": render_ms, "encode_ms": encode_ms,
                    "encoder": encoder, "round_trips": round_trips, "refine_s": refine_s, "phases": phases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--frames", type=int, default=200, help="streamed frames timed")
    parser.add_argument("--corrections", type=int, default=5, help="correction round trips timed")
    parser.add_argument("--repeats", type=int, default=50, help="server renders timed (torch: a tenth, at least 2)")
    parser.add_argument("--small", action="store_true", help="tiny network and frames (to try the script on a CPU)")
    parser.add_argument("--json", default="viewer_latency.json")
    add_device_argument(parser, default="cuda")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    free_before = torch.cuda.mem_get_info()[0] if on_gpu else None

    from neumours.cli.view import start_viewer
    from neumours.device import describe, get_device

    tmp = Path(tempfile.mkdtemp(prefix="viewer_latency_"))
    shape = tuple(args.shape)
    write_case(make_case(shape, seed=0), tmp / "data")  # the case the viewer serves
    config = INRConfig.tiny() if args.small else INRConfig.paper()
    checkpoint = save_checkpoint(tmp / "inr.safetensors", INR(config, get_device(args.device), seed=0).bridge.params
                                 .detach().cpu().numpy(), config)
    worker = start_viewer(tmp / "data", checkpoint, tmp / "out", args.device)
    session = worker.session
    token = secrets.token_urlsafe(16)
    port = serve(create_app(worker, token))
    full = (64, 36) if args.small else (1920, 1080)
    streamed = (64, 36) if args.small else (1280, 720)

    # ------------------------------------------------ server render, Slang vs torch, on the worker thread
    def bench_render(s):
        view = protocol.View(30.0, 20.0, 1.0, (0.0, 0.0, 0.0), *full)
        settings = s.render_settings(ViewSettings())
        scene, frame = s.scene("inr"), Frame.allocate(s.device, *full)
        camera = s.camera(view)
        slang = time_it(lambda: render_device(scene, camera, settings, frame), s.device.wait_for_idle, args.repeats)
        cuda = {"dtype": torch.float32, "device": "cuda" if on_gpu else "cpu"}
        case = s.state.case
        t_scene = TorchScene.build(case.shape, case.spacing, settings, volumes=torch.as_tensor(case.images, **cuda),
                                   labels=s.state.labels, **cuda)
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)

        @torch.no_grad()
        def peer():
            march_rays(t_scene, *camera_rays(camera, **cuda))

        timed = time_it(peer, sync, max(2, args.repeats // 10), warmup=1)
        del t_scene
        if on_gpu:  # the peer's buffers stay in torch's cache otherwise, and would count as the session's
            torch.cuda.empty_cache()
        return slang, timed

    slang, peer = worker.submit(bench_render).result()
    streamed_result = asyncio.run(stream(f"http://127.0.0.1:{port}", token, args.frames, args.corrections,
                                         session.state.case.case_id, shape, *streamed))
    held = (free_before - torch.cuda.mem_get_info()[0]) / 2**30 if on_gpu else None
    torch_cached = torch.cuda.memory_reserved() / 2**30 if on_gpu else None  # of `held`: torch's allocator
    worker.stop()

    st = streamed_result
    results = {"device": describe(session.device), "torch": torch.__version__, "python": platform.python_version(),
               "shape": shape, "precision": session.inr.config.precision, "encoder": st["encoder"],
               "render_full": {"size": full, "slang": slang, "torch": peer},
               "streamed": {"size": streamed, "median_ms": percentile_ms(st["stream_times"], 50),
                            "p95_ms": percentile_ms(st["stream_times"], 95),
                            "server_render_median_ms": float(np.median(st["render_ms"])),
                            "encode_median_ms": float(np.median(st["encode_ms"]))},
               "correction": {"median_s": float(np.median(st["round_trips"])),
                              "refine_and_recache_median_s": float(np.median(st["refine_s"])),
                              **{f"{name}_median_s": float(np.median([p[name] for p in st["phases"]]))
                                 for name in ("paint", "refine_reply_extra", "frame")}},
               "gpu_memory_held_gib": held, "gpu_memory_torch_reserved_gib": torch_cached}
    write_json(args.json, results)
    rows = [
        {"what": f"server render {full[0]}x{full[1]}, Slang", "value": f"{1 / slang['median_s']:.0f} frames/s",
         "vs torch": f"{peer['median_s'] / slang['median_s']:.1f}x"},
        {"what": f"server render {full[0]}x{full[1]}, torch reference", "value": f"{1 / peer['median_s']:.1f} frames/s",
         "vs torch": ""},
        {"what": f"streamed {streamed[0]}x{streamed[1]} round trip ({st['encoder']})",
         "value": f"median {results['streamed']['median_ms']:.1f} ms, p95 {results['streamed']['p95_ms']:.1f} ms",
         "vs torch": ""},
        {"what": "correction: paint + 20 steps + re-cache + frame", "value": f"{results['correction']['median_s']:.2f} s",
         "vs torch": ""},
        {"what": "  of it: paint reply / refine + re-cache / rest of the refine reply / frame",
         "value": " / ".join(f"{results['correction'][k]:.3f}" for k in
                             ("paint_median_s", "refine_and_recache_median_s", "refine_reply_extra_median_s", "frame_median_s"))
         + " s", "vs torch": ""},
        {"what": "device memory held", "value": f"{held:.2f} GiB (torch's allocator: {torch_cached:.2f})" if held is not None else "n/a (CPU)", "vs torch": ""},
    ]
    print(f"device: {results['device']}  precision {results['precision']}  volume {shape}")
    print_table(rows, ["what", "value", "vs torch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
