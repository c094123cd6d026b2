"""What the phantom family varies between cases, and over which ranges (docs/phantom.md).

:class:`PhantomRanges` holds every range the family draws from, one field per
property: anatomy, lesions (number, size, place, shape), how the sub-regions look
and nest, the post-operative site, look-alikes that are not tumour, and the
acquisition. A pair ``(lo, hi)`` is drawn uniformly per case (log-uniformly for
``wm_level``), a float in [0, 1] is the share of cases (or modalities) that have
the property. :func:`phantom_ranges` gives the preset of a difficulty and kind;
:func:`load_ranges` reads a TOML file of overrides (``neumours synth --ranges``).

The ``"classic"`` difficulty is not a set of ranges: it is the single recipe the
phantom had before the family (``neumours.data.phantom.make_case`` keeps it bit
for bit), so experiments made with it stay reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from neumours.schema import Number, Numbers, Rule, from_mapping, setting, validate
from neumours.toml_files import read_toml

#: Difficulty presets, easiest first; ``classic`` is the original single recipe.
DIFFICULTIES = ("classic", "easy", "medium", "hard")
#: Case kinds: pre-operative (BraTS-like) and post-operative (MU-Glioma-Post-like).
KINDS = ("pre", "post")

Range = tuple[float, float]



def _range(lo: float, hi: float) -> Numbers:
    """A range [a, b] drawn per case, a <= b, both within [lo, hi] (beyond, the phantom stops making sense)."""
    return Numbers(Number(ge=lo, le=hi), ordered=True)


#: A range of counts (vessels, white-matter lesions).
_COUNT_RANGE = Numbers(Number(ge=0, le=64, integer=True), ordered=True)
#: A share of cases (or modalities) that have a property.
_SHARE = Number(ge=0, le=1)


@dataclass(frozen=True)
class PhantomRanges:
    """Ranges of the phantom family (defaults: the hard pre-operative preset).

    Anatomy (factors on the classic recipe, :class:`~neumours.data.phantom_anatomy.BrainParams`):
        brain_scale: per-axis brain radius factor (head size and shape).
        surface: amplitude factor of the brain-surface perturbation.
        fold: knot-spacing factor of the folding field (below 1: denser sulci).
        sulcus_depth: sulcal depth factor.
        ventricles: ventricle size factor (large = atrophy).

    Lesions (pre-operative gliomas, and satellites in post-operative cases):
        multifocal_share: share of cases with more than one lesion.
        max_lesions: most lesions in a multifocal case.
        whole_tumour: whole-tumour volume, a fraction of the brain volume (all lesions).
        edema_reach: whole-tumour radius over tumour-core radius (1 = no edema beyond the core).
        elongation: standard deviation of the log semi-axes (0 = a ball).
        roughness: amplitude of the boundary perturbation (relative radius).
        lobulation: radius over knot spacing of the boundary field (large = many small lobes).
        cortical_share: share of lesions centred near the cortex instead of deep white matter.
        necrosis_share: share of lesions with a necrotic centre (label 1).
        enhancement_share: share of lesions with enhancing tumour (label 3); without it the
            core is non-enhancing tumour, labelled 1 as in BraTS since 2021.
        rim: enhancing-rim thickness over core radius, when necrotic.
        open_rim_share: share of necrotic lesions whose rim is open on one side (necrosis
            touching edema).
        solid_label1: share of label-1 voxels that look like solid non-enhancing tumour
            rather than fluid-like necrosis.

    Post-operative site (``kind="post"``; label 0 except the tumour labels said):
        cavity_ratio: resection-cavity radius over the resected core's radius.
        corridor_share: share of cavities joined to the brain surface by a surgical corridor.
        blood_share: share of cavities with T1-bright blood products on their wall.
        cavity_flair: FLAIR level of the cavity fluid relative to white matter (suppressed
            water to proteinaceous fluid).
        residual_share: share of cavities with residual enhancing tumour on the wall.
        residual_cover: share of the cavity wall that residual enhancement covers.
        treatment_share: share of post-operative cases with unlabelled therapy-related
            white-matter FLAIR hyperintensity around the ventricles.

    Look-alikes (label 0):
        vessels: number of enhancing vessels (bright on T1c, dark on T2).
        wm_lesions: number of small FLAIR-bright white-matter lesions.

    Acquisition (per case, per modality):
        contrast_jitter: standard deviation of the log factor on each tissue's contrast to
            white matter (signs are kept).
        contrast_overlap: factor on every lesion tissue's contrast to white matter (low:
            tumour and healthy tissue overlap).
        texture: tissue-texture amplitude.
        pv_sigma: partial-volume blur, voxels.
        thick_slice_share: share of modalities acquired as thick slices (then resampled).
        slice_thickness: slice thickness of those, voxels.
        bias: standard deviation of the log bias field.
        noise: Rician noise level relative to white matter.
        wm_level: white-matter intensity (scale), drawn log-uniformly.
        offset: constant added inside the brain, relative to white matter.
        gamma: exponent of a monotone intensity mapping (1 = linear).
    """

    # anatomy
    brain_scale: Range = setting((0.88, 1.04), _range(0.5, 1.2))
    surface: Range = setting((0.6, 1.8), _range(0, 5))
    fold: Range = setting((0.75, 1.35), _range(0.1, 5))
    sulcus_depth: Range = setting((0.7, 1.5), _range(0, 5))
    ventricles: Range = setting((0.7, 1.6), _range(0.1, 3))
    # lesions
    multifocal_share: float = setting(0.25, _SHARE)
    max_lesions: int = setting(3, Number(ge=1, le=16, integer=True))
    whole_tumour: Range = setting((0.008, 0.16), _range(0, 0.5))
    edema_reach: Range = setting((1.1, 2.6), _range(1, 5))
    elongation: Range = setting((0.05, 0.35), _range(0, 2))
    roughness: Range = setting((0.1, 0.45), _range(0, 1))
    lobulation: Range = setting((1.2, 3.5), _range(0.1, 10))
    cortical_share: float = setting(0.25, _SHARE)
    necrosis_share: float = setting(0.75, _SHARE)
    enhancement_share: float = setting(0.88, _SHARE)
    rim: Range = setting((0.12, 0.45), _range(0, 1))
    open_rim_share: float = setting(0.35, _SHARE)
    solid_label1: Range = setting((0.0, 0.6), _range(0, 1))
    # post-operative site
    cavity_ratio: Range = setting((0.55, 1.05), _range(0.1, 2))
    corridor_share: float = setting(0.8, _SHARE)
    blood_share: float = setting(0.5, _SHARE)
    cavity_flair: Range = setting((0.3, 1.3), _range(0, 5))
    residual_share: float = setting(0.65, _SHARE)
    residual_cover: Range = setting((0.15, 0.8), _range(0, 1))
    treatment_share: float = setting(0.4, _SHARE)
    # look-alikes
    vessels: tuple[int, int] = setting((0, 8), _COUNT_RANGE)
    wm_lesions: tuple[int, int] = setting((0, 6), _COUNT_RANGE)
    # acquisition
    contrast_jitter: float = setting(0.15, Number(ge=0, le=2))
    contrast_overlap: Range = setting((0.45, 1.0), _range(0, 2))
    texture: Range = setting((0.01, 0.05), _range(0, 1))
    pv_sigma: Range = setting((0.35, 1.0), _range(0, 5))
    thick_slice_share: float = setting(0.4, _SHARE)
    slice_thickness: Range = setting((2.0, 5.0), _range(1, 16))
    bias: Range = setting((0.03, 0.22), _range(0, 1))
    noise: Range = setting((0.01, 0.08), _range(0, 1))
    wm_level: Range = setting((100.0, 5000.0), _range(1, 100000.0))
    offset: Range = setting((0.0, 0.15), _range(0, 1))
    gamma: Range = setting((0.8, 1.25), _range(0.1, 5))


    RULES = (
        Rule("`whole_tumour` lies in (0, 0.5) of the brain",
             lambda r: 0 < r.whole_tumour[0] and r.whole_tumour[1] < 0.5,
             lambda r: f"whole_tumour must lie in (0, 0.5) of the brain, got {list(r.whole_tumour)}"),
        Rule("`edema_reach` is at least 1 (the whole tumour contains the core)",
             lambda r: r.edema_reach[0] >= 1.0,
             lambda r: f"edema_reach must be >= 1 (whole tumour contains the core), got {list(r.edema_reach)}"),
        Rule("`wm_level` is at least 1", lambda r: r.wm_level[0] >= 1,
             lambda r: f"wm_level must be >= 1, got {list(r.wm_level)}"),
    )

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def _easy() -> PhantomRanges:
    """One lesion of moderate size, clean acquisition, no look-alikes, no thick slices."""
    return PhantomRanges(
        brain_scale=(0.96, 1.02), surface=(0.9, 1.1), fold=(0.95, 1.05), sulcus_depth=(0.9, 1.1),
        ventricles=(0.8, 1.3), multifocal_share=0.0, max_lesions=1, whole_tumour=(0.03, 0.12),
        edema_reach=(1.3, 2.0), elongation=(0.1, 0.2), roughness=(0.15, 0.3), lobulation=(1.8, 2.4),
        cortical_share=0.0, necrosis_share=0.75, enhancement_share=1.0, rim=(0.15, 0.3), open_rim_share=0.0,
        solid_label1=(0.0, 0.1), residual_share=0.8, residual_cover=(0.4, 0.7), treatment_share=0.0,
        vessels=(0, 0), wm_lesions=(0, 0), contrast_jitter=0.08, contrast_overlap=(0.9, 1.0),
        texture=(0.01, 0.025), pv_sigma=(0.5, 0.6), thick_slice_share=0.0, bias=(0.04, 0.08),
        noise=(0.015, 0.045), wm_level=(300.0, 3000.0), offset=(0.0, 0.0), gamma=(1.0, 1.0))


def _medium() -> PhantomRanges:
    """Half-way between easy and hard: some multifocal cases, mild look-alikes and artefacts."""
    return PhantomRanges(
        brain_scale=(0.92, 1.03), surface=(0.8, 1.4), fold=(0.85, 1.2), sulcus_depth=(0.8, 1.3),
        ventricles=(0.75, 1.6), multifocal_share=0.12, max_lesions=2, whole_tumour=(0.015, 0.14),
        edema_reach=(1.15, 2.3), elongation=(0.05, 0.28), roughness=(0.1, 0.38), lobulation=(1.4, 3.0),
        cortical_share=0.15, necrosis_share=0.75, enhancement_share=0.94, rim=(0.12, 0.4), open_rim_share=0.2,
        solid_label1=(0.0, 0.4), residual_share=0.7, residual_cover=(0.25, 0.75), treatment_share=0.2,
        vessels=(0, 4), wm_lesions=(0, 3), contrast_jitter=0.12, contrast_overlap=(0.65, 1.0),
        texture=(0.01, 0.035), pv_sigma=(0.4, 0.8), thick_slice_share=0.2, slice_thickness=(2.0, 4.0),
        bias=(0.03, 0.15), noise=(0.012, 0.06), wm_level=(150.0, 4000.0), offset=(0.0, 0.08), gamma=(0.9, 1.12))


# Post-operative differences (MU-Glioma-Post: 59.4 % of timepoints have no necrotic core, enhancement
# is often residual or absent): applied on top of each difficulty's pre-operative ranges.
_POST = {"easy": {"necrosis_share": 0.5, "enhancement_share": 0.8},
         "medium": {"necrosis_share": 0.5, "enhancement_share": 0.7},
         "hard": {"necrosis_share": 0.5, "enhancement_share": 0.65}}


def phantom_ranges(difficulty: str = "hard", kind: str = "pre") -> PhantomRanges:
    """The preset ranges of a difficulty (``easy``, ``medium``, ``hard``) and kind (``pre``, ``post``).

    Raises:
        ValueError: an unknown difficulty or kind, or ``"classic"`` (a recipe, not ranges).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    presets = {"easy": _easy, "medium": _medium, "hard": PhantomRanges}
    if difficulty not in presets:
        raise ValueError(f"difficulty must be one of {', '.join(p for p in presets)} for ranges "
                         f"(classic is the original single recipe), got {difficulty!r}")
    ranges = presets[difficulty]()
    return dataclasses.replace(ranges, **_POST[difficulty]) if kind == "post" else ranges


def ranges_from_dict(data: dict, base: PhantomRanges, source: str = "ranges") -> PhantomRanges:
    """``base`` with the keys of ``data`` replaced (lists become ranges), every value checked.

    Raises:
        neumours.schema.SettingError: an unknown key or a bad value, naming ``source`` and the key
            (a NeumoursError and a ValueError).
    """
    return from_mapping(PhantomRanges, data, base, source)


def load_ranges(path: str | Path, base: PhantomRanges) -> PhantomRanges:
    """Ranges from a TOML file: its keys (or those of its ``[ranges]`` table, as in a dataset's
    ``synth.toml``) override ``base``.

    Raises:
        NeumoursError: the file is missing or not TOML, unknown keys or bad values (one line).
    """
    path = Path(path)
    data = read_toml(path, "ranges file")
    if isinstance(data.get("ranges"), dict):  # a synth.toml record: its [ranges] table
        data = data["ranges"]
    return ranges_from_dict(data, base, source=str(path))

