"""Cost of the torch API (neumours.torch) against the raw kernels it wraps and against the pure-torch peer,
and a render-loss refinement step before and after its image loss moved to the device. Same GPU, same run.

Rows (forward + backward each, seconds per call, median of ``--repeats``):

- ``inr``: ``--points`` points through the paper network. raw: ``INR.forward_device`` +
  ``backward_device`` on preallocated buffers; autograd: ``INRModule(coords, patches).backward(g)``;
  peer: ``TorchINR`` in float32 (under bf16 autocast when the network runs bf16).
- ``cache``: the INR over a ``--shape`` case into probabilities, and the backward of a dense
  dL/dp. raw: ``VolumeCache`` + ``backprop_probabilities``; autograd: ``cache(net, vols).backward(g)``.
- ``render``: a probability volume rendered at ``--size``^2 and back. raw: ``render_device`` +
  ``render_backward_device``; autograd: ``render(probs, ...).backward(g)``; peer: the torch raymarcher
  (``render_reference``, float32, autograd).
- ``refine step``: ``--views`` views of ``--size``^2, path (a), one AdamW step. before: the image loss
  on the host (each view downloaded, numpy MSE, dL/dimage uploaded; the loop before this API);
  after: ``neumours.refine.refine(steps=1)`` (the loss in torch on the device), and the median step of a
  ``refine`` run (``refine step in a run``: the targets cross to the device once per run, not per step).

Overhead = autograd / raw - 1. Writes JSON.

    python benchmarks/torch_api.py [--checkpoint CKPT] [--points 262144] [--shape 240 240 155] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

from neumours.data import normalise  # noqa: E402
from neumours.data.phantom import make_case  # noqa: E402
from neumours.device import describe, empty_buffer, get_device, upload  # noqa: E402
from neumours.infer.backprop import backprop_probabilities  # noqa: E402
from neumours.infer.cache import VolumeCache  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inputs import CaseVolumes, grid_inputs  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402
from neumours.refine.loop import anchor_gradients, refine  # noqa: E402
from neumours.render import RenderSettings  # noqa: E402
from neumours.render.raymarch import ChannelVolume, Frame, Gradients, Scene, render_backward_device, render_device  # noqa: E402,E501
from neumours.render.reference import TorchScene, render_reference  # noqa: E402
from neumours.render.views import orbit_cameras, render_label_views  # noqa: E402
from neumours.torch import INRModule, cache, render  # noqa: E402
from neumours.train.optim import apply_gradients  # noqa: E402

SPACING = (1.0, 1.0, 1.0)


def host_loss_step(net: INRModule, vols, cameras, settings, targets, optimizer) -> float:
    """One path-(a) step as the loop ran before the torch API: images to the host, numpy MSE, dL/dimage back."""
    inr, device = net.inr, net.device
    cfg = inr.config
    inr.bridge.push_params()
    inr.zero_grad()
    vc = VolumeCache(inr, vols, keep_probs=True)
    scene = Scene(device, vc.shape, SPACING, probabilities=ChannelVolume(vc.probs_buffer, cfg.num_classes, vc.shape,
                                                                         channels_last=False))
    grads = Gradients.zeros(scene, mri=False, probabilities=True)
    loss = 0.0
    for camera, target in zip(cameras, targets):
        frame = Frame.allocate(device, camera.width, camera.height)
        render_device(scene, camera, settings, frame)
        diff = frame.to_numpy()[0].astype(np.float64) - target
        n = diff.size
        loss += float((diff * diff).sum() / n)
        render_backward_device(scene, camera, settings, frame, upload(device, (2 * diff / n).astype(np.float32)), grads)

    def fill(start, count, coords, patches):
        grid_inputs(cfg, vols, 0, vc.shape, start, count, coords, patches)

    backprop_probabilities(inr, grads.probabilities.buffer, vc.total, fill)
    anchor_gradients(None)
    apply_gradients(inr.bridge, [optimizer], 1.0)
    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="trained checkpoint (default: the paper network, random initialisation)")
    parser.add_argument("--tiny", action="store_true", help="the tiny network (to try the script on the CPU)")
    parser.add_argument("--points", type=int, default=1 << 18)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peers")
    parser.add_argument("--json", default="torch_api.json")
    add_device_argument(parser, default="cuda", note="cpu only to try the script at tiny sizes")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    on_gpu = device.info.type.name == "cuda"
    tdev = "cuda" if on_gpu else "cpu"
    if args.checkpoint:
        net = INRModule.load(args.checkpoint, device)
    else:
        net = INRModule(INRConfig.tiny() if args.tiny else INRConfig.paper(), device)
    inr, cfg = net.inr, net.config

    def sync():
        device.wait_for_idle()
        if on_gpu:
            torch.cuda.synchronize()

    def timed(fn):
        return time_it(fn, sync, repeats=args.repeats)["median_s"]

    rows = []
    rng = np.random.default_rng(0)

    # -- the INR ------------------------------------------------------------------------------
    n = args.points
    coords = torch.tensor(rng.uniform(-1, 1, (n, 3)), dtype=torch.float32, device=tdev)
    patches = torch.tensor(rng.normal(size=(n, cfg.patch_dim)), dtype=torch.float32, device=tdev)
    g_logits = torch.randn(n, cfg.num_classes, device=tdev)
    c_buf, p_buf = upload(device, coords.cpu().numpy()), upload(device, patches.cpu().numpy())
    g_buf, logits_buf = upload(device, g_logits.cpu().numpy()), empty_buffer(device, n * cfg.num_classes)
    ws = inr.workspace(n)

    def inr_raw():
        inr.bridge.push_params()
        inr.bridge.zero_grads()
        inr.forward_device(c_buf, p_buf, n, logits_buf, ws)
        inr.backward_device(c_buf, p_buf, n, g_buf, ws)
        inr.bridge.pull_grads()

    def inr_autograd():
        net.zero_grad()
        net(coords, patches).backward(g_logits)

    row = {"op": "inr", "size": f"{n} points", "raw s": timed(inr_raw), "autograd s": timed(inr_autograd)}
    if not args.no_torch:
        peer = TorchINR(cfg).to(tdev)
        peer.load_state_dict(net.state_dict())
        patches5 = patches.view(n, cfg.num_modalities, *(cfg.patch_size,) * 3)
        bf16 = inr.precision == "bf16"

        def inr_peer():
            peer.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = peer(coords, patches5)
            out.float().backward(g_logits)

        row["torch peer s"] = timed(inr_peer)
    rows.append(row)

    # -- the cache ----------------------------------------------------------------------------
    case = make_case(tuple(args.shape), seed=0)
    vols = CaseVolumes.upload(device, [normalise(case.images)])
    shape = tuple(args.shape)
    total = int(np.prod(shape))
    g_probs = torch.randn(cfg.num_classes, *shape, device=tdev)
    gp_buf = upload(device, g_probs.cpu().numpy())

    def cache_raw():
        inr.bridge.push_params()
        inr.bridge.zero_grads()
        VolumeCache(inr, vols, keep_probs=True)
        backprop_probabilities(inr, gp_buf, total,
                               lambda s, c, co, pa: grid_inputs(cfg, vols, 0, shape, s, c, co, pa))
        inr.bridge.pull_grads()

    def cache_autograd():
        net.zero_grad()
        cache(net, vols).backward(g_probs)

    rows.append({"op": "cache", "size": "x".join(map(str, shape)), "raw s": timed(cache_raw),
                 "autograd s": timed(cache_autograd)})

    # -- the renderer -------------------------------------------------------------------------
    settings = RenderSettings()
    camera = orbit_cameras(shape, SPACING, 1, size=(args.size, args.size))[0]
    with torch.no_grad():
        probs = cache(net, vols)
    probs_leaf = probs.clone().requires_grad_()
    g_image = torch.randn(args.size, args.size, 3, device=tdev)
    scene = Scene(device, shape, SPACING, probabilities=ChannelVolume(upload(device, probs.cpu().numpy()),
                                                                      cfg.num_classes, shape, channels_last=False))
    frame = Frame.allocate(device, args.size, args.size)
    gi_buf = upload(device, g_image.cpu().numpy())

    def render_raw():
        grads = Gradients.zeros(scene, mri=False, probabilities=True)
        render_device(scene, camera, settings, frame)
        render_backward_device(scene, camera, settings, frame, gi_buf, grads)

    def render_autograd():
        probs_leaf.grad = None
        render(probs_leaf, camera, settings, spacing=SPACING).backward(g_image)

    row = {"op": "render", "size": f"{args.size}^2", "raw s": timed(render_raw), "autograd s": timed(render_autograd)}
    if not args.no_torch:
        ref_probs = probs.detach().clone().requires_grad_()

        def render_peer():
            ref_probs.grad = None
            scene_t = TorchScene.build(shape, SPACING, settings, probabilities=ref_probs, dtype=torch.float32,
                                       device=tdev)
            render_reference(scene_t, camera)[0].backward(g_image)

        row["torch peer s"] = timed(render_peer)
    rows.append(row)

    # -- a refinement step, path (a) ----------------------------------------------------------
    cameras = orbit_cameras(shape, SPACING, args.views, size=(args.size, args.size))
    targets = render_label_views(device, case.label, SPACING, cameras, settings)
    initial = net.state_dict()
    optimizer = torch.optim.AdamW(inr.bridge.torch_parameters(), lr=1e-6, weight_decay=0.0)
    before = timed(lambda: host_loss_step(net, vols, cameras, settings, targets, optimizer))
    net.load_state_dict(initial)
    after = timed(lambda: refine(inr, vols, SPACING, cameras, settings, targets, steps=1, lr=1e-6))
    net.load_state_dict(initial)
    rows.append({"op": "refine step", "size": f"{args.views} x {args.size}^2", "raw s": before, "autograd s": after})
    # Inside a run (targets on the device once): the loop's own per-step wall time, each step ending synchronised.
    run = refine(inr, vols, SPACING, cameras, settings, targets, steps=args.repeats + 1, lr=1e-6)
    net.load_state_dict(initial)
    rows.append({"op": "refine step in a run", "size": f"{args.views} x {args.size}^2", "raw s": before,
                 "autograd s": float(np.median([r["seconds"] for r in run[1:]]))})

    for r in rows:
        r["overhead %"] = round(100 * (r["autograd s"] / r["raw s"] - 1), 1)
        if "torch peer s" in r:
            r["peer / autograd"] = round(r["torch peer s"] / r["autograd s"], 2)
        for k in ("raw s", "autograd s", "torch peer s"):
            if k in r:
                r[k] = round(r[k], 5)
    print(f"device: {describe(device)}; network {cfg.num_params} parameters, precision {inr.precision}")
    print("refine step: 'raw' = the loss on the host (before), 'autograd' = neumours.refine.refine (after)")
    print_table(rows, ["op", "size", "raw s", "autograd s", "overhead %", "torch peer s", "peer / autograd"])
    write_json(args.json, {"device": describe(device), "host": platform.node(), "precision": inr.precision,
                           "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
