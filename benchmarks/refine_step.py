"""Seconds per render-loss refinement step: path (a) (through the volume cache), path (b) (the
INR at the ray samples) and the path-(a) loop in torch, same GPU, same run.

A step: d(image loss)/d(weights) summed over the views, clip to norm 1, one AdamW
step through the bridge (``neumours.refine.loop.refine`` with ``steps=1``).
Case: a 240 x 240 x 155 phantom; network: the paper's, from ``--checkpoint`` (else
its random initialisation); targets: a "clinician's correction" of the ground truth
(the enhancing tumour grown by 2 voxels into the rest of the tumour) rendered from
``--views`` orbiting cameras, dt = 0.02. Rows:

- full views at each ``--sizes`` (e.g. 64 .. 512 pixels square): where (b), whose
  cost grows with pixels x samples per ray, overtakes (a), whose cost is set by the
  voxels;
- ``masked``: the largest size with "don't care" everywhere except a box around
  the tumour in each view (a local correction): (b) marches only those rays;
- ``torch (a)``: the same loop in torch float32 (TorchINR over the grid without
  autograd, the reference raymarcher with autograd into the probability volume,
  then the INR recomputed chunk by chunk with autograd), at the largest size.

Also prints the INR evaluations each path made and how far the two paths' images and
gradients are apart (the discretisation: (a) renders trilinear mixes of softmax(INR)
at the voxels, (b) softmax(INR) at each sample). Writes JSON.

    python benchmarks/refine_step.py [--checkpoint CKPT] [--sizes 64 128 256 512] [--views 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

from neumours.data import normalise  # noqa: E402
from neumours.data.phantom import make_case  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.eval.metrics import region_scores  # noqa: E402
from neumours.infer.cache import VolumeCache  # noqa: E402
from neumours.model.checkpoint import load_checkpoint  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inputs import CaseVolumes  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402
from neumours.render import RenderSettings  # noqa: E402
from neumours.render.reference import TorchScene, render_reference  # noqa: E402
from neumours.refine.loop import PATHS, refine, weight_gradients  # noqa: E402
from neumours.render.views import orbit_cameras, render_label_views  # noqa: E402
from neumours.refine.reference import chunk_probabilities, grid_probabilities  # noqa: E402

SPACING = (1.0, 1.0, 1.0)


def corrected_labels(label: np.ndarray, grow: int = 2) -> np.ndarray:
    """The ground truth with the enhancing tumour (3) grown by ``grow`` voxels inside the whole tumour."""
    out = label.copy()
    out[ndimage.binary_dilation(label == 3, iterations=grow) & (label > 0)] = 3
    return out


def dice(inr: INR, vols: CaseVolumes, case, labels: np.ndarray) -> dict[str, float]:
    """Dice per region of the cached segmentation against ``labels``."""
    scores = region_scores(VolumeCache(inr, vols).labels(), labels, SPACING)
    return {k[5:]: round(v, 4) for k, v in scores.items() if k.startswith("dice_")}


def roi_weights(images, background, margin: int = 8) -> list[np.ndarray]:
    """Per view: 1 inside the bounding box (plus ``margin`` pixels) of the pixels that show labels, else 0."""
    out = []
    for image in images:
        seen = np.abs(image - np.asarray(background)).max(-1) > 1e-3
        mask = np.zeros(seen.shape, np.float32)
        box = ndimage.find_objects(seen.astype(int))
        if box:
            rows, cols = box[0]
            mask[max(rows.start - margin, 0):rows.stop + margin, max(cols.start - margin, 0):cols.stop + margin] = 1
        out.append(mask)
    return out


class TorchCacheLoop:
    """Path (a) in torch float32: the peer of one refinement step."""

    def __init__(self, inr: INR, images: np.ndarray, settings: RenderSettings, chunk: int = 1 << 18,
                 device: str = "cuda"):
        self.device = device
        self.model = TorchINR(inr.config).to(device)
        self.model.load_state_dict(inr.state_dict())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        self.volume = torch.as_tensor(images, device=device)
        self.settings, self.chunk = settings, chunk

    def gradients(self, cameras, targets) -> float:
        """Fill the parameters' .grad with d(loss)/d(weights); returns the loss."""
        shape = tuple(self.volume.shape[1:])
        self.optimizer.zero_grad()
        with torch.no_grad():
            probs = grid_probabilities(self.model, self.volume, self.chunk)
        probs.requires_grad_(True)
        scene = TorchScene.build(shape, SPACING, self.settings, probabilities=probs, dtype=torch.float32,
                                 device=self.device)
        loss = 0.0
        for camera, target in zip(cameras, targets):
            image, _ = render_reference(scene, camera)
            value = ((image - torch.as_tensor(target, device=self.device)) ** 2).mean()
            value.backward()
            loss += float(value.detach())
        grad = probs.grad.reshape(probs.shape[0], -1)
        total = grad.shape[1]
        for start in range(0, total, self.chunk):
            count = min(self.chunk, total - start)
            p = chunk_probabilities(self.model, self.volume, start, count)
            p.backward(grad[:, start:start + count].T)
        return loss

    def step(self, cameras, targets) -> None:
        self.gradients(cameras, targets)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="trained paper-network checkpoint (default: random initialisation)")
    parser.add_argument("--tiny", action="store_true", help="the tiny network (to try the script on the CPU)")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--refine-steps", type=int, default=20, help="refinement run per path (0: none)")
    parser.add_argument("--refine-size", type=int, default=256, help="view size of that run")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of that run")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peer")
    parser.add_argument("--json", default="refine_step.json")
    add_device_argument(parser, default="cuda", note="cpu only to try the script at tiny sizes")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    on_gpu = torch.cuda.is_available() and device.info.type.name == "cuda"
    shape = tuple(args.shape)
    case = make_case(shape, seed=0)
    images = normalise(case.images)
    if args.checkpoint:
        state, config, _ = load_checkpoint(args.checkpoint)
    else:
        state, config = None, INRConfig.tiny() if args.tiny else INRConfig.paper()
    inr = INR(config, device)
    if state is not None:
        inr.load_state_dict(state)
    initial = inr.state_dict()
    vols = CaseVolumes.upload(device, [images])
    settings = RenderSettings()
    correction = corrected_labels(case.label)

    def sync():
        device.wait_for_idle()
        if on_gpu:
            torch.cuda.synchronize()

    def problem(size, masked=False):
        cameras = orbit_cameras(shape, SPACING, args.views, size=(size, size))
        targets = render_label_views(device, correction, SPACING, cameras, settings)
        return cameras, targets, roi_weights(targets, settings.background) if masked else None

    def slang_step(path, cameras, targets, weights):
        def run():
            refine(inr, vols, SPACING, cameras, settings, targets, steps=1, lr=1e-4, weights=weights, path=path)
        return run

    rows, results = [], {"device": describe(device), "torch": torch.__version__, "python": platform.python_version(),
                         "shape": shape, "views": args.views, "checkpoint": args.checkpoint, "rows": []}
    largest = max(args.sizes)
    cases = [(size, False) for size in sorted(args.sizes)] + [(largest, True)]
    for size, masked in cases:
        cameras, targets, weights = problem(size, masked)
        row = {"views": f"{args.views} x {size}^2" + (" masked" if masked else ""),
               "pixels weighted": int(sum((w > 0).sum() for w in weights)) if masked else args.views * size * size}
        for path in ("cache", "direct"):
            inr.load_state_dict(initial)
            stats = {}
            inr.zero_grad()
            PATHS[path](inr, vols, SPACING, cameras, settings, targets, weights, stats=stats)
            t = time_it(slang_step(path, cameras, targets, weights), sync, args.repeats, warmup=1)
            row[f"{path} s"] = f"{t['median_s']:.3f}"
            row[f"{path} fwd/bwd pts (M)"] = f"{stats['forward_points'] / 1e6:.2f}/{stats['backward_points'] / 1e6:.2f}"
            row[f"{path} timing"] = t
        row["direct / cache"] = f"{float(row['direct s']) / float(row['cache s']):.2f}x"
        rows.append(row)

    # How far the two paths are apart at the largest size (same weights).
    cameras, targets, _ = problem(largest)
    inr.load_state_dict(initial)
    compared = {}
    for path in ("cache", "direct"):
        inr.zero_grad()
        loss, rendered = PATHS[path](inr, vols, SPACING, cameras, settings, targets)
        grads = weight_gradients(inr)
        compared[path] = (loss, np.stack(rendered), np.concatenate([g.ravel() for g in grads.values()]))
        if path == "cache":
            cache_grads = grads
    (la, ia, ga), (lb, ib, gb) = compared["cache"], compared["direct"]
    difference = {"image_mean_abs_diff": float(np.abs(ia - ib).mean()), "image_max_abs_diff": float(np.abs(ia - ib).max()),
                  "pixels_over_0.05": float((np.abs(ia - ib).max(-1) > 0.05).mean()),
                  "loss_cache": la, "loss_direct": lb,
                  "gradient_cosine": float(ga @ gb / (np.linalg.norm(ga) * np.linalg.norm(gb))),
                  "gradient_norm_ratio": float(np.linalg.norm(gb) / np.linalg.norm(ga))}
    results["paths_compared"] = difference

    if not args.no_torch:
        inr.load_state_dict(initial)
        loop = TorchCacheLoop(inr, images, settings, device="cuda" if on_gpu else "cpu")
        loop.gradients(cameras, targets)
        peer = np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in loop.model.parameters()])
        names = [name for name, _ in loop.model.named_parameters()]
        ours = np.concatenate([cache_grads[name].ravel() for name in names])
        results["torch_peer_gradient_rel_diff"] = float(np.linalg.norm(peer - ours) / np.linalg.norm(ours))
        t = time_it(lambda: loop.step(cameras, targets), sync, 2, warmup=1)
        rows.append({"views": f"{args.views} x {largest}^2", "torch (a) s": f"{t['median_s']:.3f}",
                     "torch (a) / cache": f"{t['median_s'] / float(rows[len(args.sizes) - 1]['cache s']):.1f}x",
                     "torch timing": t})

    # What refinement does with each path: Dice against the correction before and after.
    if args.refine_steps:
        cameras, targets, _ = problem(args.refine_size)
        outcome = {}
        for path in ("cache", "direct"):
            inr.load_state_dict(initial)
            before = dice(inr, vols, case, correction)
            steps = refine(inr, vols, SPACING, cameras, settings, targets, steps=args.refine_steps, lr=args.lr, path=path)
            outcome[path] = {"before": before, "after": dice(inr, vols, case, correction),
                             "loss": [steps[0]["image_loss"], steps[-1]["image_loss"]],
                             "seconds_per_step": float(np.median([r["seconds"] for r in steps[1:]]))}
        results["refinement"] = outcome

    results["rows"] = rows
    write_json(args.json, results)
    print(f"device: {results['device']}  torch {torch.__version__}  volume {shape}, {args.views} views, dt {settings.step}, "
          f"checkpoint {args.checkpoint or 'random init'}")
    print_table(rows, ["views", "pixels weighted", "cache s", "direct s", "direct / cache", "cache fwd/bwd pts (M)",
                       "direct fwd/bwd pts (M)", "torch (a) s", "torch (a) / cache"])
    if "torch_peer_gradient_rel_diff" in results:
        print(f"torch peer's weight gradient vs path (a): relative difference {results['torch_peer_gradient_rel_diff']:.2e}")
    print(f"paths at {args.views} x {largest}^2: image mean |a - b| {difference['image_mean_abs_diff']:.2e} "
          f"(max {difference['image_max_abs_diff']:.2e}, {difference['pixels_over_0.05']:.2%} of pixels over 0.05); loss {la:.5f} vs {lb:.5f}; weight-gradient cosine "
          f"{difference['gradient_cosine']:.4f}, norm ratio b/a {difference['gradient_norm_ratio']:.3f}")
    for path, o in results.get("refinement", {}).items():
        print(f"refine {args.refine_steps} steps, path {path}, {args.views} x {args.refine_size}^2, lr {args.lr}: "
              f"image loss {o['loss'][0]:.5f} -> {o['loss'][1]:.5f}, {o['seconds_per_step']:.3f} s/step; Dice vs the "
              f"correction before {o['before']} after {o['after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
