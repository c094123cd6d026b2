"""Render-loss refinement in plain torch: the float64 reference of the tests and the benchmark peer.

Both gradient paths, written from the definitions with autograd doing every
derivative, independently of the Slang kernels:

- path (a): p = softmax(TorchINR) over the case's grid, rendered by
  :func:`neumours.render.reference.render_reference` (trilinear samples of p);
- path (b): the renderer's field is softmax(TorchINR) at each sample's own
  voxel position, patches read off-grid by trilinear interpolation (docs/method.md).

The loss is the image loss of :func:`neumours.refine.image_loss.image_loss`,
summed over views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neumours.model.reference import TorchINR
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import Camera
from neumours.render.reference import TorchScene, render_reference
from neumours.render.transfer import RenderSettings


def patches_torch(volume: Tensor, positions: Tensor, patch_size: int = 3) -> Tensor:
    """docs/method.md patches at voxel positions: trilinear samples at voxel offsets, zero outside.

    Args:
        volume: (C, X, Y, Z). positions: (N, 3) voxel positions (same dtype and device).

    Returns:
        (N, C, p, p, p), offsets -(p // 2) .. p // 2 along axes 0, 1, 2.
    """
    half = patch_size // 2
    r = torch.arange(-half, half + 1, dtype=volume.dtype, device=volume.device)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    points = positions[:, None, :] + offsets[None]  # (N, p^3, 3)
    dims = torch.tensor(volume.shape[1:], dtype=volume.dtype, device=volume.device)
    grid = (2 * points / (dims - 1) - 1).flip(-1)  # grid_sample wants (z, y, x)
    out = F.grid_sample(volume[None], grid[None, :, :, None, :], mode="bilinear", padding_mode="zeros",
                        align_corners=True)  # (1, C, N, p^3, 1)
    n = positions.shape[0]
    return out[0, :, :, :, 0].permute(1, 0, 2).reshape(n, volume.shape[0], *(patch_size,) * 3)


def chunk_probabilities(model: TorchINR, volume: Tensor, start: int, count: int) -> Tensor:
    """softmax(model) at grid voxels ``start .. start + count`` (C-order) of ``volume`` (C, X, Y, Z): (count, K)."""
    shape = volume.shape[1:]
    dims = torch.tensor(shape, dtype=volume.dtype, device=volume.device)
    index = torch.arange(start, start + count, device=volume.device)
    pos = torch.stack([index // (shape[1] * shape[2]), (index // shape[2]) % shape[1], index % shape[2]], -1)
    pos = pos.to(volume.dtype)
    return torch.softmax(model(2 * pos / (dims - 1) - 1, patches_torch(volume, pos)), dim=1)


def grid_probabilities(model: TorchINR, volume: Tensor, chunk: int = 1 << 16) -> Tensor:
    """softmax(model) at every voxel of ``volume`` (C, X, Y, Z): (K, X, Y, Z), differentiable."""
    shape = volume.shape[1:]
    total = int(np.prod(shape))
    out = [chunk_probabilities(model, volume, start, min(chunk, total - start)) for start in range(0, total, chunk)]
    return torch.cat(out).T.reshape(-1, *shape)


def inr_field(model: TorchINR, volume: Tensor, spacing) -> Callable[[Tensor], Tensor]:
    """softmax(model) at (N, 3) box points, at their voxel positions clamped to the volume (path (b))."""
    shape = tuple(volume.shape[1:])
    half = volume_box(shape, spacing)
    scale = torch.as_tensor(to_voxel_scale(shape, half), dtype=volume.dtype, device=volume.device)
    half_t = torch.as_tensor(half, dtype=volume.dtype, device=volume.device)
    dims = torch.tensor(shape, dtype=volume.dtype, device=volume.device)

    def field(points: Tensor) -> Tensor:
        pos = torch.minimum(torch.clamp((points + half_t) * scale, min=0.0), dims - 1)
        return torch.softmax(model(2 * pos / (dims - 1) - 1, patches_torch(volume, pos)), dim=1)

    return field


def refinement_loss(model: TorchINR, volume: Tensor, spacing, cameras: Sequence[Camera], settings: RenderSettings,
                    targets: Sequence, path: str, weights: Sequence | None = None) -> tuple[Tensor, list[Tensor]]:
    """The image loss summed over views, as a differentiable function of ``model``'s parameters.

    Args:
        volume: (C, X, Y, Z) normalised intensities (dtype and device of the model).
        path: ``"cache"`` (a) or ``"direct"`` (b).
        targets: (H, W, 3) per view; weights: optional (H, W) per view (0 = don't care).

    Returns:
        (loss, rendered images).
    """
    shape = tuple(volume.shape[1:])
    kwargs = {"dtype": volume.dtype, "device": volume.device}
    if path == "cache":
        scene = TorchScene.build(shape, spacing, settings, probabilities=grid_probabilities(model, volume), **kwargs)
    elif path == "direct":
        scene = TorchScene.build(shape, spacing, settings, field=inr_field(model, volume, spacing), **kwargs)
    else:
        raise ValueError(f"path must be 'cache' or 'direct', got {path!r}")
    total, images = volume.new_zeros(()), []
    for k, (camera, target) in enumerate(zip(cameras, targets, strict=True)):
        image, _ = render_reference(scene, camera)
        w = volume.new_ones(image.shape[:2]) if weights is None or weights[k] is None else \
            torch.as_tensor(weights[k], **kwargs)
        diff = (image - torch.as_tensor(target, **kwargs)) * w[..., None]
        total = total + (diff * diff).sum() / torch.clamp(w.sum() * 3.0, min=1.0)
        images.append(image)
    return total, images
