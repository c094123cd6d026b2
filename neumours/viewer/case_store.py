"""The viewer's open case: host data, device volumes and caches, and what the page reads of it.

:class:`OpenCase` holds one case as the session shows it: the raw MRI on the
device (channel-last, what the raymarcher samples), the normalised volumes the
INR reads, the :class:`~neumours.infer.cache.VolumeCache` of the INR's labels
and class probabilities, host copies of the labels, the MRI's percentile grid
(windows) and the case's pending corrections. Its host-side readers (NIfTI
bytes for the slice views, tumour volumes, the cursor readout) touch no device
buffer except ``probabilities`` and ``denoised`` (left to the device thread).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import slangpy as spy

from neumours.conventions import MODALITIES, NUM_CLASSES
from neumours.data import Case, CaseRef
from neumours.errors import NeumoursError
from neumours.infer.cache import VolumeCache
from neumours.infer.denoise import denoise
from neumours.infer.segment import Segmenter
from neumours.model.inputs import CaseVolumes
from neumours.render.raymarch import ChannelVolume
from neumours.render.skipping import occupied_box
from neumours.viewer.corrections import Corrections

#: Percentile grid of the MRI windows: 0, 0.5, ..., 100.
PERCENTILES = np.linspace(0.0, 100.0, 201)
LABEL_NAMES = ("background", "NCR", "ED", "ET")


class SessionError(NeumoursError):
    """A request the session cannot do (nothing painted, no --out, no such case); the server replies with it."""


@dataclass
class OpenCase:
    """The open case: host data, device volumes and caches; its pending corrections."""

    ref: CaseRef
    case: Case
    vols: CaseVolumes
    mri: ChannelVolume
    mri_box: tuple
    percentiles: np.ndarray
    cache: VolumeCache
    labels: np.ndarray
    pending: Corrections
    derived: dict = field(default_factory=dict)  # overlay name -> (device buffer or volume, occupied box)

    @classmethod
    def load(cls, ref: CaseRef, case: Case, segmenter: Segmenter, device: spy.Device,
             pending: Corrections | None) -> "OpenCase":
        """Upload ``case`` (loaded from ``ref``) and cache the INR over it (``pending``: its corrections, or none yet)."""
        cache = segmenter.cache(case.images, keep_probs=True, source=ref.path)
        images = case.images
        brain = [channel[channel != 0] for channel in images]
        percentiles = np.stack([np.percentile(v if v.size else c.reshape(-1), PERCENTILES)
                                for v, c in zip(brain, images)])
        return cls(ref, case, cache.volumes, ChannelVolume.upload(device, images), occupied_box(volumes=images),
                   percentiles, cache, cache.labels(), pending if pending is not None else Corrections.empty(case.shape))

    @property
    def paint(self) -> np.ndarray:
        return self.pending.paint

    @property
    def mask(self):
        return self.pending.mask

    def windows(self) -> dict:
        """Modality -> [p0.5, p99.5] of its brain intensities (the page's "brain" window preset)."""
        return {name: [float(self.percentiles[m, 1]), float(self.percentiles[m, 199])]
                for m, name in enumerate(MODALITIES)}

    def volumes_ml(self) -> dict:
        """Tumour volume per label of the INR's labels, millilitres."""
        voxel_ml = float(np.prod(self.case.spacing)) / 1000.0
        counts = np.bincount(self.labels.reshape(-1), minlength=NUM_CLASSES)
        return {LABEL_NAMES[c]: float(counts[c] * voxel_ml) for c in range(1, NUM_CLASSES)}

    def probe(self, voxel: Sequence[int]) -> dict:
        """The cursor readout at a voxel (file order): each modality's intensity and the INR's label."""
        if len(voxel) != 3 or not all(0 <= v < n for v, n in zip(voxel, self.case.shape)):
            raise SessionError(f"voxel {list(voxel)} lies outside the case {list(self.case.shape)}")
        x, y, z = voxel
        out = {"type": "probe", "voxel": list(voxel),
               "intensities": {m: float(self.case.images[i][x, y, z]) for i, m in enumerate(MODALITIES)},
               "label": LABEL_NAMES[int(self.labels[x, y, z])]}
        if self.case.label is not None:
            out["ground_truth"] = LABEL_NAMES[int(self.case.label[x, y, z])]
        return out

    def volume_bytes(self, kind: str) -> tuple[bytes, str]:
        """NIfTI bytes and a file name of one volume, for NiiVue.

        ``kind``: a modality (the input file as it is), or an overlay: ``inr``,
        ``denoised``, ``ground_truth`` (uint8 labels) or ``probabilities``
        (float32 tumour probability 1 - p_background).

        Raises:
            SessionError: an unknown kind, or no ground truth.
        """
        if kind in MODALITIES:
            path = Path(self.ref.paths[kind])
            return path.read_bytes(), kind + (".nii.gz" if path.name.endswith(".gz") else ".nii")
        if kind == "probabilities":
            p0 = self.cache.probabilities()[0]
            data = (1.0 - p0).astype(np.float32)
        elif kind in ("inr", "denoised", "ground_truth"):
            data = self.overlay_labels(kind)
        else:
            raise SessionError(f"no volume {kind!r}")
        header = self.case.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = (0.0, 1.0) if kind == "probabilities" else (0, NUM_CLASSES - 1)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        raw = cls(data, self.case.affine, header).to_bytes()
        return gzip.compress(raw, compresslevel=1), f"{kind}.nii.gz"

    def overlay_labels(self, kind: str) -> np.ndarray:
        """(X, Y, Z) uint8 labels of ``inr``, ``denoised`` or ``ground_truth``."""
        if kind == "inr":
            return self.labels
        if kind == "ground_truth":
            if self.case.label is None:
                raise SessionError(f"case {self.case.case_id} has no ground truth")
            return self.case.label
        if "denoised_labels" not in self.derived:
            self.derived["denoised_labels"] = denoise(self.labels, spacing=self.case.spacing)
        return self.derived["denoised_labels"]
