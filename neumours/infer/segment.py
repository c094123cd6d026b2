"""Whole-case segmentation with a trained INR: the function behind ``neumours segment``.

One case: load the four modalities, upload them, z-score them on the device, run the
:class:`~neumours.infer.cache.VolumeCache` pass on the device (labels, optionally
probabilities), optionally denoise, download, and write NIfTI files that overlay
the input (same affine and header; with ``scale`` > 1 the affine of the finer
grid of the same field of view). Denoising runs where the labels are on a GPU
(:func:`~neumours.infer.denoise_device.denoise_on_device`: only the denoised
labels cross to the host) and with scipy on the host for the CPU device
(:func:`~neumours.infer.denoise.denoise`); both give the same labels.

The load and the upload overlap: given a case path, each modality goes to the device as soon
as it is decoded while the later ones still decode (the "load" stage then holds most of the
upload, and "upload" only what is left); the labels come down in Fortran order, a NIfTI
file's, so writing them is a plain copy.

    seg = Segmenter("model.safetensors")
    result = seg("BraTS-GLI-00001-000", denoise=True)
    write_segmentation(result, "BraTS-GLI-00001-000.nii.gz")

:func:`segment_paths` is the command: a case or a folder of cases, one output
file each, a progress bar. Every case's headers are checked before the first
is segmented; a case that fails later stops the run (its error names the case
and the cases already written; none is left half-written), or with
``keep_going`` is skipped and reported at the end.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import slangpy as spy

from neumours.conventions import NUM_MODALITIES
from neumours.data import Case, check_cases, list_cases, load_case, normalise, save_label
from neumours.data.layouts import case_files
from neumours.data.geometry import voxel_spacing
from neumours.data.nifti import is_nifti_name, read_header, write_nifti
from neumours.device import ScratchBuffers, upload, upload_into
from neumours.device.memory import device_available_bytes, host_available_bytes
from neumours.errors import CasesFailedError, NeumoursDataError, NeumoursError
from neumours.infer.cache import (DEFAULT_CHUNK_POINTS, NonFiniteLogitsError, StageTimer, VolumeCache,
                                  download_labels, forward_cost, grid_problem, largest_scale,
                                  super_resolution_affine, super_resolution_shape)
from neumours.outputs import Output, check_output_file, check_output_folder
from neumours.outputs import check_outputs as check_safe_outputs
from neumours.infer.denoise import DenoiseParams, denoise as denoise_labels
from neumours.infer.denoise_device import denoise_on_device
from neumours.infer.normalise import normalise_on_device
from neumours.model.checkpoint import check_fits_data, load_checkpoint
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR

#: Order of the stages in :attr:`SegmentResult.timings` (those that ran). Denoising on the
#: device comes before the download; on the host (CPU device) it runs after it.
STAGES = ("load", "upload", "normalise", "inference", "argmax", "denoise", "download", "write")


@dataclass
class SegmentResult:
    """What :class:`Segmenter` produced for one case.

    Attributes:
        case: the loaded case (raw images, its affine and header).
        labels: (G0, G1, G2) uint8 labels 0..3, denoised when asked for.
        raw_labels: (G0, G1, G2) uint8 labels straight from the arg-max (a property:
            after denoising on the device they are downloaded on first use only).
        probs: (4, G0, G1, G2) float32 softmax probabilities (bg, NCR, ED, ET), or None.
        affine: (4, 4) voxel -> world of the output grid (the case's when scale == 1).
        spacing: output voxel size in mm per array axis.
        scale: the super-resolution factor (1: the case's own grid).
        timings: stage -> seconds (see :data:`STAGES`); device stages are
            synchronised only when timings were asked for.
        cache: the :class:`VolumeCache` (labels still on the device), when kept.
    """

    case: Case
    labels: np.ndarray
    probs: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    scale: float = 1.0
    timings: dict[str, float] = field(default_factory=dict)
    cache: VolumeCache | None = None
    #: The raw labels once on the host, or the device buffer to download them from.
    raw: np.ndarray | spy.Buffer | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]

    @property
    def raw_labels(self) -> np.ndarray:
        if isinstance(self.raw, spy.Buffer):  # still on the device: download once
            self.raw = download_labels(self.raw.device, self.raw, self.shape)
        return self.raw


def output_like(case: Case, shape, affine: np.ndarray) -> Case:
    """A :class:`Case` describing an output grid, for :func:`neumours.data.save_label`.

    Same header fields as ``case`` (orientation codes, units, description) with
    the grid's shape, zooms and affine, written into both the qform and the
    sform with the input's codes (a viewer that reads only one of them places
    the grid the same way); ``images`` is a zero-size broadcast view, so no
    memory is allocated.
    """
    shape = tuple(int(n) for n in shape)
    if shape == case.shape and np.allclose(affine, case.affine):
        return case
    spacing = voxel_spacing(affine)
    header = case.header.copy()
    header.set_data_shape(shape)
    header.set_zooms(spacing)
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    header.set_qform(affine, code=qform_code)
    header.set_sform(affine, code=sform_code if (qform_code or sform_code) else 2)
    images = np.broadcast_to(np.float32(0), (case.images.shape[0], *shape))
    return dataclasses.replace(case, images=images, label=None, affine=np.asarray(affine, np.float64),
                               spacing=spacing, header=header)


def _case_volumes(device: spy.Device, volumes: spy.Buffer, shape) -> CaseVolumes:
    """One case's :class:`CaseVolumes` over ``volumes``, its (modalities, X, Y, Z) voxels already uploaded."""
    table = np.array([(0, *shape[1:])], np.uint32)
    return CaseVolumes(device, volumes, upload(device, table, np.uint32), [tuple(int(s) for s in shape[1:])],
                       int(shape[0]))


class _ModalityUpload:
    """:func:`~neumours.data.load_case`'s ``on_modality`` for the segmenter: each modality goes up into the
    volume buffer as soon as it is decoded, while the later files are still being decoded, so the upload
    stage is mostly hidden behind the load (the voxels are the same; only the time they cross changes)."""

    def __init__(self, device: spy.Device, scratch: ScratchBuffers):
        self.device, self.scratch = device, scratch
        self.buffer: spy.Buffer | None = None
        self.shape: tuple[int, ...] | None = None
        self.done: set[int] = set()

    def __call__(self, index: int, voxels: np.ndarray) -> None:
        if self.buffer is None:
            self.shape = voxels.shape
            self.buffer = self.scratch.get("segment.volumes", NUM_MODALITIES * voxels.size)
        upload_into(self.device, self.buffer, voxels, offset=index * voxels.size)
        self.done.add(index)

    def volumes(self, images: np.ndarray) -> CaseVolumes | None:
        """The case's volumes when every modality of ``images`` went up here, else None (upload them whole)."""
        if self.done != set(range(images.shape[0])) or tuple(images.shape[1:]) != self.shape:
            return None
        return _case_volumes(self.device, self.buffer, images.shape)


class Segmenter:
    """A loaded checkpoint on a device, ready to segment cases one after another.

    Args:
        checkpoint: path of a ``.safetensors`` checkpoint (:func:`load_checkpoint`).
        device: slangpy device; default :func:`neumours.device.get_device`.
        chunk_points: most INR points per chunk (whole axis-0 slabs).
        device_normalise: z-score on the device (:func:`normalise_on_device`, the
            default) rather than with numpy on the host (:func:`neumours.data.normalise`);
            the numbers agree to float32 rounding.
        precision: "auto" (bf16 tensor cores on CUDA, fp32 elsewhere), "fp32" or "bf16".
        device_denoise: denoise with the device kernels (:func:`denoise_on_device`)
            rather than scipy on the host; default: on every device but the CPU
            one. The labels are the same either way.
        tta_flips: test-time augmentation: average the class probabilities over the
            case mirrored along every subset of these axes (``(0,)``: left-right, two
            passes; :mod:`neumours.infer.tta`); empty (default): one pass. With it the
            labels come from the host (downloaded probabilities) and are denoised there.
        smooth_mm: blur every class's probabilities by a Gaussian of this sigma (mm) before
            the arg-max (:mod:`neumours.infer.smooth`; 0, the default: none); on the host, as
            with ``tta_flips``.

    Raises:
        NeumoursError: the checkpoint cannot be used (one line naming the file).
    """

    def __init__(self, checkpoint: str | os.PathLike, device: spy.Device | None = None,
                 chunk_points: int = DEFAULT_CHUNK_POINTS, device_normalise: bool = True,
                 device_denoise: bool | None = None, precision: str = "auto", tta_flips=(), smooth_mm: float = 0.0):
        from neumours.infer.smooth import check_smooth_mm
        from neumours.infer.tta import check_flip_axes

        self.tta_flips = check_flip_axes(tta_flips)
        self.smooth_mm = check_smooth_mm(smooth_mm)
        state, config, metadata = load_checkpoint(checkpoint)
        config = dataclasses.replace(config, precision=precision)
        if device is None:
            from neumours.device import get_device

            device = get_device()
        self.checkpoint = Path(checkpoint)
        self.metadata = metadata
        self.config = config
        self.device = device
        self.inr = INR(config, device)
        self.inr.load_state_dict(state)  # pushes the weights to the device
        self.chunk_points = int(chunk_points)
        self.device_normalise = bool(device_normalise)
        if device_denoise is None:
            device_denoise = device.info.type != spy.DeviceType.cpu
        self.device_denoise = bool(device_denoise)
        # Working buffers (the case's volumes, per-chunk inputs and activations) live
        # from case to case: a buffer of a new size costs ~0.2 ms/MB to create, so
        # cases of varying shapes would otherwise pay ~0.5 s each for them.
        self.scratch = ScratchBuffers(device)

    def fits(self, data: str | os.PathLike, shape=None, modalities: int = NUM_MODALITIES) -> None:
        """Refuse ``data`` (a case or dataset) this checkpoint's network cannot segment, before any work
        (:func:`~neumours.model.checkpoint.check_fits_data`: modalities, classes, patch size)."""
        check_fits_data(self.config, self.checkpoint, data, shape, modalities)

    def cache(self, images: np.ndarray, grid_shape=None, keep_probs: bool = False,
              timer: StageTimer | None = None, raw: bool = True, source: str | os.PathLike = "the case",
              uploaded: CaseVolumes | None = None) -> VolumeCache:
        """Run the INR over a (4, X, Y, Z) float32 volume; the result stays on the device.

        Args:
            images: raw intensities (``raw=True``: z-scored here, on the device) or
                already normalised ones (``raw=False``).
            source: the case, named when the checkpoint does not fit it (:meth:`fits`).
            uploaded: ``images`` already on the device (uploaded while the case was loading).

        Raises:
            NeumoursError: the checkpoint does not fit the images, or the probabilities
                are not finite (weights that overflow: naming the checkpoint).
        """
        images_shape = tuple(np.shape(images))
        self.fits(source, images_shape[1:], images_shape[0])
        t0 = time.perf_counter()
        vols = uploaded if uploaded is not None else CaseVolumes.upload(self.device, [images], self.scratch,
                                                                        "segment.volumes")
        if timer is not None:
            t0 = timer.add("upload", t0)
        if raw:
            try:
                normalise_on_device(vols)
            except ValueError as exc:
                raise NeumoursError(f"cannot normalise the volumes ({exc})") from None
            if timer is not None:
                timer.add("normalise", t0)
        try:
            return self.cache_volumes(vols, grid_shape, keep_probs, timer)
        except NonFiniteLogitsError as exc:
            raise NeumoursError(f"{self.checkpoint}: cannot segment {source}: {exc}; the checkpoint's weights "
                                "are finite but unusable") from None

    def cache_volumes(self, vols: CaseVolumes, grid_shape=None, keep_probs: bool = False,
                      timer: StageTimer | None = None) -> VolumeCache:
        """The INR over normalised volumes already on the device, with this Segmenter's chunk size and
        working buffers (e.g. a re-cache after the weights changed)."""
        return VolumeCache(self.inr, vols, grid_shape=grid_shape, keep_probs=keep_probs,
                           chunk_points=self.chunk_points, timer=timer, scratch=self.scratch)

    def labels_on_device(self, case: Case, denoise: bool = False) -> spy.Buffer:
        """The INR's labels of ``case`` as a (X * Y * Z,) uint32 device buffer, C-order (for a renderer).

        Denoised where the INR wrote them when ``device_denoise``; otherwise (the CPU device
        denoises with scipy) segmented and denoised on the host, then uploaded once.
        """
        if denoise and not self.device_denoise:
            return upload(self.device, self(case, denoise=True).labels, np.uint32)
        raw = self.cache(case.images).labels_buffer
        if denoise:
            return denoise_on_device(self.device, raw, case.shape, spacing=case.spacing, to_host=False)
        return raw

    def __call__(self, case: Case | str | os.PathLike, scale: float = 1, denoise: bool = False,
                 probs: bool = False, denoise_params: DenoiseParams | None = None, timings: bool = False,
                 keep_cache: bool = False, force_geometry: bool = False) -> SegmentResult:
        """Segment one case.

        Args:
            case: a loaded :class:`Case`, or anything :func:`load_case` accepts.
            scale: super-resolution factor >= 1 (see :func:`super_resolution_shape`).
            denoise: also denoise (``denoise_params``, default DEFAULTS of
                :mod:`neumours.infer.denoise`), on the device or the host (see ``device_denoise``).
            probs: keep the softmax probabilities.
            timings: synchronise the device between stages so that
                :attr:`SegmentResult.timings` splits device work correctly.
            keep_cache: keep the :class:`VolumeCache` (device buffers) on the result;
                its labels and probabilities stay valid, its ``volumes`` only until
                this Segmenter's next call (they are reused). None with ``tta_flips``.
            force_geometry: see :func:`neumours.data.load_case` (when ``case`` is not loaded yet).

        Raises:
            NeumoursError: the case cannot be loaded (naming the file), or a bad ``scale``.
        """
        timer = StageTimer(self.device if timings else None)
        t0 = time.perf_counter()
        streamed = None
        if not isinstance(case, Case):
            # Each modality goes to the device while the later ones decode, when the device z-scores
            # them and no host-side pass (flips, smoothing) needs the case first.
            if self.device_normalise and not (self.tta_flips or self.smooth_mm):
                streamed = _ModalityUpload(self.device, self.scratch)
            case = load_case(case, force_geometry=force_geometry, on_modality=streamed)
            t0 = timer.add("load", t0)
        source = case.paths["t1n"].parent if "t1n" in case.paths else f"case {case.case_id}"
        try:
            grid = super_resolution_shape(case.shape, scale)
        except ValueError as exc:
            raise NeumoursError(f"--scale: {exc}") from None
        affine = super_resolution_affine(case.affine, case.shape, grid)
        spacing = tuple(float(s) * ((d - 1) / (g - 1) if g > 1 else 1.0)
                        for s, d, g in zip(case.spacing, case.shape, grid))
        if self.tta_flips or self.smooth_mm:  # flipped views averaged and/or smoothed, decided on the host
            from neumours.infer.smooth import smooth_probabilities
            from neumours.infer.tta import flip_ensemble

            images = case.images if self.device_normalise else normalise(case.images)
            mean = flip_ensemble(self, images, grid, self.tta_flips, raw=self.device_normalise, timer=timer)
            t0 = time.perf_counter()
            mean = smooth_probabilities(mean, self.smooth_mm, spacing)
            raw_tta = mean.argmax(axis=0).astype(np.uint8)
            t0 = timer.add("argmax", t0)
            labels_tta = denoise_labels(raw_tta, denoise_params, spacing=spacing) if denoise else raw_tta
            if denoise:
                timer.add("denoise", t0)
            return SegmentResult(case, labels_tta, mean if probs else None, affine, spacing, float(scale),
                                 timer.seconds, raw=raw_tta)
        if self.device_normalise:
            uploaded = streamed.volumes(case.images) if streamed is not None else None
            cache = self.cache(case.images, grid, keep_probs=probs, timer=timer, raw=True, source=source,
                               uploaded=uploaded)
        else:
            self.fits(source, case.shape, case.images.shape[0])  # before the host-side normalisation
            normalised = normalise(case.images)
            timer.add("normalise", t0)
            cache = self.cache(normalised, grid, keep_probs=probs, timer=timer, raw=False, source=source)
        t0 = time.perf_counter()
        on_device = denoise and self.device_denoise
        if on_device:  # the raw labels stay on the device unless someone asks for them
            denoised = denoise_on_device(self.device, cache.labels_buffer, grid, denoise_params, spacing,
                                         scratch=self.scratch, to_host=False,
                                         out=self.scratch.get("segment.denoised", cache.total, np.uint32))
            t0 = timer.add("denoise", t0)
            labels = download_labels(self.device, denoised, grid, self.scratch, order="F")  # NIfTI's order
            raw: np.ndarray | spy.Buffer = cache.labels_buffer
        else:
            raw = labels = download_labels(self.device, cache.labels_buffer, grid, self.scratch, order="F")
        probabilities = cache.probabilities() if probs else None
        t0 = timer.add("download", t0)
        if denoise and not on_device:
            labels = denoise_labels(raw, denoise_params, spacing=spacing)
            timer.add("denoise", t0)
        return SegmentResult(case, labels, probabilities, affine, spacing, float(scale), timer.seconds,
                             cache if keep_cache else None, raw=raw)


def write_segmentation(result: SegmentResult, path: str | os.PathLike, labels: np.ndarray | None = None) -> Path:
    """Write ``result.labels`` (or ``labels``) as a uint8 NIfTI overlaying the input, atomically.

    The input's header is reused (orientation codes, units); for ``scale`` > 1
    its shape, zooms and affine are those of the finer grid.
    """
    t0 = time.perf_counter()
    like = output_like(result.case, result.shape, result.affine)
    out = save_label(result.labels if labels is None else labels, path, like=like)
    result.timings["write"] = result.timings.get("write", 0.0) + time.perf_counter() - t0
    return out


def write_probabilities(result: SegmentResult, path: str | os.PathLike) -> Path:
    """Write ``result.probs`` as a 4-D float32 NIfTI (X, Y, Z, 4): bg, NCR, ED, ET, atomically."""
    if result.probs is None:
        raise ValueError("the result holds no probabilities (segment with probs=True)")
    t0 = time.perf_counter()
    path = Path(path)
    like = output_like(result.case, result.shape, result.affine)
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_shape((*result.shape, result.probs.shape[0]))
    header.set_zooms((*like.spacing, 1.0))
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header.set_intent("vector")  # one probability vector per voxel
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    write_nifti(cls(np.moveaxis(result.probs, 0, -1), like.affine, header), path)
    result.timings["write"] = result.timings.get("write", 0.0) + time.perf_counter() - t0
    return path


def output_kind(path: str | os.PathLike, what: str = "--out") -> str:
    """``"file"`` for a ``.nii``/``.nii.gz`` name, ``"folder"`` for an existing folder or a name without a
    file suffix; anything else (``seg.png``, ``out.nii.bak``) is an error, not silently a folder.

    Raises:
        NeumoursError: naming the path and saying what is accepted.
    """
    path = Path(path)
    if is_nifti_name(path.name):
        return "file"
    if path.is_dir():
        return "folder"
    suffix = path.suffix
    if suffix and not path.name.startswith(".") and not suffix[1:].isdigit():
        raise NeumoursError(f"{path}: {what} must be a .nii.gz or .nii file (one case) or a folder (one or more "
                            f"cases), not a {suffix} file; a new folder's name must not end in a file suffix "
                            "(create it first to use such a name)")
    return "folder"


def check_scale(shape, scale: float, num_classes: int, probs: bool, device: spy.Device | None = None,
                what: str = "") -> None:
    """Refuse a ``--scale`` whose grid cannot be computed (see :func:`neumours.infer.cache.grid_problem`),
    naming the largest scale that fits.

    Raises:
        NeumoursError: one line: the grid, why it does not fit, the largest ``--scale`` that does.
    """
    try:
        grid = super_resolution_shape(shape, scale)
    except ValueError as exc:
        raise NeumoursError(f"--scale: {exc}") from None
    host, dev = host_available_bytes(), device_available_bytes(device)
    shared = device is not None and device.info.type == spy.DeviceType.cpu
    problem = grid_problem(grid, num_classes, probs, host, dev, shared)
    if problem is None:
        return
    best = largest_scale(shape, num_classes, probs, host, dev, shared)
    fits = f"the largest that fits is --scale {best:g}" if best is not None else "not even --scale 1 fits"
    where = f"{what}: " if what else ""
    raise NeumoursError(f"{where}--scale {scale:g}: the {'x'.join(map(str, grid))} grid "
                        f"{'(with probabilities) ' if probs else ''}{problem}; {fits}")


def check_outputs(out: str | os.PathLike, probs: str | os.PathLike | None = None) -> bool:
    """Check ``segment``'s output names and folders before any work; returns whether ``out`` is one file.

    Raises:
        NeumoursError: a name that is neither a NIfTI file nor a folder (:func:`output_kind`),
            ``--probs`` of the other kind than ``--out``, or an unwritable place (neumours.outputs).
    """
    out = Path(out)
    single = output_kind(out, "--out") == "file"
    if probs is not None:
        probs = Path(probs)
        if (output_kind(probs, "--probs") == "file") != single:
            raise NeumoursError(f"{probs}: --probs must be a file when --out is a file, and a folder when "
                                "--out is a folder")
    for path, what in ((out, "--out"), (probs, "--probs")):
        if path is not None:
            (check_output_file if single else check_output_folder)(path, f"{what} {'file' if single else 'folder'}")
    return single


def output_files(ref, out: Path, probs: Path | None, single: bool) -> tuple[Path, Path | None]:
    """The label file and the probabilities file (or None) that ``segment`` writes for ``ref``."""
    if single:
        return out, probs
    return out / f"{ref.case_id}.nii.gz", None if probs is None else probs / f"{ref.case_id}_probs.nii.gz"


def _grid_shape(ref, force_geometry: bool) -> tuple[int, int, int]:
    facts, _ = read_header(ref.paths["t1n"], force_geometry)
    shape = tuple(facts.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape  # type: ignore[return-value]


def announce_segmentation(segmenter: Segmenter, shapes, scale: float = 1) -> str | None:
    """Before the first case: one line on stderr when caching these cases will take more than a few minutes
    on the segmenter's device, from the INR timed on small grids (:func:`~neumours.infer.cache.forward_cost`)."""
    import sys

    from neumours.estimates import long_work_note
    from neumours.model.config import INRConfig

    per_voxel, per_pass = forward_cost(segmenter.inr)
    voxels = sum(math.prod(super_resolution_shape(s, scale)) for s in shapes)
    seconds = per_voxel * voxels + per_pass * len(shapes)
    cpu = segmenter.device.info.type == spy.DeviceType.cpu
    suggestion = None
    if cpu and segmenter.config.architecture() == INRConfig.paper():
        suggestion = "the paper network is a GPU network: on a CPU a --preset tiny checkpoint is far faster"
    elif cpu:
        suggestion = "a CUDA device (--device cuda) takes seconds"
    line = long_work_note(f"segmenting {len(shapes)} case{'s' if len(shapes) != 1 else ''} ({voxels:,} voxels)",
                          seconds, f"measured {per_voxel * 1e6:.0f} us a voxel", suggestion)
    if line is not None:
        print(line, file=sys.stderr, flush=True)
    return line


def segment_paths(source: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike,
                  denoise: bool = False, probs: str | os.PathLike | None = None, scale: float = 1,
                  timings: bool = False, device: spy.Device | None = None, progress: bool = True,
                  on_result: Callable[[SegmentResult, Path], None] | None = None, force_geometry: bool = False,
                  keep_going: bool = False, precision: str = "auto", tta_flips=(),
                  smooth_mm: float = 0.0) -> list[Path]:
    """Segment one case or every case under a folder (``neumours segment``).

    Before anything is written: the output names and folders are checked, the
    checkpoint is loaded, every case's headers are checked (shapes, grids,
    geometry, data size: :func:`neumours.data.check_cases`) and ``scale`` is
    checked against the largest case. Without ``keep_going`` the first bad case
    stops the run there, with nothing written; a case whose voxels turn out bad
    later (NaN/Inf, an all-zero modality) stops it with an error that says
    which cases were already written. With ``keep_going`` bad cases are
    skipped and, at the end, :class:`~neumours.errors.CasesFailedError` lists them.

    Args:
        source: a case (folder, virtual nnU-Net path or a modality file) or a
            folder of cases (BraTS, MU-Glioma-Post, nnU-Net layouts).
        checkpoint: the INR checkpoint.
        out: ``SEG.nii.gz`` (or ``.nii``) for one case; otherwise a folder that
            receives ``<case id>.nii.gz`` per case. Any other file name is an error.
        denoise: write the denoised labels.
        probs: ``P.nii.gz`` (one case) or a folder (``<case id>_probs.nii.gz``).
        scale: super-resolution factor.
        timings: synchronise stages (see :meth:`Segmenter.__call__`).
        on_result: called with each result and its output path (the CLI prints timings).
        force_geometry: see :func:`neumours.data.load_case`.
        keep_going: skip bad cases instead of stopping.
        tta_flips, smooth_mm: test-time flips and probability smoothing (see :class:`Segmenter`).

    Returns:
        The label files written.

    Raises:
        NeumoursError: bad checkpoint, input or output names (before any work),
            or a case that fails (naming it); CasesFailedError after a
            ``keep_going`` run with failures.
    """
    out = Path(out)
    probs_path = Path(probs) if probs is not None else None
    single = check_outputs(out, probs_path)
    try:
        super_resolution_shape((2, 2, 2), scale)
    except ValueError as exc:
        raise NeumoursError(f"--scale: {exc}") from None
    segmenter = Segmenter(checkpoint, device, precision=precision,  # a bad checkpoint fails before any case
                          tta_flips=tta_flips, smooth_mm=smooth_mm)
    refs = list_cases(source)
    if single and len(refs) != 1:
        raise NeumoursError(f"{source}: holds {len(refs)} cases; --out must name a folder, not {out.name}")
    targets = {ref.case_id: output_files(ref, out, probs_path, single) for ref in refs}
    check_safe_outputs([Output(path, what) for ref in refs
                        for path, what in zip(targets[ref.case_id], ("--out", "--probs"))],
                       [*case_files(refs), ("--checkpoint", checkpoint)])
    total = len(refs)
    refs, failures = check_cases(refs, force_geometry=force_geometry, keep_going=keep_going)
    failures = [(f.case_id, f.error) for f in failures]
    segmenter.fits(source, min((_grid_shape(r, force_geometry) for r in refs), key=min) if refs else None)
    if refs:
        largest = max(refs, key=lambda r: math.prod(_grid_shape(r, force_geometry)))
        on_host = bool(segmenter.tta_flips or segmenter.smooth_mm)  # probabilities needed for the arg-max
        check_scale(_grid_shape(largest, force_geometry), scale, segmenter.config.num_classes,
                    probs_path is not None or on_host,
                    segmenter.device, what=f"case {largest.case_id}" if len(refs) > 1 else "")
    if progress and refs:
        announce_segmentation(segmenter, [_grid_shape(r, force_geometry) for r in refs], scale)
    from tqdm import tqdm

    written = []
    for ref in tqdm(refs, desc="segment", unit="case", disable=not progress or len(refs) < 2):
        target, ptarget = targets[ref.case_id]
        try:
            result = segmenter(ref, scale=scale, denoise=denoise, probs=ptarget is not None, timings=timings,
                               force_geometry=force_geometry)
            if ptarget is not None:
                write_probabilities(result, ptarget)
            try:
                written.append(write_segmentation(result, target))
            except BaseException:
                if ptarget is not None:  # no probabilities left behind without their labels
                    ptarget.unlink(missing_ok=True)
                raise
        except NeumoursError as exc:
            message = str(exc) if isinstance(exc, NeumoursDataError) else f"case {ref.case_id}: {exc}"
            if keep_going:
                failures.append((ref.case_id, message))
                continue
            if written:
                message += (f" (stopped there: {len(written)} earlier case(s) were written to {out}, "
                            f"the last {written[-1].name}; --keep-going skips bad cases)")
            raise NeumoursError(message) from None
        if on_result is not None:
            on_result(result, target)
    if failures:
        raise CasesFailedError(f"{len(failures)} of {total} case(s) failed (listed above); "
                               f"{len(written)} segmentation(s) written to {out}", failures)
    return written


def format_timings(result: SegmentResult) -> str:
    """One line: each stage in ms and the total, e.g. ``load 412 ms | ... | total 913 ms``."""
    parts = [f"{stage} {result.timings[stage] * 1e3:.0f} ms" for stage in STAGES if stage in result.timings]
    total = sum(result.timings.values())
    return f"{result.case.case_id}: " + " | ".join(parts) + f" | total {total * 1e3:.0f} ms"
