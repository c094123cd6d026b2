"""Gradient check of every Slang backward pass: the encoding, the INR and the raymarcher.

For each gradient, two errors, both relative to the gradient's scale
(max |a - b| / max |b|, so entries near zero do not blow up):

- vs autograd: the Slang gradient against torch autograd of the float64
  reference (``neumours.model.reference``, ``neumours.render.reference``), all entries;
- vs FD: against central differences of L = <g, output> through the Slang
  forward pass itself (float32), on a few entries (those with the largest
  gradients, whose signal dominates float32 rounding); expect ~1e-3 from the
  differences alone.

Runs at small sizes on the CPU device by default; prints a table and writes JSON.

    python benchmarks/gradcheck.py [--device cpu] [--json gradcheck.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.device import describe, get_device  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.encoding import fourier_features, fourier_features_backward  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.model.reference import TorchINR, fourier_features_torch  # noqa: E402
from neumours.render import (LabelLUT, ModalityWindow, RenderSettings, TransferFunction, orbit, render,  # noqa: E402
                             render_backward)
from neumours.render.reference import TorchScene, render_reference  # noqa: E402

FD_ENTRIES = 3


def scaled_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def fd_err(grad: np.ndarray, loss, array: np.ndarray, h: float) -> float:
    """Scaled error of ``grad`` against central differences of ``loss(perturbed array)`` on the top entries."""
    worst = 0.0
    scale = max(float(np.abs(grad).max()), 1e-30)
    for flat in np.argsort(np.abs(grad).ravel())[-FD_ENTRIES:]:
        idx = np.unravel_index(flat, array.shape)
        values = []
        for sign in (1, -1):
            trial = array.copy()
            trial[idx] += sign * h
            values.append(loss(trial))
        worst = max(worst, abs((values[0] - values[1]) / (2 * h) - float(grad[idx])) / scale)
    return worst


def check_encoding(device, rng) -> list[dict]:
    K = 8
    p = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    g = rng.normal(size=(64, 3 + 6 * K))
    grad = fourier_features_backward(p, g.astype(np.float32), K, device=device)
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (fourier_features_torch(pt, K) * torch.from_numpy(g)).sum().backward()

    def loss(points):
        return float((fourier_features(points, K, device=device).astype(np.float64) * g).sum())

    return [{"part": "encoding", "gradient": "dL/dp", "vs autograd": scaled_err(grad, pt.grad.numpy()),
             "vs FD": fd_err(grad, loss, p, 1e-3)}]


def check_inr(device, rng) -> list[dict]:
    config = INRConfig.tiny()
    inr = INR(config, device=device, seed=1)
    n = 64
    coords = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    patches = rng.normal(size=(n, config.num_modalities, 3, 3, 3)).astype(np.float32)
    g = rng.normal(size=(n, config.num_classes))
    grads = inr.backward(coords, patches, g.astype(np.float32))
    model = TorchINR(config).double()
    state = {k: v.numpy().astype(np.float32) for k, v in inr.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in state.items()})
    logits = model(torch.from_numpy(coords).double(), torch.from_numpy(patches).double())
    (logits * torch.from_numpy(g)).sum().backward()
    rows = []
    for name, param in model.named_parameters():
        def loss(value, name=name):
            inr.load_state_dict({**state, name: value.astype(np.float32)})
            return float((inr.forward(coords, patches).astype(np.float64) * g).sum())

        rows.append({"part": "INR (tiny)", "gradient": name, "vs autograd": scaled_err(grads[name], param.grad.numpy()),
                     "vs FD": fd_err(grads[name], loss, state[name], 1e-3)})
    inr.load_state_dict(state)
    return rows


def raymarch_scene(rng):
    shape = (12, 10, 8)
    axes = [np.linspace(-1, 1, s) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = x ** 2 + y ** 2 + z ** 2 < 1.2
    volumes = (np.stack([0.5 + 0.3 * np.sin(2 * x + c) * np.cos(3 * y - c) + 0.2 * z for c in range(4)]) * inside)
    labels = (np.sqrt(x ** 2 + y ** 2 + z ** 2) < 0.6).astype(np.uint8) * rng.integers(1, 4, shape).astype(np.uint8)
    logits = rng.normal(size=(4, *shape)) + 3 * np.eye(4)[labels].transpose(3, 0, 1, 2)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    windows = tuple(ModalityWindow(lo=0.15 + 0.05 * m, hi=0.85, gamma=(1.0, 0.7, 1.5, 2.0)[m], weight=0.3)
                    for m in range(4))
    # Light media: no ray falls below T = 0.01, where the image jumps (rays stop a sample
    # earlier or later) and finite differences would measure the jump, not the derivative.
    settings = RenderSettings(windows=windows, lut=LabelLUT(opacities=np.array([0.1, 1.5, 0.5, 1.0], np.float32)),
                              transfer=TransferFunction(density_scale=1.5), step=0.07, background=(0.1, 0.2, 0.3))
    return shape, volumes.astype(np.float32), labels, probs.astype(np.float32), settings


def check_raymarcher(device, rng) -> list[dict]:
    shape, volumes, labels, probs, settings = raymarch_scene(rng)
    spacing = (1.0, 1.2, 1.5)
    cam = orbit(35.0, 25.0, 3.2, fov_y_deg=40.0, width=16, height=12)
    g = rng.normal(size=(12, 16, 3))
    rows = []
    modes = (("MRI", {}), ("MRI + labels", {"labels": labels}), ("MRI + probabilities", {"probabilities": probs}))
    for mode, extra in modes:
        grads = render_backward(device, volumes, spacing, cam, settings, g.astype(np.float32), **extra)
        leaves = {"volumes": torch.tensor(volumes, dtype=torch.float64, requires_grad=True),
                  "weights": torch.tensor(settings.weights, dtype=torch.float64, requires_grad=True),
                  "lut_colours": torch.tensor(settings.lut.colours, dtype=torch.float64, requires_grad=True),
                  "lut_opacities": torch.tensor(settings.lut.opacities, dtype=torch.float64, requires_grad=True)}
        kw = dict(extra)
        if "probabilities" in extra:
            leaves["probabilities"] = kw["probabilities"] = torch.tensor(probs, dtype=torch.float64, requires_grad=True)
        scene = TorchScene.build(shape, spacing, settings, volumes=leaves["volumes"], weights=leaves["weights"],
                                 lut_colours=leaves["lut_colours"], lut_opacities=leaves["lut_opacities"],
                                 **kw)
        image, transmittance = render_reference(scene, cam)
        assert float(transmittance.detach().min()) > 0.01, "the finite differences need rays that do not terminate"
        (image * torch.from_numpy(g)).sum().backward()

        def loss(vol=volumes, s=settings, pr=None):
            inputs = dict(extra)
            if pr is not None:
                inputs["probabilities"] = pr
            return float((render(device, vol, spacing, cam, s, **inputs).astype(np.float64) * g).sum())

        perturb = {
            "volumes": (volumes, lambda a: loss(vol=a), 2e-3),
            "probabilities": (probs, lambda a: loss(pr=a), 2e-3),
            "weights": (settings.weights, lambda a: loss(s=replace(settings, windows=tuple(
                replace(w, weight=float(v)) for w, v in zip(settings.windows, a)))), 2e-3),
            "lut_colours": (settings.lut.colours, lambda a: loss(s=replace(settings, lut=LabelLUT(
                a, settings.lut.opacities))), 2e-3),
            "lut_opacities": (settings.lut.opacities, lambda a: loss(s=replace(settings, lut=LabelLUT(
                settings.lut.colours, a))), 5e-2),
        }
        for name, leaf in leaves.items():
            if leaf.grad is None:  # not part of this mode (the LUT without labels)
                continue
            array, fd_loss, h = perturb[name]
            rows.append({"part": f"raymarcher ({mode})", "gradient": name,
                         "vs autograd": scaled_err(grads[name], leaf.grad.numpy()),
                         "vs FD": fd_err(grads[name], fd_loss, np.asarray(array, np.float32), h)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser, default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="gradcheck.json")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    rng = np.random.default_rng(args.seed)
    rows = check_encoding(device, rng) + check_inr(device, rng) + check_raymarcher(device, rng)
    write_json(args.json, {"device": describe(device), "seed": args.seed, "rows": rows})
    print(f"device: {describe(device)}; errors are max |slang - ref| / max |ref| per gradient")
    print_table([{**r, "vs autograd": f"{r['vs autograd']:.1e}", "vs FD": f"{r['vs FD']:.1e}"} for r in rows],
                ["part", "gradient", "vs autograd", "vs FD"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
