"""Volume caching: the INR evaluated over a whole case in one pass of Slang kernels.

docs/method.md "Inference and caching": the grid is cut into chunks of whole axis-0
slabs (contiguous in C-order), and every chunk runs three kernels on the device,
``grid_inputs`` (coordinates + patches), the INR's inference (``INR.infer_device``: the
fused kernel at precision bf16, the forward products elsewhere)
and ``argmax_labels`` (``slang/probability_kernels.slang``), which writes the chunk's
labels (and optionally softmax probabilities) into whole-volume buffers
(:func:`neumours.infer.points.classify_points`, shared with the ray-sample field). Nothing
comes back to the host until :meth:`VolumeCache.labels` or
:meth:`VolumeCache.probabilities` is called; the renderer samples
:attr:`VolumeCache.labels_buffer` directly.

A grid finer than the case (``scale`` > 1) samples the same field of view: grid
point i sits at voxel position i * (D - 1) / (G - 1) (continuous coordinates,
trilinear patches), so the first and last voxel centres stay where they were.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import ScratchBuffers, download, empty_buffer, upload
from neumours.errors import NeumoursError
from neumours.infer.points import classify_points
from neumours.kernels.probabilities import pack_labels
from neumours.model.inputs import CaseVolumes, grid_inputs
from neumours.model.inr import INR

#: Default most points per chunk: 2^20 keeps the forward-only workspace near 2.5 GB
#: for the paper's network (two (N, 256) activations, inputs and logits, ~2.5 kB a point).
DEFAULT_CHUNK_POINTS = 1 << 20
#: Largest device buffer a chunk may need. A 4 GiB buffer failed to allocate on CUDA
#: (slangpy 0.43.1, H100: cuMemAlloc CUDA_ERROR_INVALID_VALUE), so stay below 2 GiB:
#: at most ~2.09 M points per chunk for the paper's 256-wide layers.
MAX_BUFFER_BYTES = (1 << 31) - 1


def super_resolution_shape(shape: Sequence[int], scale: float) -> tuple[int, int, int]:
    """Grid of the same field of view, ``scale`` times finer: G = round(scale * (D - 1)) + 1.

    With an integral ``scale`` the new spacing is exactly old / scale and every
    ``scale``-th grid point is an original voxel centre.

    Args:
        shape: (X, Y, Z) of the case.
        scale: refinement factor, >= 1 (1 gives ``shape`` back).

    Raises:
        ValueError: ``scale`` below 1 or not finite.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 1):
        raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
    return tuple(int(round(scale * (d - 1))) + 1 if d > 1 else 1 for d in shape)  # type: ignore[return-value]


def grid_problem(grid: Sequence[int], num_classes: int, probs: bool = False, host_bytes: int | None = None,
                 device_bytes: int | None = None, shared: bool = False) -> str | None:
    """Why a label grid cannot be computed, or None when it fits.

    Limits, all known before any work: 32-bit indices (``num_classes`` x voxels
    < 2^32, the kernels' index type), the largest device buffer
    (:data:`MAX_BUFFER_BYTES`: the uint32 labels, and the float32 probabilities
    with ``probs``), and the memory left (``device_bytes`` for the device's
    buffers; ``host_bytes`` for the downloaded labels, probabilities and the
    NIfTI encoding of them; None: not checked). ``shared``: the device's buffers
    live in host memory (slangpy's CPU device), so both needs count against ``host_bytes``.
    The phrase returned completes "the GxGxG grid ...".
    """
    total = math.prod(int(g) for g in grid)
    if num_classes * total >= 2**32:
        return "has too many voxels for the kernels' 32-bit indices"
    if 4 * total > MAX_BUFFER_BYTES:
        return "needs a label buffer over the 2 GiB device buffer limit"
    if probs and 4 * num_classes * total > MAX_BUFFER_BYTES:
        return "needs a probability buffer over the 2 GiB device buffer limit"
    on_device = 4 * total * (1 + (num_classes if probs else 0))
    on_host = total * (4 + 1 + 1) + (3 * 4 * num_classes * total if probs else 0) + (on_device if shared else 0)
    if device_bytes is not None and on_device > device_bytes:
        return f"needs {on_device / 2**30:.1f} GiB of device memory, {device_bytes / 2**30:.1f} GiB free"
    if host_bytes is not None and on_host > host_bytes:
        return f"needs {on_host / 2**30:.1f} GiB of host memory, {host_bytes / 2**30:.1f} GiB available"
    return None


def largest_scale(shape: Sequence[int], num_classes: int, probs: bool = False, host_bytes: int | None = None,
                  device_bytes: int | None = None, shared: bool = False) -> float | None:
    """The largest ``scale`` (to 0.01) whose grid :func:`grid_problem` accepts, or None (not even 1)."""

    def fits(scale: float) -> bool:
        grid = super_resolution_shape(shape, scale)
        return grid_problem(grid, num_classes, probs, host_bytes, device_bytes, shared) is None

    if not fits(1.0):
        return None
    lo, hi = 1.0, 2.0
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return math.floor(lo * 100) / 100


def super_resolution_affine(affine: np.ndarray, shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of ``grid`` covering the field of view of ``shape``.

    Column j of the linear part is scaled by (D_j - 1) / (G_j - 1); the
    translation is unchanged, so grid voxel 0 and grid voxel G - 1 map to the
    world points of the input's voxel 0 and voxel D - 1.

    Args:
        affine: (4, 4) voxel -> world of the input.
        shape, grid: input (X, Y, Z) and output (G0, G1, G2).

    Returns:
        (4, 4) float64 affine of the output grid.
    """
    out = np.array(affine, dtype=np.float64, copy=True)
    for j, (d, g) in enumerate(zip(shape, grid)):
        out[:3, j] *= (d - 1) / (g - 1) if g > 1 else 1.0
    return out


def forward_cost(inr: INR, volumes: CaseVolumes | None = None, case_index: int = 0, small: int = 8,
                 large: int = 16) -> tuple[float, float]:
    """Measured cost of caching on this device: (seconds per voxel, seconds per pass).

    The INR is cached over a ``small``^3 and a ``large``^3 grid (of ``volumes``'
    case, or of a zero volume: the cost does not depend on the values) after an
    untimed pass that compiles the kernels; the slope is the cost of a voxel, the
    rest that of a pass (dispatches, buffers). For time estimates before long work.
    """
    if volumes is None:
        volumes = CaseVolumes.upload(inr.device, [np.zeros((inr.config.num_modalities, large, large, large),
                                                           np.float32)])
    times = []
    for size in (2, small, large):
        start = time.perf_counter()
        VolumeCache(inr, volumes, case_index=case_index, grid_shape=(size,) * 3).labels()
        times.append(time.perf_counter() - start)
    per_voxel = max(times[2] - times[1], 0.0) / (large**3 - small**3)
    return per_voxel, max(times[1] - per_voxel * small**3, 0.0)


def download_labels(device: spy.Device, labels: spy.Buffer, shape: Sequence[int],
                    scratch: ScratchBuffers | None = None, order: str = "C") -> np.ndarray:
    """(X, Y, Z) uint8 copy of a uint32 label buffer (values < 256), packed four to a word on the
    device first so a quarter of the bytes cross (9 MB instead of 36 MB for 240 x 240 x 155).

    ``order="F"`` returns the same values in a Fortran-ordered array, reordered on the device
    while packing: a NIfTI file stores voxels in that order, so writing such an array is a plain
    copy where a C-ordered one costs a transposing copy on the host (~15 ms for 240 x 240 x 155).
    """
    shape = tuple(int(s) for s in shape)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    total = int(np.prod(shape))
    words = -(-total // 4)
    packed = scratch.get("labels.packed", words, np.uint32) if scratch is not None else \
        empty_buffer(device, words, np.uint32)
    fortran = order == "F" and len(shape) == 3 and total > 0
    pack_labels(device, labels, packed, total, fortran_grid=shape if fortran else None)
    flat = download(packed, (words,), np.uint32).view(np.uint8)[:total]
    if fortran:
        return flat.reshape(shape[::-1]).T.copy(order="F")
    return flat.reshape(shape).copy()


@dataclass
class StageTimer:
    """Wall time per named stage, with the device synchronised at each boundary.

    Used only when timings are asked for: synchronising costs a little, so the
    untimed path never waits for the device between chunks.
    """

    device: spy.Device | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device is not None:
            self.device.wait_for_idle()

    def add(self, stage: str, start: float) -> float:
        """Close ``stage`` begun at ``start`` (perf_counter) after syncing; returns now."""
        self.sync()
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
        return now


class NonFiniteLogitsError(NeumoursError):
    """The network gave NaN or Inf logits (finite weights whose products overflow float32): its labels and
    probabilities would mean nothing (an arg-max over NaN is class 0: silently all background)."""


class VolumeCache:
    """Labels (and optionally class probabilities) of one case, computed and kept on the device.

    Args:
        inr: the network (its parameters must be on the device: call
            ``inr.bridge.push_params()`` after changing weights on a non-CUDA device;
            ``load_state_dict`` already does).
        volumes: normalised volumes on the device (:meth:`CaseVolumes.upload`), or a
            normalised (modalities, X, Y, Z) float32 array to upload.
        case_index: which case of ``volumes``.
        grid_shape: output grid (G0, G1, G2); default the case's shape. Finer grids
            sample the same field of view (see :func:`super_resolution_shape`).
        keep_probs: also keep softmax probabilities, (num_classes, G0, G1, G2) float32.
        chunk_points: most points per chunk; rounded down to whole axis-0 slabs
            (at least one slab) and capped so that no buffer exceeds
            :data:`MAX_BUFFER_BYTES`.
        timer: optional :class:`StageTimer`; adds ``"inference"`` (inputs + INR
            forward) and ``"argmax"`` seconds.
        scratch: optional :class:`~neumours.device.ScratchBuffers` for the
            per-chunk working buffers (kept for the next case; the labels and
            probabilities are always new buffers).

    Raises:
        NonFiniteLogitsError: a logit of the volume is NaN or Inf (flagged by the
            arg-max kernel, read back once after the pass: 4 bytes).

    Attributes:
        labels_buffer: uint32 device buffer of G0*G1*G2 labels, C-order.
        probs_buffer: float32 device buffer (num_classes, G0, G1, G2), or None.
        shape: the grid (G0, G1, G2).
        chunks: how many chunks the pass took.
    """

    def __init__(self, inr: INR, volumes: CaseVolumes | np.ndarray, case_index: int = 0,
                 grid_shape: Sequence[int] | None = None, keep_probs: bool = False,
                 chunk_points: int = DEFAULT_CHUNK_POINTS, timer: StageTimer | None = None,
                 scratch: ScratchBuffers | None = None):
        self.inr = inr
        self.device = inr.device
        cfg = inr.config
        if not isinstance(volumes, CaseVolumes):
            volumes = CaseVolumes.upload(self.device, [volumes])
        if volumes.num_modalities != cfg.num_modalities:
            raise ValueError(f"volumes have {volumes.num_modalities} modalities, the INR expects {cfg.num_modalities}")
        self.volumes = volumes
        self.case_index = int(case_index)
        self.case_shape = tuple(volumes.shapes[self.case_index])
        self.shape = tuple(int(g) for g in (grid_shape or self.case_shape))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid_shape must be three positive sizes, got {grid_shape}")
        self.total = int(np.prod(self.shape))
        if cfg.num_classes * self.total >= 2**32:
            raise ValueError(f"grid {self.shape} is too large for 32-bit indices")
        self.num_classes = cfg.num_classes
        slab = self.shape[1] * self.shape[2]
        widest = 4 * max(cfg.hidden_width, cfg.patch_dim)
        points = min(int(chunk_points), MAX_BUFFER_BYTES // widest)
        self.chunk = slab * max(1, min(points // slab, self.shape[0]))
        if self.chunk * widest > MAX_BUFFER_BYTES:
            raise ValueError(f"one axis-0 slab of grid {self.shape} needs buffers over 2 GiB")
        self.chunks = -(-self.total // self.chunk)
        self.labels_buffer = empty_buffer(self.device, self.total, np.uint32)
        self.probs_buffer = empty_buffer(self.device, cfg.num_classes * self.total) if keep_probs else None
        self._run(timer, scratch)

    def _run(self, timer: StageTimer | None, scratch: ScratchBuffers | None) -> None:
        cfg, dev = self.inr.config, self.device
        nonfinite = upload(dev, np.zeros(1, np.uint32), np.uint32)
        if timer is not None:
            timer.sync()

        def fill(start, count, coords, patches):
            grid_inputs(cfg, self.volumes, self.case_index, self.shape, start, count, coords, patches)

        classify_points(self.inr, self.total, fill, self.chunk, self.labels_buffer, self.probs_buffer, nonfinite,
                        scratch, timer)
        if download(nonfinite, (1,), np.uint32)[0]:
            raise NonFiniteLogitsError(f"the network's logits are NaN or Inf on the {'x'.join(map(str, self.shape))} "
                                       "grid (weights whose products overflow float32)")

    def labels(self) -> np.ndarray:
        """The labels, downloaded: (G0, G1, G2) uint8, values 0 .. num_classes - 1.

        Packed four to a word on the device first, so a quarter of the bytes cross
        (9 MB instead of 36 MB for a 240 x 240 x 155 case).
        """
        return download_labels(self.device, self.labels_buffer, self.shape)

    def probabilities(self) -> np.ndarray:
        """Softmax probabilities, downloaded: (num_classes, G0, G1, G2) float32, channel first.

        Raises:
            RuntimeError: the cache was built without ``keep_probs``.
        """
        if self.probs_buffer is None:
            raise RuntimeError("this VolumeCache was built without keep_probs=True")
        return download(self.probs_buffer, (self.num_classes, *self.shape))
