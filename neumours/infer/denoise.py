"""Post-processing of predicted label volumes: connected-component filtering and hole filling.

The paper (Sec. IV-C, V-B) cleans the INR's output with "connected component
filtering and hole filling": a coordinate network has no local connectivity
prior, so it leaves stray specks far from the tumour and small pockets of the
wrong class inside it. :func:`denoise` does, in order (labelling by
``scipy.ndimage.label``):

1. **Whole-tumour components.** Label the connected components of the whole
   tumour (labels 1-3, ``connectivity``). Keep the largest one, and every other
   one of at least ``min_component_mm3``; the rest become background.
   (``min_component_mm3=0`` keeps everything.)
2. **Class islands.** Inside the kept tumour, a connected piece of one class
   (NCR, ED or ET) smaller than ``min_class_island_mm3``, that touches
   tumour of another class, takes the label of the nearest voxel of the
   surrounding tumour (Euclidean, in voxels). An island that is a whole tumour
   component of its own keeps its label. The tumour's extent does not change.
3. **Holes.** Background enclosed by the kept tumour (``fill_holes="3d"``:
   not connected to the outside in 3-D; ``"axial"``: enclosed within its slice
   along array axis 2, the slice-wise filling of the paper; ``"none"``: off)
   becomes tumour, with the label of the nearest tumour voxel.

Sizes are in mm^3 (voxels times the voxel volume from ``spacing``), so the
same parameters serve 1 mm BraTS data, anisotropic data and super-resolved
(``--scale``) grids.

Guarantee (tested): every tumour voxel of the output is a tumour voxel of the
input or a filled hole of step 3; nothing is invented outside the predicted
whole tumour.

Defaults (:data:`DEFAULTS`: 1000 mm^3, 50 mm^3, 3-D holes, 26-connectivity) were
chosen by grid search on the phantom validation split (``split_cases(0.1,
seed 0)`` of 40 cases at 240 x 240 x 155) with ground truth corrupted like raw
INR output (specks, false blobs, holes, wrong-class islands), since no trained
model existed yet; ``benchmarks/denoise_defaults.py`` reproduces it and its
docstring has the table. Work past step 1 is done in the bounding box of the
kept tumour: a heavily noisy 240 x 240 x 155 prediction takes 0.13-0.18 s on
one core of the development machine (time grows with the kept tumour's extent).

This is the reference and the CPU device's path. On a GPU the Segmenter runs
the same operation where the labels are,
:func:`neumours.infer.denoise_device.denoise_on_device`, which gives exactly
these labels (tested voxel for voxel, ties of the nearest-voxel step included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

_FILL_MODES = ("3d", "axial", "none")


@dataclass(frozen=True)
class DenoiseParams:
    """Parameters of :func:`denoise`.

    Attributes:
        min_component_mm3: whole-tumour components smaller than this (mm^3) are
            removed, except the largest, which is always kept; 0 keeps all.
        min_class_island_mm3: class islands inside the tumour smaller than this
            (mm^3) take the surrounding label; 0 turns the step off.
        fill_holes: ``"3d"``, ``"axial"`` (per slice along array axis 2) or ``"none"``.
        connectivity: 6, 18 or 26: neighbourhood of a tumour voxel (background
            uses 6, the usual dual connectivity, when finding holes).
    """

    min_component_mm3: float = 1000.0
    min_class_island_mm3: float = 50.0
    fill_holes: str = "3d"
    connectivity: int = 26

    def __post_init__(self) -> None:
        if self.fill_holes not in _FILL_MODES:
            raise ValueError(f"fill_holes must be one of {', '.join(_FILL_MODES)}, got {self.fill_holes!r}")
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        if not (self.min_component_mm3 >= 0 and self.min_class_island_mm3 >= 0):
            raise ValueError("min_component_mm3 and min_class_island_mm3 must be >= 0")


#: The defaults: see the module docstring and benchmarks/denoise_defaults.py.
DEFAULTS = DenoiseParams()


def voxel_thresholds(params: DenoiseParams, spacing=(1.0, 1.0, 1.0)) -> tuple[float, float]:
    """``params``' two sizes in voxels (min_component_mm3, min_class_island_mm3 over the voxel volume).

    Shared by :func:`denoise` and the device path, so both compare sizes with the same numbers.

    Raises:
        ValueError: ``spacing`` is not three positive finite sizes.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ValueError(f"spacing must be three positive sizes, got {spacing}")
    voxel_mm3 = float(np.prod(spacing))
    return params.min_component_mm3 / voxel_mm3, params.min_class_island_mm3 / voxel_mm3


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def _keep_components(tumour: np.ndarray, params: DenoiseParams, min_size: float):
    """Step 1: (bounding box, kept-tumour mask inside it, component ids inside it, component sizes).

    Sizes and the box come from the tumour voxels alone (a few percent of the
    volume), not from full-volume passes over the component image.
    """
    components, count = ndimage.label(tumour, structure=_structure(params.connectivity))
    flat = np.flatnonzero(tumour)
    ids = components.reshape(-1)[flat]
    sizes = np.bincount(ids, minlength=count + 1)
    keep = sizes >= min_size
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    kept = np.unravel_index(flat[keep[ids]], tumour.shape)
    # Grown by one voxel so that holes stay enclosed inside the box.
    box = tuple(slice(max(0, int(k.min()) - 1), min(n, int(k.max()) + 2)) for k, n in zip(kept, tumour.shape))
    comp = components[box]
    return box, keep[comp], comp, sizes


def _class_islands(labels: np.ndarray, comp: np.ndarray, sizes: np.ndarray, params: DenoiseParams,
                   min_size: float) -> np.ndarray:
    """Step 2: mask of voxels in small one-class islands that sit inside a larger tumour component."""
    relabel = np.zeros(labels.shape, dtype=bool)
    structure = _structure(params.connectivity)
    for cls in np.unique(labels[labels > 0]):
        islands, count = ndimage.label(labels == cls, structure=structure)
        if count == 0:
            continue
        island_sizes = np.bincount(islands.reshape(-1), minlength=count + 1)
        small = island_sizes < min_size
        small[0] = False
        if not small.any():
            continue
        # An island that is its whole tumour component has no surrounding label.
        owner = np.zeros(count + 1, dtype=np.int64)
        owner[islands.reshape(-1)] = comp.reshape(-1)  # every voxel of an island has the same component
        small[1:] &= sizes[owner[1:]] != island_sizes[1:]
        relabel |= small[islands]
    return relabel


def _holes(tumour: np.ndarray, mode: str) -> np.ndarray:
    """Step 3: background voxels enclosed by ``tumour`` (3-D, or within each axis-2 slice)."""
    if mode == "none":
        return np.zeros(tumour.shape, dtype=bool)
    structure = ndimage.generate_binary_structure(3, 1)
    if mode == "axial":
        structure[:, :, 0] = False
        structure[:, :, 2] = False
    return ndimage.binary_fill_holes(tumour, structure=structure) & ~tumour


def denoise(labels: np.ndarray, params: DenoiseParams | None = None, spacing=(1.0, 1.0, 1.0),
            **overrides) -> np.ndarray:
    """Clean a predicted label volume (see the module docstring for the three steps).

    Args:
        labels: (X, Y, Z) integer labels 0..3 (0 background, 1 NCR, 2 ED, 3 ET).
        params: :class:`DenoiseParams`; default :data:`DEFAULTS`.
        spacing: voxel size in mm per axis (turns the mm^3 sizes into voxel counts).
        **overrides: fields of :class:`DenoiseParams` to change, e.g. ``min_component_mm3=500``.

    Returns:
        (X, Y, Z) uint8 labels; a new array, ``labels`` is not modified.

    Raises:
        ValueError: ``labels`` not 3-D, or a bad parameter.
    """
    params = replace(params or DEFAULTS, **overrides)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (X, Y, Z), got {labels.shape}")
    min_component, min_island = voxel_thresholds(params, spacing)
    src = labels.astype(np.uint8, copy=False)
    out = np.zeros(src.shape, dtype=np.uint8)
    tumour = src > 0
    if not tumour.any():
        return out
    box, kept, comp, sizes = _keep_components(tumour, params, min_component)
    crop = np.where(kept, src[box], 0).astype(np.uint8)
    targets = np.zeros(crop.shape, dtype=bool)
    if params.min_class_island_mm3 > 0:
        targets |= _class_islands(crop, comp, sizes, params, min_island) & kept
    targets |= _holes(kept, params.fill_holes)
    if targets.any():
        known = kept & ~targets
        if known.any():
            # Nearest known tumour voxel of every voxel (Euclidean, voxel units).
            index = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
            crop[targets] = crop[tuple(ix[targets] for ix in index)]
    out[box] = crop
    return out
