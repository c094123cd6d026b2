"""Plain float64 reference implementations that the Slang kernels are checked against.

Nothing here is fast; everything here is obviously right. Tests compare the
kernels with these functions, and benchmarks use the torch versions as peers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from neumours.model.config import INRConfig


def fourier_features_np(points: np.ndarray, K: int) -> np.ndarray:
    """gamma(p) of docs/method.md in float64: (N, 3) -> (N, 3 + 6K)."""
    p = np.asarray(points, dtype=np.float64)
    blocks = [p]
    for k in range(1, K + 1):
        blocks += [np.sin(np.pi * k * p), np.cos(np.pi * k * p)]
    return np.concatenate(blocks, axis=1)


def fourier_features_grad_np(points: np.ndarray, grad_features: np.ndarray, K: int) -> np.ndarray:
    """Analytic dL/dp given dL/dgamma, float64: (N, 3), (N, 3 + 6K) -> (N, 3)."""
    p = np.asarray(points, dtype=np.float64)
    g = np.asarray(grad_features, dtype=np.float64)
    grad = g[:, 0:3].copy()
    for k in range(1, K + 1):
        o = 3 + 6 * (k - 1)
        w = np.pi * k
        grad += g[:, o : o + 3] * w * np.cos(w * p) - g[:, o + 3 : o + 6] * w * np.sin(w * p)
    return grad


def fourier_features_torch(points: Tensor, K: int) -> Tensor:
    """gamma(p) of docs/method.md in torch, differentiable w.r.t. ``points``.

    Args:
        points: (N, 3) coordinates, any float dtype and device; the features are
            computed in that dtype (autocast leaves sin/cos in float32).
        K: number of frequencies.

    Returns:
        (N, 3 + 6K) in the order of :func:`fourier_features_np`:
        [p, sin(pi*1*p), cos(pi*1*p), ..., sin(pi*K*p), cos(pi*K*p)].
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    freqs = torch.arange(1, K + 1, dtype=points.dtype, device=points.device) * math.pi
    angles = points[:, None, :] * freqs[None, :, None]  # (N, K, 3)
    blocks = torch.stack([torch.sin(angles), torch.cos(angles)], dim=2)  # (N, K, 2, 3)
    return torch.cat([points, blocks.reshape(points.shape[0], 6 * K)], dim=1)


class TorchINR(nn.Module):
    """The INR of docs/method.md in plain torch: the verification reference and the benchmark peer.

    Tests run it in float64 (``.double()``) to check the Slang forward/backward
    kernels; benchmarks run it on CUDA in float32 and under bf16 autocast as the
    strongest peer of the Slang network. Its ``state_dict`` keys and shapes are
    exactly :meth:`INRConfig.param_shapes`, so checkpoints and
    :class:`neumours.model.params.ParamLayout` vectors load into it directly.

    Args:
        config: network sizes (default: the paper's 262,020-parameter network).
    """

    def __init__(self, config: INRConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else INRConfig.paper()
        self.spatial = nn.Linear(config.fourier_dim, config.spatial_width)
        # Valid padding: a (p, p, p) patch gives one output voxel per point.
        self.modality = nn.Conv3d(config.num_modalities, config.modality_width, kernel_size=config.patch_size)
        self.mlp = nn.ModuleList(
            nn.Linear(config.hidden_width, config.hidden_width) for _ in range(config.hidden_layers)
        )
        self.head = nn.Linear(config.hidden_width, config.num_classes)

    def forward(self, coords: Tensor, patches: Tensor) -> Tensor:
        """Class logits for each point.

        Args:
            coords: (N, 3) positions in [-1, 1] (docs/method.md "Coordinates and inputs").
            patches: (N, num_modalities, p, p, p) normalised intensities around
                each point, channel first.

        Returns:
            (N, num_classes) logits (bg, NCR, ED, ET).
        """
        c = self.config
        p = c.patch_size
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must have shape (N, 3), got {tuple(coords.shape)}")
        if tuple(patches.shape[1:]) != (c.num_modalities, p, p, p) or patches.shape[0] != coords.shape[0]:
            raise ValueError(
                f"patches must have shape ({coords.shape[0]}, {c.num_modalities}, {p}, {p}, {p}), "
                f"got {tuple(patches.shape)}"
            )
        spatial = torch.relu(self.spatial(fourier_features_torch(coords, c.num_freqs)))
        modality = torch.relu(self.modality(patches).flatten(1))
        h = torch.cat([spatial, modality.to(spatial.dtype)], dim=1)
        for layer in self.mlp:
            h = torch.relu(layer(h))
        return self.head(h)


def patches_np(volume: np.ndarray, positions: np.ndarray, patch_size: int = 3) -> np.ndarray:
    """Patches of docs/method.md in float64: trilinear samples at voxel offsets, zero outside.

    Args:
        volume: (C, X, Y, Z) normalised intensities.
        positions: (N, 3) voxel positions.

    Returns:
        (N, C, p, p, p) with offsets -(p // 2) .. p // 2 along axes 0, 1, 2.
    """
    from scipy.ndimage import map_coordinates

    half = patch_size // 2
    offsets = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    points = (np.asarray(positions, np.float64)[:, None, :] + offsets[None]).reshape(-1, 3).T
    out = [map_coordinates(np.asarray(v, np.float64), points, order=1, mode="grid-constant", cval=0.0) for v in volume]
    n = len(positions)
    return np.stack(out, 0).reshape(len(volume), n, *(patch_size,) * 3).transpose(1, 0, 2, 3, 4)
