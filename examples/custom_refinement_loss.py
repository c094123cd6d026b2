"""Correct a checkpoint from views with a loss of your own, written in torch: SSIM + silhouette IoU.

    python examples/custom_refinement_loss.py [--out DIR] [--train-steps 60] [--steps 20] [--device auto]

An early checkpoint of the tiny network is the model to correct; views of one case's
ground truth play the clinician's correction. The loss below is plain torch on the
images that ``neumours.torch.render`` returns; ``loss.backward()`` runs the renderer's,
the cache's and the INR's Slang backward kernels. Prints Dice before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from neumours.data import list_cases, load_case, normalise
from neumours.data.phantom import write_dataset
from neumours.device import get_device
from neumours.eval.metrics import region_scores
from neumours.model.inputs import CaseVolumes
from neumours.refine.masks import silhouette_settings
from neumours.render import RenderSettings
from neumours.render.views import orbit_cameras
from neumours.torch import INRModule, cache, render
from neumours.train.config import preset
from neumours.train.trainer import train


# ---- the custom loss: ~30 lines of torch ----------------------------------------------------------
def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, c1: float = 0.01 ** 2, c2: float = 0.03 ** 2):
    """Mean structural similarity of two (H, W, 3) images (box window)."""
    x, y = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]

    def mean(t):
        return F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two soft silhouettes in [0, 1]."""
    inter = (a * b).sum()
    return inter / (a.sum() + b.sum() - inter).clamp(min=1e-6)


def view_loss(colour, target_colour, silhouette, target_silhouette):
    return (1 - ssim(colour, target_colour)) + (1 - soft_iou(silhouette[..., 0], target_silhouette[..., 0]))
# -----------------------------------------------------------------------------------------------------


def dice(net: INRModule, vols: CaseVolumes, case) -> dict[str, float]:
    with torch.no_grad():
        labels = cache(net, vols).argmax(0).cpu().numpy()
    return {k[5:]: round(v, 3) for k, v in region_scores(labels, case.label, case.spacing).items()
            if k.startswith("dice_")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("custom-loss-example"))
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 40, 32])
    parser.add_argument("--train-steps", type=int, default=60, help="an early checkpoint")
    parser.add_argument("--steps", type=int, default=20, help="refinement steps")
    parser.add_argument("--size", type=int, default=48, help="view size in pixels")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = get_device(args.device)

    write_dataset(args.out / "data", args.cases, shape=tuple(args.shape), seed=5, progress=False)
    config = preset("tiny")
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, steps=args.train_steps,
                                                                      val_every=args.train_steps))
    train(args.out / "data", args.out / "run", config, device, progress=False, plot=False)
    net = INRModule.load(args.out / "run" / "last.safetensors", device)

    case = load_case(list_cases(args.out / "data")[0])
    vols = CaseVolumes.upload(device, [normalise(case.images)])
    cameras = orbit_cameras(case.shape, case.spacing, 4, size=(args.size, args.size))
    colour, silhouette = RenderSettings(), silhouette_settings(RenderSettings())
    truth = F.one_hot(torch.as_tensor(case.label, dtype=torch.long), 4).permute(3, 0, 1, 2).float()
    truth = truth.to(net.torch_device)
    with torch.no_grad():  # the correction: the ground truth seen from four cameras
        targets = [(render(truth, c, colour, spacing=case.spacing), render(truth, c, silhouette, spacing=case.spacing))
                   for c in cameras]

    before = dice(net, vols, case)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    losses = []
    for _ in range(args.steps):
        optimizer.zero_grad()
        probs = cache(net, vols)
        loss = sum(view_loss(render(probs, c, colour, spacing=case.spacing), tc,
                             render(probs, c, silhouette, spacing=case.spacing), ts)
                   for c, (tc, ts) in zip(cameras, targets))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    after = dice(net, vols, case)
    print(f"loss (1 - SSIM) + (1 - IoU), summed over {len(cameras)} views: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"{case.case_id} Dice before: {before}")
    print(f"{case.case_id} Dice after:  {after}")
    return {"before": before, "after": after, "losses": losses}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
