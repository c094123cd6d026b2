"""What the viewer does with the device: one checkpoint, the open case, its caches, renders and corrections.

A :class:`ViewerSession` is used by one thread only, the worker of
:mod:`neumours.viewer.worker`, which owns the slangpy device and runs every
render, refinement and re-cache in turn. The open case lives on the device:
its raw MRI (channel-last, what the raymarcher samples), its normalised volumes
(what the INR reads) and the :class:`~neumours.infer.cache.VolumeCache` of the
INR's labels and class probabilities; host copies of the labels feed the slice
views and the changed-crop messages.

Corrections (:mod:`neumours.viewer.corrections`: pending per case, consumed by
Refine, given back by Undo refine, one history across cases):

- slice painting, :meth:`ViewerSession.paint`: refined by
  :func:`neumours.refine.voxel_loss.refine_voxels`;
- 3-D strokes, :meth:`ViewerSession.set_mask`: a tumour / not-tumour / don't-care
  mask for one camera, refined by :func:`neumours.refine.loop.refine` against the
  rendered tumour silhouette (:func:`neumours.refine.masks.silhouette_settings`).

The open case: :mod:`neumours.viewer.case_store`; frames: :mod:`neumours.viewer.renderer`
(render-time budget).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import slangpy as spy

from neumours import strict_json
from neumours.conventions import MODALITIES, NUM_CLASSES
from neumours.data import CaseRef, load_case, normalise, save_label
from neumours.errors import NeumoursError
from neumours.infer.segment import Segmenter
from neumours.model.checkpoint import save_checkpoint
from neumours.model.inputs import CaseVolumes
from neumours.outputs import check_output_folder
from neumours.refine.loop import Anchor, refine
from neumours.refine.masks import DONT_CARE, mask_targets, silhouette_settings
from neumours.refine.voxel_loss import PaintedVoxels, VoxelLoss, refine_voxels
from neumours.render import RenderSettings
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import Camera
from neumours.render.raymarch import ChannelVolume, Scene
from neumours.render.skipping import nonzero_box, occupied_box, union_box
from neumours.viewer.case_store import OpenCase, SessionError
from neumours.viewer.corrections import MAX_UNDO, Corrections, History, Refinement, mask_image
from neumours.viewer.protocol import OVERLAYS, PAINT_BACKGROUND, PAINT_NONE, View, changed_crop
from neumours.viewer.renderer import PROBE_SIZE, FrameRenderer, ViewSettings, camera_for, render_settings, tumour_above

__all__ = ["MAX_UNDO", "RefineCancelled", "SessionError", "ViewSettings", "ViewerSession"]

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


class RefineCancelled(SessionError):
    """A refinement stopped by :meth:`ViewerSession.cancel`; the weights are back as they were."""


class ViewerSession:
    """One checkpoint on one device and the case it shows.

    Args:
        refs: the cases the server may serve (the command line's, nothing else).
        checkpoint: INR checkpoint.
        device: slangpy device.
        out: folder for Save (checked now), or None (saving disabled).
        precision: the INR kernels' precision ("auto", "fp32" or "bf16"), as ``segment --precision``.

    Raises:
        NeumoursError: a bad checkpoint or output folder.
    """

    def __init__(self, refs: Sequence[CaseRef], checkpoint: str | os.PathLike, device: spy.Device,
                 out: str | os.PathLike | None = None, precision: str = "auto"):
        if not refs:
            raise NeumoursError("no cases to view")
        self.refs = {ref.case_id: ref for ref in refs}
        self.checkpoint = Path(checkpoint)
        self.out = check_output_folder(out, "--out folder") if out is not None else None
        self.device = device
        self.segmenter = Segmenter(checkpoint, device, chunk_points=CACHE_CHUNK_POINTS, precision=precision)
        self.segmenter.fits(refs[0].path)  # modalities and classes: before the first case is opened
        self.inr = self.segmenter.inr
        self.history = History(MAX_UNDO)
        self.pending: dict[str, Corrections] = {}  # case id -> pending corrections (cases with any, and the open one)
        self.state: OpenCase | None = None
        self.renderer = FrameRenderer(device)
        self.cancel_event = threading.Event()  # set from another thread: the running refinement stops
        self._anchor: Anchor | None = None

    # ------------------------------------------------------------------ cases
    def open_case(self, case_id: str) -> dict:
        """Load a case, upload it and cache the INR over it; returns :meth:`info`.

        The previous case's pending corrections and the history are kept."""
        if case_id not in self.refs:
            raise SessionError(f"case {case_id!r}: not one of the cases this viewer serves")
        case = load_case(self.refs[case_id])  # a case that cannot be read leaves the open one open
        if self.state is not None:
            previous = self.state.case.case_id
            if self.pending.get(previous) is not None and self.pending[previous].is_empty():
                del self.pending[previous]
            self.state = None  # free the previous case's buffers first
        self.state = OpenCase.load(self.refs[case_id], case, self.segmenter, self.device, self.pending.get(case_id))
        self.pending[case_id] = self.state.pending
        self._probe()
        return self.info()

    def _probe(self) -> None:
        """Small frames that seed the renderer's time estimate (the first full frame then fits the budget)."""
        width, height = PROBE_SIZE
        for _ in range(2):  # the first of a kind compiles the kernels and is not measured
            self.render(View(30.0, 20.0, 1.0, (0.0, 0.0, 0.0), width, height), ViewSettings())

    def info(self) -> dict:
        st = self._open()
        half = volume_box(st.case.shape, st.case.spacing)
        return {"type": "case", "case": st.case.case_id, "cases": sorted(self.refs), "shape": list(st.case.shape),
                "spacing": list(st.case.spacing), "has_ground_truth": st.case.label is not None,
                "modalities": list(MODALITIES), "half": half.tolist(),
                "to_voxel": to_voxel_scale(st.case.shape, half).tolist(),
                "undo_depth": self.history.undoable(), "refinements": len(self.history),
                "history": self.history.records(), "can_save": self.out is not None,
                "windows": st.windows(), "volumes_ml": st.volumes_ml(), **self.pending_summary()}

    def pending_summary(self) -> dict:
        """Pending corrections of the open case and how many other cases have some."""
        st = self._open()
        others = sorted(cid for cid, p in self.pending.items() if cid != st.case.case_id and not p.is_empty())
        return {"pending": st.pending.summary(), "pending_elsewhere": others,
                "painted": st.pending.summary()["painted"], "has_mask": st.mask is not None}

    def probe(self, voxel: Sequence[int]) -> dict:
        return self._open().probe(voxel)

    def volume_bytes(self, case_id: str, kind: str) -> tuple[bytes, str]:
        """NIfTI bytes and a file name of one volume of the open case (:meth:`OpenCase.volume_bytes`).

        Raises:
            SessionError: not the open case, an unknown kind, or no ground truth.
        """
        st = self._open()
        if case_id != st.case.case_id:
            raise SessionError(f"case {case_id!r} is not open")
        return st.volume_bytes(kind)

    def overlay_labels(self, kind: str) -> np.ndarray:
        return self._open().overlay_labels(kind)

    def pending_crops(self):
        return self._open().pending.crops()

    def _open(self) -> OpenCase:
        if self.state is None:
            raise SessionError("no case is open")
        return self.state

    # ------------------------------------------------------------------ rendering
    def camera(self, view: View) -> Camera:
        st = self._open()
        return camera_for(st.case.shape, st.case.spacing, view)

    def render_settings(self, settings: ViewSettings) -> RenderSettings:
        return render_settings(self._open().percentiles, settings)

    def scene(self, overlay: str, threshold: float = ViewSettings.threshold) -> Scene:
        """The device scene of the open case with ``overlay`` (skipping empty space; ``probabilities``:
        tumour from ``threshold`` up, :func:`~neumours.viewer.renderer.tumour_above`)."""
        st = self._open()
        shape, spacing = st.case.shape, st.case.spacing
        if overlay not in OVERLAYS:
            raise SessionError(f"unknown overlay {overlay!r}")
        if overlay == "none":
            return Scene(self.device, shape, spacing, mri=st.mri, occupied=st.mri_box)
        if overlay == "probabilities":
            key = f"probabilities:{threshold:.4f}"
            if key not in st.derived:
                st.derived = {k: v for k, v in st.derived.items() if not k.startswith("probabilities:")}
                probs = tumour_above(st.cache.probabilities(), threshold)
                st.derived[key] = (ChannelVolume.upload(self.device, probs),
                                   union_box(st.mri_box, occupied_box(probabilities=probs)))
            probs, box = st.derived[key]
            return Scene(self.device, shape, spacing, mri=st.mri, probabilities=probs, occupied=box)
        key = f"scene:{overlay}"
        if key not in st.derived:
            labels = self.overlay_labels(overlay)
            from neumours.device import upload

            buffer = st.cache.labels_buffer if overlay == "inr" else upload(self.device, labels, np.uint32)
            st.derived[key] = (buffer, union_box(st.mri_box, nonzero_box(labels != 0)))
        buffer, box = st.derived[key]
        return Scene(self.device, shape, spacing, mri=st.mri, labels=buffer, occupied=box)

    def render(self, view: View, settings: ViewSettings) -> tuple[bytes, dict]:
        """One JPEG frame of the 3-D view and its meta (size, timings, camera; downscaled to the render budget)."""
        kind = "none" if settings.overlay == "none" else "probabilities" if settings.overlay == "probabilities" else "labels"
        return self.renderer.render(self.scene(settings.overlay, settings.threshold), self.camera, view,
                                    self.render_settings(settings), settings.quality, kind=kind)

    # ------------------------------------------------------------------ corrections
    def paint(self, origin: Sequence[int], values: np.ndarray, replace: bool = False) -> int:
        """Set the painting state inside a box (``replace``: the box is all there is, the rest is cleared).

        Returns how many voxels are painted in all."""
        st = self._open()
        if replace:
            st.paint[:] = PAINT_NONE
        box = tuple(slice(o, o + s) for o, s in zip(origin, values.shape))
        st.paint[box] = values
        return self.painted_count()

    def set_mask(self, view: View, origin: Sequence[int], values: np.ndarray) -> None:
        """A 3-D-view mask for ``view``'s camera: ``values`` at (x0, y0) = ``origin``, don't care elsewhere."""
        self._open().pending.mask = (view, mask_image(view, tuple(origin), values))

    def clear(self, what: str = "all") -> None:
        """Forget pending corrections of the open case: ``all``, ``paint`` or ``mask``."""
        pending = self._open().pending
        if what in ("all", "paint"):
            pending.paint[:] = PAINT_NONE
        if what in ("all", "mask"):
            pending.mask = None

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

    def cancel(self) -> None:
        """Stop the running refinement at its next step (any thread); its weights are restored."""
        self.cancel_event.set()

    def refine(self, steps: int = 20, lr: float = 1e-3, anchored: bool = False, settings: ViewSettings | None = None,
               on_step: Callable[[str, dict], None] | None = None, keep: float = KEEP_WEIGHT) -> dict:
        """Refine the weights on the pending corrections, consume them, re-cache, and say what changed.

        Slice paint runs the voxel loss, a 3-D mask the render loss (path "cache"),
        for ``steps``; with both, one loop optimises their sum. The corrections move
        into the history's record (Undo refine gives them back). ``on_step`` runs
        on this thread after every step (progress; the worker also serves waiting
        frames there); :meth:`cancel` from another thread stops the loop and the
        weights come back bit for bit, the corrections stay pending.

        Args:
            anchored: also hold the predictions on other cases of the dataset.
            keep: weight of the anchor that holds this case's own labels away from
                the corrections (:meth:`~neumours.refine.loop.Anchor.keep_rest`;
                without it a stroke on one slice can relabel the whole volume);
                0 turns it off.

        Returns:
            ``{"rows": [...], "labels": (origin, crop) or None, "seconds": ...}``.

        Raises:
            SessionError: nothing pending; RefineCancelled: cancelled.
        """
        st = self._open()
        self.cancel_event.clear()
        if st.pending.is_empty():
            raise SessionError("nothing to apply: no pending corrections (Refine consumed the earlier ones; "
                               "paint on a slice or draw on the 3-D view first)")
        painted = st.pending.painted()
        start = time.perf_counter()
        anchor = [self._anchor_for()] if anchored else []
        if keep > 0:
            corrected = painted | self._masked_voxels()
            anchor.append(Anchor.keep_rest(self.inr, st.vols, st.labels, corrected, points=KEEP_POINTS, weight=keep))
        before = self.inr.bridge.snapshot()
        rows = []

        def report(kind):
            def call(row):
                rows.append({"kind": kind, **row})
                if on_step is not None:
                    on_step(kind, row)
                if self.cancel_event.is_set():
                    raise RefineCancelled("refinement cancelled: the weights are as they were before it")
            return call

        try:
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
        except BaseException:
            self.inr.bridge.restore(before)  # cancelled or failed: nothing of the partial refinement stays
            raise
        finally:
            self.cancel_event.clear()
        stages = sorted({r["kind"] for r in rows})
        self.history.push(Refinement(st.case.case_id, before, st.pending.take(),
                                     {"steps": steps, "lr": lr, "keep": keep, "anchored": anchored,
                                      "stages": stages}))
        changed = self._recache()
        return {"rows": rows, "labels": changed, "seconds": time.perf_counter() - start}

    def undo(self) -> dict:
        """Take back the last refinement: its weights bit for bit, its corrections pending again; re-cache.

        The refinement may have been made on another case: its corrections go back to that case."""
        st = self._open()
        try:
            entry = self.history.pop()
        except IndexError:
            raise SessionError("nothing to undo") from None
        self.inr.bridge.restore(entry.weights)
        target = self.pending.setdefault(entry.case, Corrections.empty(entry.corrections.paint.shape))
        target.restore(entry.corrections)
        return {"labels": self._recache(), "case": entry.case, "restored_here": entry.case == st.case.case_id}

    def _recache(self):
        """A new cache of the open case; the changed crop of the INR labels (or None)."""
        st = self._open()
        before = st.labels
        st.cache = self.segmenter.cache_volumes(st.vols, keep_probs=True)
        st.labels = st.cache.labels()
        st.derived.clear()
        return changed_crop(before, st.labels)

    def save(self) -> dict:
        """Write the refined checkpoint and the INR segmentation into --out (each file atomically).

        The checkpoint's metadata records every refinement applied (on any case) since the viewer started."""
        st = self._open()
        if self.out is None:
            raise SessionError("saving needs an output folder: start the viewer with --out DIR")
        check_output_folder(self.out, "--out folder")
        cid = st.case.case_id
        weights = self.inr.bridge.snapshot().cpu().numpy()
        ckpt = save_checkpoint(self.out / f"{cid}_refined.safetensors", weights, self.inr.config,
                               metadata={"refined_from": self.checkpoint.name, "case": cid,
                                         "refinements": str(len(self.history)),
                                         "refinement_log": strict_json.dumps(self.history.records())})
        seg = save_label(st.labels, self.out / f"{cid}_seg.nii.gz", like=st.case)
        return {"checkpoint": str(ckpt), "segmentation": str(seg), "refinements": len(self.history)}

    def painted_count(self) -> int:
        """How many voxels of the open case are painted (pending)."""
        return int(self._open().pending.painted().sum())
