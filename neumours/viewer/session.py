"""What the viewer does with the device: one checkpoint, the open case, its caches, renders and corrections.

A :class:`ViewerSession` is used by one thread only, the worker of
:mod:`neumours.viewer.worker`, which owns the slangpy device and runs every
render, refinement and re-cache in turn. The open case lives on the device:
its raw MRI (channel-last, what the raymarcher samples), its normalised volumes
(what the INR reads) and the :class:`~neumours.infer.cache.VolumeCache` of the
INR's labels and class probabilities; host copies of the labels feed the slice
views and the changed-crop messages.

Corrections:

- slice painting, :meth:`ViewerSession.paint`: a uint8 paint volume (0 unpainted,
  1..3 NCR/ED/ET, :data:`~neumours.viewer.protocol.PAINT_BACKGROUND` = background),
  refined by :func:`neumours.refine.voxel_loss.refine_voxels`;
- 3-D strokes, :meth:`ViewerSession.set_mask`: a tumour / not-tumour / don't-care
  mask for one camera, refined by :func:`neumours.refine.loop.refine` against the
  rendered tumour silhouette (:func:`neumours.refine.masks.silhouette_settings`).

Every refinement first pushes a copy of the weights, so :meth:`ViewerSession.undo`
restores them bit for bit (and re-caches).
"""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import slangpy as spy

from neumours.conventions import MODALITIES, NUM_CLASSES
from neumours.data import Case, CaseRef, load_case, normalise, save_label
from neumours.errors import NeumoursError
from neumours.infer.cache import VolumeCache
from neumours.infer.denoise import denoise
from neumours.infer.segment import Segmenter
from neumours.model.checkpoint import save_checkpoint
from neumours.model.inputs import CaseVolumes
from neumours.outputs import check_output_folder
from neumours.refine.loop import Anchor, refine
from neumours.refine.masks import DONT_CARE, mask_targets, silhouette_settings
from neumours.refine.voxel_loss import PaintedVoxels, VoxelLoss, refine_voxels
from neumours.render import Frame, RenderSettings, fit_distance, orbit, render_device
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import Camera
from neumours.render.raymarch import ChannelVolume, Scene
from neumours.render.skipping import nonzero_box, occupied_box, union_box
from neumours.render.transfer import DEFAULT_LABEL_OPACITIES, LabelLUT, ModalityWindow
from neumours.viewer.encode import encode_jpeg
from neumours.viewer.protocol import OVERLAYS, PAINT_BACKGROUND, PAINT_NONE, View, changed_crop

#: Undo depth (each entry is one copy of the flat weights: ~1 MB for the paper's network).
MAX_UNDO = 32
#: Most painted voxels one refinement uses (a random subset beyond).
MAX_PAINTED = 1 << 20
#: Cases the anchor samples (other than the open one).
ANCHOR_CASES = 4
#: Weight and points of the anchor on the open case's own voxels away from the corrections.
KEEP_WEIGHT = 1.0
KEEP_POINTS = 8192
#: INR points per volume-cache chunk. Half the batch tool's default: the forward workspace (two
#: chunk x hidden-width fp32 buffers, ~1 GiB here against ~2 GiB) stays allocated for the session's
#: re-caches, and a 240 x 240 x 155 session must fit in 4 GiB of device memory.
CACHE_CHUNK_POINTS = 1 << 19
#: Percentile grid of the MRI windows: 0, 0.5, ..., 100.
_PERCENTILES = np.linspace(0.0, 100.0, 201)


class SessionError(NeumoursError):
    """A request the session cannot do (nothing painted, no --out, no such case); the server replies with it."""


@dataclass(frozen=True)
class ViewSettings:
    """How the 3-D view is rendered (what the page's controls set).

    Attributes:
        modalities: name -> (enabled, weight).
        window: (lo, hi) percentiles of each modality's brain intensities.
        gamma: of every modality window.
        step: ray-march step in box units.
        label_opacity: factor on the default label extinctions.
        overlay: one of :data:`~neumours.viewer.protocol.OVERLAYS`.
        quality: JPEG quality.
    """

    modalities: dict = field(default_factory=lambda: {m: (True, 1.0 / len(MODALITIES)) for m in MODALITIES})
    window: tuple[float, float] = (50.0, 99.5)
    gamma: float = 1.0
    step: float = 0.02
    label_opacity: float = 1.0
    overlay: str = "inr"
    quality: int = 85


@dataclass
class OpenCase:
    """The open case: host data, device volumes and caches, corrections."""

    ref: CaseRef
    case: Case
    vols: CaseVolumes
    mri: ChannelVolume
    mri_box: tuple
    percentiles: np.ndarray
    cache: VolumeCache
    labels: np.ndarray
    paint: np.ndarray
    mask: tuple[View, np.ndarray] | None = None
    derived: dict = field(default_factory=dict)  # overlay name -> (device buffer or volume, occupied box)


class ViewerSession:
    """One checkpoint on one device and the case it shows.

    Args:
        refs: the cases the server may serve (the command line's, nothing else).
        checkpoint: INR checkpoint.
        device: slangpy device.
        out: folder for Save (checked now), or None (saving disabled).

    Raises:
        NeumoursError: a bad checkpoint or output folder.
    """

    def __init__(self, refs: Sequence[CaseRef], checkpoint: str | os.PathLike, device: spy.Device,
                 out: str | os.PathLike | None = None):
        if not refs:
            raise NeumoursError("no cases to view")
        self.refs = {ref.case_id: ref for ref in refs}
        self.checkpoint = Path(checkpoint)
        self.out = check_output_folder(out, "--out folder") if out is not None else None
        self.device = device
        self.segmenter = Segmenter(checkpoint, device, chunk_points=CACHE_CHUNK_POINTS)
        self.segmenter.fits(refs[0].path)  # modalities and classes: before the first case is opened
        self.inr = self.segmenter.inr
        self.history: list = []
        self.state: OpenCase | None = None
        self._frames: dict[tuple[int, int], Frame] = {}
        self._anchor: Anchor | None = None

    # ------------------------------------------------------------------ cases
    def open_case(self, case_id: str) -> dict:
        """Load a case, upload it and cache the INR over it; returns :meth:`info`."""
        if case_id not in self.refs:
            raise SessionError(f"case {case_id!r}: not one of the cases this viewer serves")
        case = load_case(self.refs[case_id])
        if self.state is not None:
            self.state = None  # free the previous case's buffers first
        cache = self.segmenter.cache(case.images, keep_probs=True, source=self.refs[case_id].path)
        images = case.images
        brain = [channel[channel != 0] for channel in images]
        percentiles = np.stack([np.percentile(v if v.size else c.reshape(-1), _PERCENTILES)
                                for v, c in zip(brain, images)])
        self.state = OpenCase(
            self.refs[case_id], case, cache.volumes, ChannelVolume.upload(self.device, images),
            occupied_box(volumes=images), percentiles, cache, cache.labels(),
            np.zeros(case.shape, np.uint8))
        self.history.clear()
        return self.info()

    def info(self) -> dict:
        st = self._open()
        half = volume_box(st.case.shape, st.case.spacing)
        return {"type": "case", "case": st.case.case_id, "cases": sorted(self.refs), "shape": list(st.case.shape),
                "spacing": list(st.case.spacing), "has_ground_truth": st.case.label is not None,
                "modalities": list(MODALITIES), "half": half.tolist(),
                "to_voxel": to_voxel_scale(st.case.shape, half).tolist(),
                "undo_depth": len(self.history), "can_save": self.out is not None,
                "painted": int((st.paint != PAINT_NONE).sum()), "has_mask": st.mask is not None}

    def _open(self) -> OpenCase:
        if self.state is None:
            raise SessionError("no case is open")
        return self.state

    # ------------------------------------------------------------------ volumes for the slice views
    def volume_bytes(self, case_id: str, kind: str) -> tuple[bytes, str]:
        """NIfTI bytes and a file name of one volume of the open case, for NiiVue.

        ``kind``: a modality (the input file as it is), or an overlay: ``inr``,
        ``denoised``, ``ground_truth`` (uint8 labels) or ``probabilities``
        (float32 tumour probability 1 - p_background).

        Raises:
            SessionError: not the open case, an unknown kind, or no ground truth.
        """
        st = self._open()
        if case_id != st.case.case_id:
            raise SessionError(f"case {case_id!r} is not open")
        if kind in MODALITIES:
            path = Path(st.ref.paths[kind])
            return path.read_bytes(), kind + (".nii.gz" if path.name.endswith(".gz") else ".nii")
        if kind == "probabilities":
            p0 = st.cache.probabilities()[0]
            data = (1.0 - p0).astype(np.float32)
        elif kind in ("inr", "denoised", "ground_truth"):
            data = self.overlay_labels(kind)
        else:
            raise SessionError(f"no volume {kind!r}")
        header = st.case.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = (0.0, 1.0) if kind == "probabilities" else (0, NUM_CLASSES - 1)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        raw = cls(data, st.case.affine, header).to_bytes()
        return gzip.compress(raw, compresslevel=1), f"{kind}.nii.gz"

    def overlay_labels(self, kind: str) -> np.ndarray:
        """(X, Y, Z) uint8 labels of ``inr``, ``denoised`` or ``ground_truth``."""
        st = self._open()
        if kind == "inr":
            return st.labels
        if kind == "ground_truth":
            if st.case.label is None:
                raise SessionError(f"case {st.case.case_id} has no ground truth")
            return st.case.label
        if "denoised_labels" not in st.derived:
            st.derived["denoised_labels"] = denoise(st.labels, spacing=st.case.spacing)
        return st.derived["denoised_labels"]

    # ------------------------------------------------------------------ rendering
    def camera(self, view: View) -> Camera:
        st = self._open()
        half = volume_box(st.case.shape, st.case.spacing)
        distance = fit_distance(half, view.fov, view.width / view.height) / view.zoom
        return orbit(view.azimuth, view.elevation, distance, target=view.target, fov_y_deg=view.fov,
                     width=view.width, height=view.height)

    def render_settings(self, settings: ViewSettings) -> RenderSettings:
        st = self._open()
        lo_i, hi_i = (int(round(p * 2)) for p in settings.window)
        windows = []
        for m, name in enumerate(MODALITIES):
            enabled, weight = settings.modalities.get(name, (True, 0.25))
            lo, hi = float(st.percentiles[m, lo_i]), float(st.percentiles[m, max(hi_i, lo_i + 1)])
            if not hi > lo:
                hi = lo + max(abs(lo), 1.0) * 1e-3
            windows.append(ModalityWindow(lo=lo, hi=hi, gamma=settings.gamma, weight=weight, enabled=enabled))
        opacities = np.array(DEFAULT_LABEL_OPACITIES, np.float32) * np.float32(settings.label_opacity)
        return RenderSettings(windows=tuple(windows), lut=LabelLUT(opacities=opacities), step=settings.step)

    def scene(self, overlay: str) -> Scene:
        """The device scene of the open case with ``overlay`` (skipping empty space)."""
        st = self._open()
        shape, spacing = st.case.shape, st.case.spacing
        if overlay not in OVERLAYS:
            raise SessionError(f"unknown overlay {overlay!r}")
        if overlay == "none":
            return Scene(self.device, shape, spacing, mri=st.mri, occupied=st.mri_box)
        if overlay == "probabilities":
            probs = ChannelVolume(st.cache.probs_buffer, NUM_CLASSES, shape, channels_last=False)
            # Softmax outputs are never exactly 0, so this box is the whole volume unless the INR says otherwise.
            if "probabilities" not in st.derived:
                st.derived["probabilities"] = union_box(st.mri_box, occupied_box(probabilities=st.cache.probabilities()))
            return Scene(self.device, shape, spacing, mri=st.mri, probabilities=probs,
                         occupied=st.derived["probabilities"])
        key = f"scene:{overlay}"
        if key not in st.derived:
            labels = self.overlay_labels(overlay)
            from neumours.device import upload

            buffer = st.cache.labels_buffer if overlay == "inr" else upload(self.device, labels, np.uint32)
            st.derived[key] = (buffer, union_box(st.mri_box, nonzero_box(labels != 0)))
        buffer, box = st.derived[key]
        return Scene(self.device, shape, spacing, mri=st.mri, labels=buffer, occupied=box)

    def render(self, view: View, settings: ViewSettings) -> tuple[bytes, dict]:
        """One JPEG frame of the 3-D view and its timings and camera (for the page's crosshair)."""
        t0 = time.perf_counter()
        camera = self.camera(view)
        scene = self.scene(settings.overlay)
        size = (view.width, view.height)
        frame = self._frames.get(size)
        if frame is None:
            if len(self._frames) >= 4:
                self._frames.clear()
            frame = self._frames[size] = Frame.allocate(self.device, *size)
        render_device(scene, camera, self.render_settings(settings), frame)
        t1 = time.perf_counter()
        data, encoder = encode_jpeg(self.device, frame, settings.quality)
        t2 = time.perf_counter()
        return data, {"width": view.width, "height": view.height, "render_ms": (t1 - t0) * 1e3,
                      "encode_ms": (t2 - t1) * 1e3, "encoder": encoder, "camera": camera.kernel_vectors()}

    # ------------------------------------------------------------------ corrections
    def paint(self, origin: Sequence[int], values: np.ndarray) -> int:
        """Replace the painting state inside a box; returns how many voxels are painted in all."""
        st = self._open()
        box = tuple(slice(o, o + s) for o, s in zip(origin, values.shape))
        st.paint[box] = values
        return int((st.paint != PAINT_NONE).sum())

    def set_mask(self, view: View, origin: Sequence[int], values: np.ndarray) -> None:
        """A 3-D-view mask for ``view``'s camera: ``values`` at (x0, y0) = ``origin``, don't care elsewhere."""
        st = self._open()
        mask = np.full((view.height, view.width), DONT_CARE, np.uint8)
        x0, y0 = origin
        h, w = values.shape
        mask[y0:y0 + h, x0:x0 + w] = values
        st.mask = (view, mask)

    def clear(self) -> None:
        """Forget the painted voxels and the 3-D mask."""
        st = self._open()
        st.paint[:] = PAINT_NONE
        st.mask = None

    def _anchor_for(self) -> Anchor:
        """The anchor over other cases, built on first use against the weights at that moment."""
        if self._anchor is None:
            st = self._open()
            others = [ref for cid, ref in sorted(self.refs.items()) if cid != st.case.case_id][:ANCHOR_CASES]
            if not others:
                raise SessionError("anchoring needs other cases: start the viewer on a dataset folder")
            vols = CaseVolumes.upload(self.device, [normalise(load_case(ref).images) for ref in others])
            self._anchor = Anchor.sample(self.inr, vols, points=4096)
        return self._anchor

    def _masked_voxels(self) -> np.ndarray:
        """(X, Y, Z) bool: the voxels whose centres the 3-D mask's camera sees on a tumour / not-tumour pixel."""
        st = self._open()
        shape = st.case.shape
        corrected = np.zeros(shape, bool)
        if st.mask is None:
            return corrected
        view, mask = st.mask
        camera = self.camera(view)
        half = volume_box(shape, st.case.spacing)
        scale = to_voxel_scale(shape, half)
        grid = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), axis=-1)
        for z in range(shape[2]):  # one slice at a time: a 240x240x155 case never holds all voxels' coordinates
            voxels = np.concatenate([grid, np.full(grid.shape[:2] + (1,), z)], axis=-1)
            column, row, depth = camera.project(voxels / scale - half)
            col, rw = np.rint(column).astype(np.int64), np.rint(row).astype(np.int64)
            seen = (depth > 0) & (col >= 0) & (col < view.width) & (rw >= 0) & (rw < view.height)
            values = np.full(col.shape, DONT_CARE, np.uint8)
            values[seen] = mask[rw[seen], col[seen]]
            corrected[:, :, z] = values != DONT_CARE
        return corrected

    def refine(self, steps: int = 20, lr: float = 1e-3, anchored: bool = False, settings: ViewSettings | None = None,
               on_step: Callable[[str, dict], None] | None = None, keep: float = KEEP_WEIGHT) -> dict:
        """Refine the weights on the corrections, re-cache, and say what changed.

        Slice paint runs the voxel loss, a 3-D mask the render loss (path "cache"),
        for ``steps``; with both, one loop optimises their sum.

        Args:
            anchored: also hold the predictions on other cases of the dataset.
            keep: weight of the anchor that holds this case's own labels away from
                the corrections (:meth:`~neumours.refine.loop.Anchor.keep_rest`;
                without it a stroke on one slice can relabel the whole volume);
                0 turns it off.

        Returns:
            ``{"rows": [...], "labels": (origin, crop) or None, "seconds": ...}``.
        """
        st = self._open()
        painted = st.paint != PAINT_NONE
        if not painted.any() and st.mask is None:
            raise SessionError("nothing to refine: paint on a slice or draw on the 3-D view first")
        start = time.perf_counter()
        anchor = [self._anchor_for()] if anchored else []
        if keep > 0:
            corrected = painted | self._masked_voxels()
            anchor.append(Anchor.keep_rest(self.inr, st.vols, st.labels, corrected, points=KEEP_POINTS, weight=keep))
        self.history.append(self.inr.bridge.params.detach().clone())
        del self.history[:-MAX_UNDO]
        rows = []

        def report(kind):
            def call(row):
                rows.append({"kind": kind, **row})
                if on_step is not None:
                    on_step(kind, row)
            return call

        voxel_loss = None
        if painted.any():
            positions = np.argwhere(painted)
            if len(positions) > MAX_PAINTED:
                positions = positions[np.random.default_rng(0).choice(len(positions), MAX_PAINTED, replace=False)]
            values = st.paint[tuple(positions.T)]
            classes = np.where(values == PAINT_BACKGROUND, 0, values)
            points = PaintedVoxels.upload(self.inr, st.vols, positions, classes)
            if st.mask is None:
                refine_voxels(self.inr, points, steps=steps, lr=lr, anchor=anchor, on_step=report("voxel"))
            else:
                voxel_loss = VoxelLoss(self.inr, points)
        if st.mask is not None:
            # With slice paint too, one loop: image loss + painted voxels' CE + anchors at every step (two
            # loops in turn would let the second undo the first, which it no longer holds).
            view, mask = st.mask
            targets, weights = mask_targets([mask])
            base = self.render_settings(settings or ViewSettings())
            terms = anchor + ([voxel_loss] if voxel_loss is not None else [])
            refine(self.inr, st.vols, st.case.spacing, [self.camera(view)], silhouette_settings(base), targets,
                   steps=steps, lr=lr, anchor=terms, weights=weights, path="cache",
                   on_step=report("render + voxel" if voxel_loss is not None else "render"))
        changed = self._recache()
        return {"rows": rows, "labels": changed, "seconds": time.perf_counter() - start}

    def undo(self) -> dict:
        """Restore the weights before the last refinement (bit for bit) and re-cache."""
        if not self.history:
            raise SessionError("nothing to undo")
        import torch

        with torch.no_grad():
            self.inr.bridge.params.copy_(self.history.pop())
        self.inr.bridge.push_params()
        return {"labels": self._recache()}

    def _recache(self):
        """A new cache of the open case; the changed crop of the INR labels (or None)."""
        st = self._open()
        before = st.labels
        st.cache = VolumeCache(self.inr, st.vols, keep_probs=True, chunk_points=self.segmenter.chunk_points,
                               scratch=self.segmenter.scratch)
        st.labels = st.cache.labels()
        st.derived.clear()
        return changed_crop(before, st.labels)

    def save(self) -> dict:
        """Write the refined checkpoint and the INR segmentation into --out (each file atomically)."""
        st = self._open()
        if self.out is None:
            raise SessionError("saving needs an output folder: start the viewer with --out DIR")
        check_output_folder(self.out, "--out folder")
        cid = st.case.case_id
        weights = self.inr.bridge.params.detach().cpu().numpy()
        ckpt = save_checkpoint(self.out / f"{cid}_refined.safetensors", weights, self.inr.config,
                               metadata={"refined_from": self.checkpoint.name, "case": cid,
                                         "refinements": str(len(self.history))})
        seg = save_label(st.labels, self.out / f"{cid}_seg.nii.gz", like=st.case)
        return {"checkpoint": str(ckpt), "segmentation": str(seg)}

    def painted_count(self) -> int:
        return int((self._open().paint != PAINT_NONE).sum())
