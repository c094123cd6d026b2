"""Synthetic BraTS-style multi-modal MRI phantoms with gliomas and their labels.

Three generators behind :func:`make_case`:

* **the family** (``difficulty`` ``"easy"``, ``"medium"``, ``"hard"`` (default);
  ``kind`` ``"pre"`` or ``"post"``): every case draws its anatomy, lesions,
  sub-regions, post-operative site, look-alikes and acquisition from the ranges
  of :class:`~neumours.data.phantom_ranges.PhantomRanges` (what each range is,
  and why, in docs/phantom.md; the code in ``phantom_family``,
  ``phantom_lesions``, ``phantom_acquire``);
* **the randomised family** (``difficulty="randomised"``): appearance randomised the
  way SynthSeg randomises it (contrasts drawn per tissue and lesion sub-region,
  resolution, slice thickness, bias, noise, motion, ghosting), wider lesion shapes
  and post-operative variants, in four factors that can each be held fixed
  (``phantom_randomised``, ``phantom_randomised_ranges``, ``phantom_randomised_acquire``);
* **the classic recipe** (``difficulty="classic"``, pre-operative only): the
  single recipe of the first phantom, kept bit for bit so results made with it
  stay reproducible. It is described next.

The classic recipe: a skull-stripped brain (``phantom_anatomy``: white matter, a folded
grey-matter ribbon, CSF rim, sulci, interhemispheric fissure, lateral ventricles,
deep grey nuclei) with one glioma per case, placed in one hemisphere's white
matter with a case-specific size, orientation and blobby (noise-perturbed)
shape: an edema envelope (label 2) that spreads through white matter, spares
CSF and is held back by cortex; inside it a tumour core of enhancing tumour
(label 3) around a necrotic core (label 1). About 25% of cases (drawn from the
seed) have no necrosis: the core is solid enhancing tumour. Four contrasts
(t1n, t1c, t2w, t2f = FLAIR) follow real MRI qualitatively (table ``_CONTRAST``,
relative to white matter, with per-case jitter that keeps every sign), with
edema fading towards its edge, patchy enhancement, and acquisition effects:
tissue texture, partial-volume blur (Gaussian, sigma 0.55 voxel), a smooth
multiplicative bias field per modality (about ±10-20%), Rician noise
(magnitude of a complex Gaussian) and a different intensity scale per case and
modality (white matter at 300-3000). Values are integers >= 1 inside the brain
and exactly 0 outside it, as in skull-stripped BraTS int16 files.

What neither models: real anatomy (no cerebellum, brainstem, true gyral
topology), mass effect or midline shift, relaxation physics (the contrasts are a
lookup table), k-space effects (Gibbs ringing, motion, ghosting), spatially
correlated noise, or registration error between modalities.

Everything is deterministic in (seed, index, kind, ranges): the same arguments
give identical arrays and byte-identical files on the same software stack.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from neumours.atomic import atomic_path, atomic_write_text, remove_stale_temporaries, temporary_name
from neumours.errors import NeumoursError
from neumours.locks import LOCK_NAME, FolderLock
from neumours.outputs import folder_kind, write_error
from neumours.data.phantom_anatomy import CSF, GM, WM, Brain, mni_brain, procedural_brain, smooth_field
from neumours.data.phantom_randomised_ranges import RANDOMISED, RANDOMISED_DIFFICULTY, RandomisedRanges
from neumours.data.phantom_ranges import DIFFICULTIES, KINDS, PhantomRanges, phantom_ranges
from neumours.toml_files import toml_value

# Modality order; matches neumours.data.MODALITIES (kept local to avoid an import cycle).
_MODALITIES = ("t1n", "t1c", "t2w", "t2f")
# Tumour tissue codes, after the anatomy codes (BG, CSF, GM, WM, DGM = 0..4).
_ED, _ET, _NCR = 5, 6, 7
# Mean intensity relative to white matter; rows = _MODALITIES, columns = tissue codes.
_CONTRAST = np.array([
    # BG  CSF   GM    WM    DGM   ED    ET    NCR
    [0.0, 0.32, 0.72, 1.00, 0.85, 0.82, 0.80, 0.55],  # t1n: WM > GM > CSF, tumour slightly dark
    [0.0, 0.34, 0.74, 1.00, 0.86, 0.84, 1.65, 0.48],  # t1c: ET enhances, necrosis dark
    [0.0, 3.20, 1.35, 1.00, 1.20, 2.10, 1.60, 2.50],  # t2w: CSF brightest, fluid bright
    [0.0, 0.35, 1.30, 1.00, 1.15, 1.95, 1.50, 0.85],  # t2f: CSF suppressed, edema brightest
], dtype=np.float32)
_GZIP_LEVEL = 1  # nibabel's default; ~0.3 s per 240x240x155 int16 volume here
_PV_SIGMA = 0.55  # partial-volume blur, voxels
_MIN_SHAPE = 16


#: Every ``difficulty`` :func:`make_case` takes: the family's presets, then the randomised family.
ALL_DIFFICULTIES = DIFFICULTIES + (RANDOMISED_DIFFICULTY,)
#: Case-id prefix per kind (``Phantom-00003-000``, ``PhantomPost-00003-000``).
ID_PREFIX = {"pre": "Phantom", "post": "PhantomPost"}


@dataclass
class PhantomCase:
    """One synthetic case, in memory.

    Attributes:
        case_id: BraTS-like id, e.g. ``Phantom-00003-000`` (post-operative: ``PhantomPost-...``).
        images: (4, X, Y, Z) float32 raw intensities in the order t1n, t1c, t2w, t2f;
            integer-valued, >= 1 inside the brain and exactly 0 outside (skull-stripped),
            so they are stored losslessly as int16.
        label: (X, Y, Z) uint8 in {0, 1, 2, 3}: background, NCR, ED, ET.
        affine: (4, 4) float64 voxel-to-world (RAS, 1 mm spacing, volume centre at 0).
        has_necrosis: whether label 1 is present.
        tissue: (X, Y, Z) uint8 healthy-tissue ground truth (0 background, 1 CSF, 2 GM, 3 WM,
            4 deep grey; under the tumour or cavity, the tissue it replaced), for tests and
            analysis; not written to disk.
        kind: ``"pre"`` or ``"post"`` (post-operative).
        difficulty: the preset that made it (``"classic"`` for the original recipe; ``"custom"``
            for ranges given directly).
        lesions: number of separate gliomas drawn (a post-operative site counts as one).
        has_enhancement: whether label 3 is present.
        cavity: (X, Y, Z) bool resection cavity and corridor (label 0), post-operative only.
        params: what was drawn for this case (anatomy, lesions, look-alikes, acquisition),
            JSON-friendly; empty for the classic recipe.
        appearance: (X, Y, Z) uint8 what each voxel looks like (the anatomy codes, then the
            codes of ``neumours.data.phantom_lesions``: edema, enhancing, necrosis,
            non-enhancing tumour, cavity fluid, blood, vessel, white-matter lesion), family
            only; not written to disk.
    """

    case_id: str
    images: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    has_necrosis: bool
    tissue: np.ndarray | None = None
    kind: str = "pre"
    difficulty: str = "classic"
    lesions: int = 1
    has_enhancement: bool = True
    cavity: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    appearance: np.ndarray | None = None


def make_case(shape=(96, 96, 64), seed: int = 0, index: int = 0, case_id: str | None = None,
              anatomy: str = "procedural", difficulty: str = "hard", kind: str = "pre",
              ranges: PhantomRanges | RandomisedRanges | None = None) -> PhantomCase:
    """Generate one phantom case, deterministic in (seed, index, kind, ranges).

    Args:
        shape: (X, Y, Z) voxel counts, each >= 16; 1 mm voxels, the brain fills most of it.
        seed: dataset seed (non-negative int).
        index: case number within the dataset (non-negative int).
        case_id: id to use; default ``Phantom-<index:05d>-000`` (``PhantomPost-...`` for post).
        anatomy: ``"procedural"`` (default) or ``"mni"`` (needs nilearn).
        difficulty: ``"hard"`` (default), ``"medium"``, ``"easy"`` (presets of the family),
            ``"classic"`` (the original single recipe, pre-operative only) or ``"randomised"``
            (the randomised family, :mod:`neumours.data.phantom_randomised`).
        kind: ``"pre"`` (pre-operative) or ``"post"`` (post-operative: resection cavity).
        ranges: the family's ranges to use instead of the ``difficulty`` preset
            (:class:`RandomisedRanges` for ``"randomised"``, e.g. ``randomised_ranges(fixed=["contrast"])``).

    Returns:
        A :class:`PhantomCase`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < _MIN_SHAPE:
        raise ValueError(f"shape must be 3 sizes >= {_MIN_SHAPE}, got {shape}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if difficulty not in ALL_DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(ALL_DIFFICULTIES)}, got {difficulty!r}")
    case_id = case_id or f"{ID_PREFIX[kind]}-{index:05d}-000"
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2
    if difficulty == "classic" and ranges is None:
        if kind != "pre":
            raise ValueError("the classic recipe is pre-operative only; use difficulty 'easy', 'medium' or 'hard' "
                             "for post-operative cases")
        return _classic_case(shape, seed, index, case_id, anatomy, affine)
    if difficulty == RANDOMISED_DIFFICULTY:
        return _randomised_case(shape, seed, index, case_id, anatomy, affine, kind, ranges)
    from neumours.data.phantom_family import make_family_case

    chosen = ranges if ranges is not None else phantom_ranges(difficulty, kind)
    made = make_family_case(shape, seed, index, kind, chosen, anatomy)
    return PhantomCase(case_id, made.images, made.label, affine, bool((made.label == 1).any()), made.tissue,
                       kind=kind, difficulty=difficulty if ranges is None else "custom", lesions=made.lesions,
                       has_enhancement=bool((made.label == 3).any()), cavity=made.cavity, params=made.params,
                       appearance=made.appearance)


def _randomised_case(shape, seed: int, index: int, case_id: str, anatomy: str, affine: np.ndarray, kind: str,
                     ranges) -> PhantomCase:
    """A case of the randomised family (``neumours.data.phantom_randomised``)."""
    from neumours.data.phantom_randomised import make_randomised_case

    chosen = RANDOMISED if ranges is None else ranges
    if not isinstance(chosen, RandomisedRanges):
        raise ValueError("difficulty 'randomised' takes RandomisedRanges (neumours.data.phantom_randomised_ranges), "
                         f"got {type(chosen).__name__}")
    made = make_randomised_case(shape, seed, index, kind, chosen, anatomy)
    return PhantomCase(case_id, made.images, made.label, affine, bool((made.label == 1).any()), made.tissue,
                       kind=kind, difficulty=RANDOMISED_DIFFICULTY, lesions=made.lesions,
                       has_enhancement=bool((made.label == 3).any()), cavity=made.cavity, params=made.params,
                       appearance=made.appearance)


def _classic_case(shape, seed: int, index: int, case_id: str, anatomy: str, affine: np.ndarray) -> PhantomCase:
    """The original single recipe (module docstring), unchanged: the same draws in the same order."""
    rng = np.random.default_rng([int(seed), int(index)])
    necrotic = bool(rng.random() >= 0.25)
    if anatomy == "procedural":
        brain = procedural_brain(shape, rng)
    elif anatomy == "mni":
        brain = mni_brain(shape)
    else:
        raise ValueError(f"anatomy must be 'procedural' or 'mni', got {anatomy!r}")
    label, box, edema_weight, texture = _grow_tumour(rng, brain, necrotic)
    images = _acquire(rng, brain, label, box, edema_weight, texture)
    return PhantomCase(case_id, images, label, affine, bool((label == 1).any()), brain.tissue,
                       has_enhancement=bool((label == 3).any()))


def _place(rng: np.random.Generator, brain: Brain, r_core: float) -> np.ndarray:
    """Tumour centre (3,) int: a white-matter voxel of one hemisphere whose core-sized ball is in brain."""
    shape = brain.mask.shape
    wm = np.flatnonzero(brain.tissue == WM)
    xs = wm // (shape[1] * shape[2])
    mid = np.average(np.arange(shape[0]), weights=brain.mask.sum(axis=(1, 2)))
    side = rng.choice([-1.0, 1.0])
    pool = wm[(xs - mid) * side >= min(r_core, 0.3 * (xs.max() - xs.min()) / 2)]
    pool = pool if pool.size else wm
    rad = int(np.ceil(1.15 * r_core))
    offs = np.mgrid[-rad:rad + 1, -rad:rad + 1, -rad:rad + 1].reshape(3, -1)
    offs = offs[:, (offs**2).sum(axis=0) <= (1.15 * r_core) ** 2]
    best, best_score = None, -1.0
    for _ in range(100):
        p = np.array(np.unravel_index(pool[rng.integers(pool.size)], shape))
        pts = p[:, None] + offs
        ok = np.all((pts >= 0) & (pts < np.asarray(shape)[:, None]), axis=0)
        pts = pts[:, ok]
        inside = ok.mean() * brain.mask[tuple(pts)].mean()
        score = inside + 0.5 * (brain.tissue[tuple(pts)] == WM).mean()
        if score > best_score:
            best, best_score = p, score
        if inside == 1.0 and score >= 1.3:
            break
    return best


def _grow_tumour(rng, brain: Brain, necrotic: bool):
    """Labels (X, Y, Z) uint8 plus, inside the tumour box, edema contrast weight and texture.

    Returns:
        (label, box, edema_weight, texture): ``box`` is three slices around the tumour;
        ``edema_weight`` (box shape, float32 in [0.35, 1]) scales edema contrast, fading
        outwards; ``texture`` (box shape, float32, unit variance) makes enhancement patchy.
    """
    shape = brain.mask.shape
    vol = float(brain.mask.sum())
    r_wt = (3 * rng.uniform(0.035, 0.12) * vol / (4 * np.pi)) ** (1 / 3)
    r_tc = r_wt * rng.uniform(0.5, 0.78)
    centre = _place(rng, brain, r_tc)
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    axes = np.exp(rng.normal(0.0, 0.18, 3))
    axes /= np.prod(axes) ** (1 / 3)
    half = int(np.ceil(2.0 * r_wt)) + 2
    box = tuple(slice(max(int(c) - half, b.start), min(int(c) + half + 1, b.stop))
                for c, b in zip(centre, brain.bbox))  # tumour stays in the brain's box
    sub = tuple(s.stop - s.start for s in box)
    d = [(np.arange(s.start, s.stop) - c).astype(np.float32) for s, c in zip(box, centre)]

    def radius(offset):
        """(sub) float32 ellipsoidal radius about centre + offset in the tumour's frame."""
        dd = [d[a] - np.float32(offset[a]) for a in range(3)]
        q2 = np.zeros(sub, dtype=np.float32)
        for k in range(3):
            qk = (np.float32(rot[k, 0]) * dd[0][:, None, None] + np.float32(rot[k, 1]) * dd[1][None, :, None]
                  + np.float32(rot[k, 2]) * dd[2][None, None, :])
            q2 += (qk / np.float32(axes[k])) ** 2
        return np.sqrt(q2)

    r = radius((0, 0, 0))
    tis, inb = brain.tissue[box], brain.mask[box]
    n_wt = smooth_field(rng, sub, max(2.5, r_wt / 2.2))
    n_tc = smooth_field(rng, sub, max(2.0, r_tc / 1.6))
    texture = smooth_field(rng, sub, max(1.5, r_tc / 3))
    phi_wt = r / (np.float32(r_wt) * np.maximum(1 + np.float32(0.3) * n_wt, np.float32(0.3)))
    phi_wt *= np.where(tis == GM, np.float32(1.35), np.float32(1.0))  # cortex holds edema back
    edema = (phi_wt < 1) & inb & (tis != CSF)
    core = (r / (np.float32(r_tc) * np.maximum(1 + np.float32(0.22) * n_tc, np.float32(0.3))) < 1) & inb
    ncr = np.zeros(sub, dtype=bool)
    if necrotic:  # an eccentric necrotic centre, always enclosed by an enhancing rim >= 1 voxel
        inner = ndimage.binary_erosion(core, iterations=max(1, int(round(0.1 * r_tc))))
        r_n = radius(rng.normal(0.0, 0.12 * r_tc, 3))
        scale = np.float32(r_tc * rng.uniform(0.62, 0.85))
        ncr = (r_n < scale * np.maximum(1 + np.float32(0.2) * texture, np.float32(0.3))) & inner
        if not ncr.any():
            ncr = inner
    comps, _ = ndimage.label(edema | core)
    edema &= np.isin(comps, np.unique(comps[core]))  # drop edema islands cut off from the core
    lab = np.zeros(sub, dtype=np.uint8)
    lab[edema] = 2
    if not edema[~core].any():  # keep an edema ring even around a tiny envelope
        lab[ndimage.binary_dilation(core) & inb & (tis != CSF)] = 2
    lab[core] = 3
    lab[ncr] = 1
    label = np.zeros(shape, dtype=np.uint8)
    label[box] = lab
    edema_weight = np.float32(0.35) + np.float32(0.65) * np.clip((1 - phi_wt) / np.float32(0.4), 0, 1)
    return label, box, edema_weight, texture


def _acquire(rng, brain: Brain, label, box, edema_weight, texture) -> np.ndarray:
    """Render the four modalities: contrast, texture, blur, bias, scale, Rician noise, quantise.

    Returns:
        (4, X, Y, Z) float32, integers >= 1 inside ``brain.mask``, 0 outside.
    """
    bb = brain.bbox
    sub = tuple(s.stop - s.start for s in bb)
    tb = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(box, bb))  # tumour box in bbox
    mask = brain.mask[bb]
    tis = brain.tissue[bb]
    tclass = tis.copy()
    lab = label[bb]
    for code, value in ((2, _ED), (3, _ET), (1, _NCR)):
        tclass[lab == code] = value
    # Per-case contrast: scale each tissue's difference from WM by ~N(1, 0.08) (signs kept).
    contrast = 1 + (_CONTRAST - 1) * np.exp(rng.normal(0, 0.08, _CONTRAST.shape)).astype(np.float32)
    contrast[:, 0] = 0
    wm_level = np.exp(rng.uniform(np.log(300), np.log(3000), 4))
    noise_frac = rng.uniform(0.015, 0.045, 4)
    tex_amp = rng.uniform(0.01, 0.025, 4)
    bias_amp = rng.uniform(0.06, 0.1, 4)
    tissue_tex = smooth_field(rng, sub, 2.5)
    big = max(brain.mask.shape) / 1.5
    in_box = lab[tb]
    images = np.zeros((4,) + brain.mask.shape, dtype=np.float32)
    for m in range(4):
        c = contrast[m]
        img = c[tclass]
        # Tumour details: edema fades outwards over the underlying tissue; patchy enhancement.
        part = img[tb]
        ed, et, nc = in_box == 2, in_box == 3, in_box == 1
        part[ed] = c[tis[tb][ed]] + (c[_ED] - c[WM]) * edema_weight[ed]
        part[et] *= 1 + np.float32(0.12) * texture[et]
        part[nc] *= 1 + np.float32(0.06) * texture[nc]
        img *= 1 + np.float32(tex_amp[m]) * tissue_tex
        img = ndimage.gaussian_filter(img, _PV_SIGMA, mode="constant")
        img *= np.exp(np.float32(bias_amp[m]) * smooth_field(rng, sub, big))
        s = img[mask] * np.float32(wm_level[m])
        n = rng.standard_normal((2, s.size), dtype=np.float32) * np.float32(noise_frac[m] * wm_level[m])
        s = np.sqrt((s + n[0]) ** 2 + n[1] ** 2)
        images[(m,) + bb][mask] = np.clip(np.rint(s), 1, 32767)
    return images


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a gzipped NIfTI-1 atomically; gzip with mtime 0 and no name, so bytes are reproducible."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_case(case: PhantomCase, root, folder=None) -> Path:
    """Write a case in the BraTS 2023 layout: ``root/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

    Images are int16 when integer-valued in range (always, for ``make_case`` output:
    lossless, like BraTS files), else float32; the label is uint8. Each file is
    written atomically.

    Args:
        case: the case; ``images`` (4, X, Y, Z), ``label`` (X, Y, Z).
        root: dataset folder (created if missing).
        folder: write the files here instead of ``root/<case_id>`` (the file names stay the case's).

    Returns:
        The case folder ``root/<case_id>`` (or ``folder``).
    """
    images, label = np.asarray(case.images), np.asarray(case.label)
    if images.ndim != 4 or images.shape[0] != 4 or images.shape[1:] != label.shape:
        raise ValueError(f"images must be (4, X, Y, Z) matching label {label.shape}, got {images.shape}")
    if np.all(images == np.rint(images)) and images.min() >= -32768 and images.max() <= 32767:
        images = images.astype(np.int16)
    else:
        images = images.astype(np.float32)
    folder = Path(root) / case.case_id if folder is None else Path(folder)
    for m, name in enumerate(_MODALITIES):
        _write_nifti(folder / f"{case.case_id}-{name}.nii.gz", images[m], case.affine)
    _write_nifti(folder / f"{case.case_id}-seg.nii.gz", label.astype(np.uint8), case.affine)
    return folder


def write_dataset(out_dir, n_cases: int, shape=(96, 96, 64), seed: int = 0, progress: bool = True,
                  difficulty: str = "hard", kind: str = "pre", ranges: PhantomRanges | RandomisedRanges | None = None,
                  on_case=None, *, overwrite: bool = False) -> list[Path]:
    """Generate and write ``n_cases`` phantom cases ``Phantom-00000-000``, ``Phantom-00001-000``, ...

    Also writes ``synth.toml`` into ``out_dir``: the arguments and (for the family) every
    range, so the dataset can be made again. ``synth.toml`` marks the folder as a dataset.

    Args:
        out_dir: dataset folder; case folders go directly inside it (BraTS layout). It must be
            new, empty, or (with ``overwrite``) a dataset, which is then replaced whole.
        n_cases: number of cases (case ``i`` is ``make_case(shape, seed, index=i, ...)``).
        shape: (X, Y, Z) of every case.
        seed: dataset seed; the same seed gives byte-identical files.
        progress: show a tqdm progress bar.
        difficulty, kind, ranges: as for :func:`make_case`.
        on_case: called with each :class:`PhantomCase` after it is written (previews).
        overwrite: replace a dataset already in ``out_dir``.

    The folder is locked (:mod:`neumours.locks`) while it is written: a second
    writer is refused at once. Every case is written under a temporary name first
    and the cases take their names only when all are complete, so a failure (no
    space left, ...) leaves ``out_dir`` as it was. A dataset being replaced is
    built in full in a temporary sibling folder, which then takes the folder's
    place: never a mix of old and new cases.

    Returns:
        The case folders, in index order.

    Raises:
        NeumoursError: ``out_dir`` holds files that are not a dataset, holds a dataset and
            ``overwrite`` is off, is being written by another process, or a write failed.
    """
    out = Path(out_dir)
    make = dict(n_cases=n_cases, shape=shape, seed=seed, progress=progress, difficulty=difficulty, kind=kind,
                ranges=ranges, on_case=on_case)
    with FolderLock(out, "dataset folder"):
        remove_stale_temporaries(out)
        remove_stale_temporaries(out.parent, out.name)  # the staging folder of a killed replacement
        try:
            existing = sorted(e.name for e in os.scandir(out) if e.name != LOCK_NAME)
        except OSError as exc:
            raise write_error(out, exc) from None
        if not existing:
            return [out / name for name in _write_cases(out, **make)]
        if folder_kind(out) != "dataset":
            raise NeumoursError(f"{out}: holds files that are not a neumours dataset ({existing[0]}"
                                f"{', ...' if len(existing) > 1 else ''}); give a new or empty folder")
        if not overwrite:
            raise NeumoursError(f"{out}: already holds a dataset (synth.toml); add --overwrite to replace it "
                                "whole, or choose a new folder")
        staging = temporary_name(out)
        with FolderLock(staging, "dataset folder") as lock:  # its lock file becomes the folder's in its place
            try:
                names = _write_cases(staging, **make)
                _swap(staging, out)
                lock.moved_to(out)
            except NeumoursError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise NeumoursError(str(exc).replace(str(staging), str(out))) from None
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return [out / name for name in names]


def _swap(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` in the place of ``out`` (whose old contents are deleted)."""
    old = temporary_name(out)
    try:
        os.rename(out, old)
    except OSError as exc:
        raise write_error(out, exc) from None
    try:
        os.rename(new, out)
    except OSError as exc:
        os.rename(old, out)
        raise write_error(out, exc) from None
    shutil.rmtree(old, ignore_errors=True)


def _write_cases(out: Path, n_cases: int, shape, seed: int, progress: bool, difficulty: str, kind: str,
                 ranges: PhantomRanges | None, on_case) -> list[str]:
    """Write the cases and ``synth.toml`` into the existing, empty folder ``out``; returns the case folder names."""
    from tqdm import tqdm

    staged: list[tuple[Path, Path]] = []  # (temporary folder, case folder)
    try:
        for i in tqdm(range(n_cases), desc="phantom", unit="case", disable=not progress):
            case = make_case(shape, seed=seed, index=i, difficulty=difficulty, kind=kind, ranges=ranges)
            final = out / case.case_id
            staged.append((temporary_name(final), final))
            write_case(case, out, folder=staged[-1][0])
            if on_case is not None:
                on_case(case)
    except BaseException as exc:
        # A full disk (or Ctrl-C) half-way: no case of this call is left, the folder is as it was.
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, NeumoursError) and staged:  # name the file the user asked for, not its temporary
            raise NeumoursError(str(exc).replace(str(staged[-1][0]), str(staged[-1][1]))) from None
        raise
    for tmp, final in staged:  # every case is complete on disk: now they take their names
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise write_error(final, exc) from None
    atomic_write_text(out / "synth.toml", synth_record(n_cases, shape, seed, difficulty, kind, ranges))
    return [final.name for _, final in staged]


def synth_record(n_cases: int, shape, seed: int, difficulty: str, kind: str,
                 ranges: PhantomRanges | RandomisedRanges | None) -> str:
    """TOML text recording how a dataset was made (``[ranges]``: the family's ranges, absent for classic)."""
    randomised = difficulty == RANDOMISED_DIFFICULTY
    head = {"cases": n_cases, "shape": list(shape), "seed": seed,
            "difficulty": difficulty if ranges is None or randomised else "custom", "kind": kind}
    lines = ["# Written by neumours.data.phantom.write_dataset; `neumours synth --ranges` reads [ranges]."]
    if randomised:
        from neumours.data.phantom_randomised import fixed_factors

        chosen = RANDOMISED if ranges is None else ranges
        head["fixed"] = fixed_factors(chosen)
        lines += [f"{k} = {toml_value(v)}" for k, v in head.items()]
        lines += ["", "[ranges]"] + [f"{k} = {toml_value(v)}" for k, v in chosen.to_dict().items()]
        return "\n".join(lines) + "\n"
    lines += [f"{k} = {toml_value(v)}" for k, v in head.items()]
    if ranges is not None or difficulty != "classic":
        chosen = ranges if ranges is not None else phantom_ranges(difficulty, kind)
        lines += ["", "[ranges]"] + [f"{k} = {toml_value(v)}" for k, v in chosen.to_dict().items()]
    return "\n".join(lines) + "\n"
