"""Refine a checkpoint on one case: what ``neumours refine`` does, as one library call.

Load the checkpoint and the case, build the INR, make the targets (a corrected label volume
rendered from orbiting cameras, as colour images or tumour masks, or a ``targets.npz``), add
the optional anchor over other cases, score the INR's labels before, run
:func:`neumours.refine.loop.refine`, score after, and return a :class:`RefineReport` whose
:meth:`RefineReport.write` writes the refined checkpoint and its .json report together::

    report = refine_checkpoint("run/best.safetensors", "data/Phantom-00000-000",
                               from_labels="corrected.nii.gz", views=2, size=(64, 64), steps=3)
    report.write("refined.safetensors")   # and refined.json beside it
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import slangpy as spy

from neumours import strict_json
from neumours.atomic import atomic_write_files
from neumours.data import list_cases, load_case, normalise
from neumours.data.nifti import read_label_volume
from neumours.device import get_device
from neumours.errors import NeumoursError
from neumours.eval.metrics import region_scores
from neumours.infer.cache import VolumeCache
from neumours.model.checkpoint import check_fits_data, checkpoint_bytes, load_checkpoint
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.refine.estimate import announce_refinement
from neumours.refine.loop import Anchor, refine
from neumours.refine.masks import mask_targets, render_label_masks, silhouette_settings
from neumours.refine.targets import load_targets
from neumours.render.transfer import RenderSettings
from neumours.render.views import orbit_cameras, render_label_views

#: How many cases of ``anchor_data`` the anchor samples.
ANCHOR_CASES = 4


def report_path(checkpoint: str | os.PathLike) -> Path:
    """The .json report beside a refined checkpoint."""
    return Path(checkpoint).with_suffix(".json")


@dataclass
class RefineReport:
    """A refinement's outcome: the refined weights and what the .json report says.

    Attributes:
        case: the case's id. views: how many views. path: the gradient path (``cache``, ``direct``).
        targets: ``"masks"`` or ``"images"``.
        steps: one ``{"step", "image_loss", "anchor", "seconds"}`` row per step.
        dice_before, dice_after: Dice and HD95 per region (:func:`neumours.eval.metrics.region_scores`)
            against the corrected labels (or the case's own), None when there are none.
        state: the refined weights (torch tensors, docs/method.md names). config: the network.
        metadata: the checkpoint's metadata with ``refined_from``, ``refined_on``, ``refine_steps``.
    """

    case: str
    views: int
    path: str
    targets: str
    steps: list[dict]
    dice_before: dict | None
    dice_after: dict | None
    state: dict
    config: INRConfig
    metadata: dict[str, str]

    def record(self, checkpoint: str, sha256: str) -> dict:
        """The .json report's content, naming the checkpoint file and its SHA-256."""
        return {"case": self.case, "views": self.views, "path": self.path, "targets": self.targets,
                "checkpoint": checkpoint, "checkpoint_sha256": sha256, "steps": self.steps,
                "dice_before": self.dice_before, "dice_after": self.dice_after}

    def write(self, out: str | os.PathLike) -> Path:
        """Write the refined checkpoint ``out`` (.safetensors) and its report beside it, both or neither.

        Raises:
            NeumoursError: weights that are not finite, or a write that fails (naming the file).
        """
        weights = checkpoint_bytes(self.state, self.config, self.metadata, out)
        report = self.record(Path(out).name, hashlib.sha256(weights).hexdigest())
        atomic_write_files({out: weights, report_path(out): (strict_json.dumps(report, indent=2) + "\n").encode()})
        return Path(out)


def check_targets(from_labels, targets, masks: bool) -> None:
    """Exactly one source of targets; ``masks`` only with ``from_labels`` (NeumoursError naming the flags)."""
    if (targets is None) == (from_labels is None):
        raise NeumoursError("give exactly one of --targets DIR or --from-labels SEG.nii.gz")
    if masks and from_labels is None:
        raise NeumoursError("--masks goes with --from-labels (a targets.npz says itself whether it holds masks)")


def timed_cache(inr: INR, vols: CaseVolumes) -> tuple[float, VolumeCache]:
    """The INR cached over the case and the seconds that took (its kernels compiled first, untimed)."""
    VolumeCache(inr, vols, grid_shape=(2, 2, 2))
    start = time.perf_counter()
    cache = VolumeCache(inr, vols)
    cache.labels()
    return time.perf_counter() - start, cache


def refine_checkpoint(checkpoint: str | os.PathLike, case: str | os.PathLike, *,
                      from_labels: str | os.PathLike | None = None, targets: str | os.PathLike | None = None,
                      masks: bool = False, views: int = 4, size: Sequence[int] = (256, 256), steps: int = 20,
                      lr: float = 1e-4, path: str = "cache", anchor_data: str | os.PathLike | None = None,
                      anchor_weight: float = 1.0, device: spy.Device | str = "auto", precision: str = "auto",
                      force_geometry: bool = False, progress: bool = False, announce: bool = True) -> RefineReport:
    """Refine ``checkpoint`` on ``case`` towards corrected labels or given target views.

    Args:
        from_labels: a corrected label volume of the case, rendered from ``views`` orbiting cameras
            of ``size`` (width, height): colour images, or tumour masks with ``masks``.
        targets: a ``targets.npz`` (or its folder): :func:`neumours.refine.targets.load_targets`.
            Exactly one of ``from_labels`` and ``targets``.
        anchor_data: a dataset whose first :data:`ANCHOR_CASES` cases keep their predictions
            (penalty weight ``anchor_weight``).
        device: a slangpy device or a name for :func:`neumours.device.get_device`.
        announce: say on stderr, before the first step, when it will take more than a few minutes.

    Raises:
        NeumoursError: a bad file or combination (one line naming it), or views too large for path (b).
    """
    check_targets(from_labels, targets, masks)
    state, config, metadata = load_checkpoint(checkpoint)
    loaded = load_case(case, force_geometry=force_geometry)
    check_fits_data(config, checkpoint, case, loaded.shape, loaded.images.shape[0])
    corrected, from_masks = None, masks
    if from_labels is not None:
        corrected, _ = read_label_volume(from_labels, force_geometry=force_geometry)
        if corrected.shape != loaded.shape:
            raise NeumoursError(f"{from_labels}: label shape {corrected.shape} does not match case "
                                f"{loaded.case_id} shape {loaded.shape}")
    else:
        cameras, images, weights, from_masks = load_targets(Path(targets), loaded.shape, loaded.spacing)

    device = device if isinstance(device, spy.Device) else get_device(device)
    inr = INR(dataclasses.replace(config, precision=precision), device)
    inr.load_state_dict(state)
    vols = CaseVolumes.upload(device, [normalise(loaded.images)])
    settings = silhouette_settings(RenderSettings()) if from_masks else RenderSettings()
    if corrected is not None:
        cameras = orbit_cameras(loaded.shape, loaded.spacing, views, tuple(size))
        if from_masks:
            images, weights = mask_targets(render_label_masks(device, corrected, loaded.spacing, cameras, settings))
        else:
            images, weights = render_label_views(device, corrected, loaded.spacing, cameras, settings), None
    anchor = None
    if anchor_data is not None:
        others = [load_case(r, force_geometry=force_geometry) for r in list_cases(anchor_data)[:ANCHOR_CASES]]
        anchor = Anchor.sample(inr, CaseVolumes.upload(device, [normalise(c.images) for c in others]),
                               weight=anchor_weight)

    truth = corrected if corrected is not None else loaded.label
    forward_s, cache = timed_cache(inr, vols)
    if announce:
        announce_refinement(device, path, steps, forward_s, loaded.shape, loaded.spacing, cameras, settings.step)
    before = region_scores(cache.labels(), truth, loaded.spacing) if truth is not None else None
    try:
        rows = refine(inr, vols, loaded.spacing, cameras, settings, images, steps=steps, lr=lr, anchor=anchor,
                      weights=weights, path=path, progress=progress)
    except ValueError as exc:  # e.g. more ray samples than path (b)'s buffers hold
        raise NeumoursError(f"{case}: cannot refine ({exc})") from None
    after = region_scores(VolumeCache(inr, vols).labels(), truth, loaded.spacing) if truth is not None else None
    metadata = dict(metadata, refined_from=str(checkpoint), refined_on=loaded.case_id, refine_steps=str(steps))
    return RefineReport(loaded.case_id, len(cameras), path, "masks" if from_masks else "images", rows, before, after,
                        inr.state_dict(), config, metadata)
