"""What the randomised phantom family varies, over which ranges, and how to hold a factor fixed (docs/phantom.md).

The randomised family (``difficulty="randomised"``) randomises appearance the way
SynthSeg (Billot et al., 2023) does: every case draws, per modality, the mean
intensity of every tissue and lesion sub-region from a range (:data:`CONTRAST_RANGES`),
not one look-up table with jitter, and its own resolution, slice thickness, blur,
bias, noise, motion and ghosting. Its ranges fall into four *factors*
(:data:`FACTORS`): ``contrast``, ``morphology`` (lesion shape, size, number and
sub-regions), ``postop`` (the post-operative site) and ``acquisition``. A factor
switched off takes the narrow canonical values of :data:`FIXED` instead of the
wide ones of :data:`RANDOMISED`, so a training set can leave one factor's
variation out and a test set put it back (``benchmarks/generalisation.py``).

A pair ``(lo, hi)`` is drawn uniformly per case (per modality for the
acquisition and contrast fields; ``wm_level`` log-uniformly); a float named
``*_share`` is the share of cases (or lesions) with the property. The contrast table's
ranges (:data:`~neumours.data.phantom_randomised_acquire.CONTRAST_RANGES`) sit beside the
family's own table in the acquisition module; this module imports nothing heavy, so the
command line can offer the factors cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from neumours.data.phantom_ranges import phantom_ranges


#: The factors of the randomised family, each a group of fields of :class:`RandomisedRanges`.
FACTORS = ("contrast", "morphology", "postop", "acquisition")
#: The difficulty name of the family (``neumours synth --difficulty randomised``).
RANDOMISED_DIFFICULTY = "randomised"

Range = tuple[float, float]

@dataclass(frozen=True)
class RandomisedRanges:
    """Ranges of the randomised family (defaults: every factor randomised, :data:`RANDOMISED`).

    Contrast (per case and modality):
        contrast_width: how much of ``CONTRAST_RANGES`` a tissue's mean is drawn from, about
            ``FIXED_CONTRAST`` (1: the whole range, 0: the fixed table; both in
            :mod:`neumours.data.phantom_randomised_acquire`).
        tissue_sd: within-tissue spread relative to the tissue's mean, per tissue and modality.
        heterogeneity: patchiness of enhancement and necrosis.
        gamma: exponent of a monotone intensity mapping (1: linear).

    Morphology (the fields of :class:`~neumours.data.phantom_ranges.PhantomRanges` of the same name):
        multifocal_share, max_lesions, whole_tumour, edema_reach, elongation, roughness,
        lobulation, cortical_share, necrosis_share, enhancement_share, rim, open_rim_share,
        solid_label1.

    Post-operative site (``kind="post"``; PhantomRanges' fields of the same name, and):
        cavity_ratio, corridor_share (surgical tract), blood_share, residual_share (an
            enhancing rim on the wall), residual_cover, treatment_share (unlabelled
            periventricular change).
        nodule_share: share of cavities with a solid residual nodule on the wall.
        nodule_size: nodule radius over the resected core's radius.
        treatment_edema_share: share of cavities with treatment-effect oedema (label 2) reaching
            further than the tumour's edema.
        treatment_edema_reach: factor on the edema radius when it does.

    Acquisition (per case and modality):
        resolution: in-plane voxel size of the acquisition, mm (downsampled, then upsampled to 1 mm).
        slice_thickness: voxel size along the slice axis, mm.
        pv_sigma: partial-volume blur in acquired voxels (Gaussian sigma = pv_sigma x voxel size).
        bias: standard deviation of the log bias field.
        noise: Rician noise relative to white matter.
        ghosting: amplitude of a half-field-of-view ghost along the phase-encoding axis.
        motion: share of k-space lines acquired after a rigid shift.
        motion_shift: that shift, voxels.
        wm_level: white-matter intensity (the scanner's scale), drawn log-uniformly.
        offset: constant added inside the brain, relative to white matter.
    """

    # contrast
    contrast_width: float = 1.0
    tissue_sd: Range = (0.0, 0.12)
    heterogeneity: Range = (0.0, 0.35)
    gamma: Range = (0.7, 1.4)
    # morphology
    multifocal_share: float = 0.3
    max_lesions: int = 4
    whole_tumour: Range = (0.006, 0.2)
    edema_reach: Range = (1.05, 3.0)
    elongation: Range = (0.0, 0.5)
    roughness: Range = (0.05, 0.6)
    lobulation: Range = (1.0, 4.5)
    cortical_share: float = 0.3
    necrosis_share: float = 0.7
    enhancement_share: float = 0.85
    rim: Range = (0.1, 0.5)
    open_rim_share: float = 0.4
    solid_label1: Range = (0.0, 0.8)
    # post-operative site
    cavity_ratio: Range = (0.5, 1.3)
    corridor_share: float = 0.6
    blood_share: float = 0.5
    residual_share: float = 0.6
    residual_cover: Range = (0.1, 0.9)
    treatment_share: float = 0.4
    nodule_share: float = 0.35
    nodule_size: Range = (0.25, 0.6)
    treatment_edema_share: float = 0.4
    treatment_edema_reach: Range = (1.2, 2.2)
    # acquisition
    resolution: Range = (1.0, 2.0)
    slice_thickness: Range = (1.0, 6.0)
    pv_sigma: Range = (0.2, 0.8)
    bias: Range = (0.0, 0.3)
    noise: Range = (0.0, 0.1)
    ghosting: Range = (0.0, 0.12)
    motion: Range = (0.0, 0.3)
    motion_shift: Range = (0.5, 3.0)
    wm_level: Range = (100.0, 5000.0)
    offset: Range = (0.0, 0.15)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not 0 <= value[0] <= value[1]:
                    raise ValueError(f"{f.name} must be a range (lo, hi) with 0 <= lo <= hi, got {value}")
            elif (f.name.endswith("_share") or f.name == "contrast_width") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must lie in [0, 1], got {value}")
        for name in ("resolution", "slice_thickness", "edema_reach", "wm_level"):
            if getattr(self, name)[0] < 1.0:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be at least 1, got {self.max_lesions}")
        if not (0 < self.whole_tumour[0] and self.whole_tumour[1] < 0.5):
            raise ValueError(f"whole_tumour must lie in (0, 0.5) of the brain, got {self.whole_tumour}")
        if self.gamma[0] <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


#: Fields of each factor, in :data:`FACTORS` order.
FACTOR_FIELDS = {
    "contrast": ("contrast_width", "tissue_sd", "heterogeneity", "gamma"),
    "morphology": ("multifocal_share", "max_lesions", "whole_tumour", "edema_reach", "elongation", "roughness",
                   "lobulation", "cortical_share", "necrosis_share", "enhancement_share", "rim", "open_rim_share",
                   "solid_label1"),
    "postop": ("cavity_ratio", "corridor_share", "blood_share", "residual_share", "residual_cover",
               "treatment_share", "nodule_share", "nodule_size", "treatment_edema_share", "treatment_edema_reach"),
    "acquisition": ("resolution", "slice_thickness", "pv_sigma", "bias", "noise", "ghosting", "motion",
                    "motion_shift", "wm_level", "offset"),
}

#: Every factor randomised.
RANDOMISED = RandomisedRanges()
#: Every factor fixed at its canonical setting: the family's contrast table, one moderate lesion
#: (the easy preset's lesion ranges), a cavity with a corridor and an enhancing rim and nothing
#: else, and a clean 1 mm acquisition.
FIXED = RandomisedRanges(
    **{name: getattr(phantom_ranges("easy"), name) for name in FACTOR_FIELDS["morphology"]},
    contrast_width=0.0, tissue_sd=(0.02, 0.02), heterogeneity=(0.15, 0.15), gamma=(1.0, 1.0),
    cavity_ratio=(0.8, 0.8), corridor_share=1.0, blood_share=0.0, residual_share=1.0, residual_cover=(0.5, 0.5),
    treatment_share=0.0, nodule_share=0.0, nodule_size=(0.4, 0.4), treatment_edema_share=0.0,
    treatment_edema_reach=(1.0, 1.0),
    resolution=(1.0, 1.0), slice_thickness=(1.0, 1.0), pv_sigma=(0.5, 0.5), bias=(0.05, 0.05), noise=(0.03, 0.03),
    ghosting=(0.0, 0.0), motion=(0.0, 0.0), motion_shift=(1.0, 1.0), wm_level=(1000.0, 1000.0), offset=(0.0, 0.0))


def randomised_ranges(fixed=()) -> RandomisedRanges:
    """The family's ranges with the factors named in ``fixed`` held at :data:`FIXED`'s values.

    Args:
        fixed: factor names (:data:`FACTORS`); empty: every factor randomised.

    Raises:
        ValueError: an unknown factor.
    """
    unknown = sorted(set(fixed) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown factor(s) {', '.join(unknown)}; the factors are {', '.join(FACTORS)}")
    held = {name: getattr(FIXED, name) for factor in fixed for name in FACTOR_FIELDS[factor]}
    return dataclasses.replace(RANDOMISED, **held)
