"""A distance-aware loss for segmentations: Kervadec et al.'s boundary loss (MIDL 2019 / MedIA 2021).

L_B = mean over voxels and foreground classes of phi_k(x) * p_k(x), where phi_k is the signed
distance (mm) to the boundary of class k in the reference labels: negative inside the class,
positive outside. Minimising it moves probability mass of class k towards its reference region,
weighted by how far off each voxel is, which regional losses (CE, Dice) ignore: the term most
related to HD95. It is plain torch on a probability volume, e.g. :func:`neumours.torch.cache`'s:

    phi = torch.as_tensor(signed_distance(labels, spacing=spacing), device=net.torch_device)
    loss = image_loss + 0.01 * boundary_loss(cache(net, vols), phi)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from neumours.conventions import NUM_CLASSES

#: The classes the loss sums over by default: the tumour classes (background's map is their complement).
FOREGROUND = tuple(range(1, NUM_CLASSES))


def signed_distance(labels: np.ndarray, num_classes: int = NUM_CLASSES, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    classes: Sequence[int] | None = None) -> np.ndarray:
    """phi_k per class of a label volume, as Kervadec et al.'s reference code makes it.

    Outside class k: the distance to its nearest voxel; inside: minus (the distance to the
    nearest voxel outside, less one voxel), so voxels on either side of the boundary get
    +-1 voxel's worth; a class absent from ``labels`` gets 0 everywhere.

    Args:
        labels: (X, Y, Z) integers 0 .. num_classes - 1. spacing: voxel size (mm).
        classes: the classes to compute (default all); the others' maps stay 0 (training computes
            only the tumour classes :func:`boundary_loss` sums over).

    Returns:
        (num_classes, X, Y, Z) float32.
    """
    from scipy.ndimage import distance_transform_edt

    labels = np.asarray(labels)
    out = np.zeros((num_classes, *labels.shape), np.float32)
    for k in range(num_classes) if classes is None else classes:
        inside = labels == k
        if inside.any() and not inside.all():
            outside = ~inside
            out[k] = (distance_transform_edt(outside, sampling=spacing) * outside
                      - (distance_transform_edt(inside, sampling=spacing) - 1) * inside)
    return out


def boundary_loss(probs: torch.Tensor, phi: torch.Tensor, classes: Sequence[int] = FOREGROUND) -> torch.Tensor:
    """mean(phi_k * p_k) over voxels and ``classes``.

    Args:
        probs: (K, X, Y, Z) class probabilities. phi: (K, X, Y, Z) from :func:`signed_distance`.

    Returns:
        0-d tensor; negative when the classes sit inside their reference regions.
    """
    if probs.shape != phi.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and phi {tuple(phi.shape)} must have the same shape")
    index = list(classes)
    return (probs[index] * phi[index].to(probs.dtype)).mean()
