"""Recognise case layouts on disk and list the cases under a folder.

Three layouts are understood (``.nii`` and ``.nii.gz`` everywhere):

* **BraTS** (2023 naming, layout ``"brats"``): one folder per case,
  ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f`` and optionally
  ``-seg.nii.gz``. The BraTS 2021 tokens ``_t1``, ``_t1ce``, ``_t2``,
  ``_flair`` are accepted as aliases of t1n, t1c, t2w, t2f.
* **MU-Glioma-Post** (layout ``"mu-glioma-post"``): files in a timepoint
  folder named like ``PatientID_0001_Timepoint_1_brain_t1n.nii.gz`` (``_t1c``,
  ``_t2w``, ``_t2f``) and a mask ``PatientID_0001_Timepoint_1_tumorMask.nii.gz``.
  Matching is tolerant: any ``<prefix>_<modality>`` or ``<prefix>-<modality>``
  name, and a mask whose name contains ``tumorMask`` or ``seg``. The case id
  is the prefix without a trailing ``_brain``. Any folder whose modality files
  do not follow the BraTS rule (prefix = folder name) is reported as this layout.
* **nnU-Net raw** (layout ``"nnunet"``): ``<dataset>/imagesTr/<case>_0000.nii.gz``
  … ``_0003`` with ``<dataset>/labelsTr/<case>.nii.gz``, and ``imagesTs``
  (labels from ``labelsTs`` when present, otherwise none). **Channel convention
  of this project**: ``_0000`` = t1n, ``_0001`` = t1c, ``_0002`` = t2w,
  ``_0003`` = t2f (FLAIR). When the dataset has a ``dataset.json`` whose
  ``channel_names`` (nnU-Net v2) or ``modality`` (v1) entries are recognisable
  MRI names (e.g. the MSD order FLAIR, T1w, t1gd, T2w), that mapping is used
  instead, so such datasets are not silently mis-ordered.

Addressing cases: :func:`list_cases` returns :class:`CaseRef` objects. A
``CaseRef`` is path-like (``os.fspath(ref)`` gives ``ref.path``) and
``load_case`` accepts the ref itself or that path as a string. ``ref.path`` is
the case folder when the folder holds exactly one case (BraTS, a
MU-Glioma-Post timepoint folder), and otherwise the virtual path
``<folder>/<case id>``; for nnU-Net that is ``<dataset>/imagesTr/<case>``
(or ``imagesTs``). ``<dataset>/<case>`` is also accepted (imagesTr first), and
so is the path of any one modality file of a case.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from neumours.conventions import MODALITIES
from neumours.data.nifti import is_nifti_name, strip_nifti_suffix
from neumours.errors import NeumoursDataError

_MODALITY_NAMES = {"t1n": "T1 native", "t1c": "T1 contrast-enhanced", "t2w": "T2", "t2f": "T2-FLAIR"}

# Folder layouts: "<prefix><sep><token>.nii[.gz]"; BraTS 2021 tokens are aliases.
_TOKEN_TO_MODALITY = {
    "t1n": "t1n",
    "t1c": "t1c",
    "t2w": "t2w",
    "t2f": "t2f",
    "t1": "t1n",
    "t1ce": "t1c",
    "t2": "t2w",
    "flair": "t2f",
}
_MODALITY_RE = re.compile(
    r"^(?P<prefix>.+?)[_\-](?P<token>t1n|t1ce|t1c|t1|t2w|t2f|t2|flair)\.nii(?:\.gz)?$", re.IGNORECASE
)
_BRAIN_SUFFIX_RE = re.compile(r"[_\-]brain$", re.IGNORECASE)
_LABEL_WORDS = ("tumormask", "seg")

# nnU-Net raw layout.
_NNUNET_IMAGE_DIRS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}
_NNUNET_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)
_DEFAULT_CHANNELS = {0: "t1n", 1: "t1c", 2: "t2w", 3: "t2f"}
_CHANNEL_NAME_TO_MODALITY = {
    **{n: "t1n" for n in ("t1", "t1n", "t1w", "native", "t1native", "nativet1", "t1pre", "t1precontrast")},
    **{n: "t1c" for n in ("t1c", "t1ce", "t1gd", "t1wce", "t1post", "t1contrast", "t1wgd", "t1gad", "t1cgd")},
    **{n: "t2w" for n in ("t2", "t2w")},
    **{n: "t2f" for n in ("t2f", "flair", "t2flair", "t2wflair")},
}


@dataclass(frozen=True)
class CaseRef:
    """A case found on disk, before any voxel is read.

    Attributes:
        case_id: the case identifier (BraTS folder name, MU-Glioma-Post file
            prefix without ``_brain``, nnU-Net case name).
        path: the address :func:`neumours.data.load_case` accepts for this case
            (see the module docstring); also what ``os.fspath(ref)`` returns.
        layout: ``"brats"``, ``"mu-glioma-post"`` or ``"nnunet"``.
        paths: modality name -> file for each of :data:`MODALITIES`, plus
            ``"seg"`` when a label file exists. Read-only.
    """

    case_id: str
    path: Path
    layout: str
    paths: Mapping[str, Path] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", MappingProxyType(dict(self.paths)))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def has_label(self) -> bool:
        """Whether a label (segmentation) file was found for this case."""
        return "seg" in self.paths


# ---------------------------------------------------------------------------
# Scanning one folder
# ---------------------------------------------------------------------------


def _nifti_files(folder: Path) -> list[str]:
    """Sorted names of the visible NIfTI files directly inside ``folder``."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and is_nifti_name(e.name) and e.is_file()]
    except OSError as exc:
        raise NeumoursDataError(folder, f"cannot list folder ({exc.strerror or exc})") from None
    return sorted(names)


def _pick_one(folder: Path, names: list[str], what: str) -> Path:
    """Return the single file of ``names`` or raise naming all of them."""
    if len(names) > 1:
        raise NeumoursDataError(folder / names[0], f"ambiguous {what}: several files match ({', '.join(names)})")
    return folder / names[0]


def _missing_modality(folder: Path, expected_name: str, modality: str) -> NeumoursDataError:
    return NeumoursDataError(
        folder / expected_name, f"missing modality {modality} ({_MODALITY_NAMES[modality]}): file not found"
    )


def _scan_named_files(folder: Path, names: list[str]) -> tuple[list[CaseRef], dict[str, NeumoursDataError]]:
    """Cases of the BraTS / MU-Glioma-Post kind: ``<prefix>[_-]<modality>.nii[.gz]`` files.

    Files are grouped by case id (the prefix without ``_brain``), so a folder
    holding several cases flat still works. Returns the complete cases and,
    per case id, the error that makes an incomplete group unusable.
    """
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    prefixes: dict[str, tuple[str, str]] = {}  # case id -> (prefix, separator) for messages
    rest = []
    for name in names:
        m = _MODALITY_RE.match(name)
        if m is None:
            rest.append(name)
            continue
        prefix = m["prefix"]
        case_id = _BRAIN_SUFFIX_RE.sub("", prefix) or prefix
        groups[case_id][_TOKEN_TO_MODALITY[m["token"].lower()]].append(name)
        prefixes.setdefault(case_id, (prefix, name[len(prefix)]))
    if not groups:
        return [], {}

    label_candidates: dict[str, list[str]] = defaultdict(list)
    for name in rest:
        low = strip_nifti_suffix(name).lower()
        if not any(word in low for word in _LABEL_WORDS):
            continue
        owners = [cid for cid in groups if low.startswith(cid.lower())]
        if owners:
            label_candidates[max(owners, key=len)].append(name)
        elif len(groups) == 1:
            label_candidates[next(iter(groups))].append(name)

    refs: list[CaseRef] = []
    errors: dict[str, NeumoursDataError] = {}
    for case_id in sorted(groups):
        prefix, sep = prefixes[case_id]
        try:
            paths: dict[str, Path] = {}
            for modality in MODALITIES:
                found = groups[case_id].get(modality, [])
                if not found:
                    raise _missing_modality(folder, f"{prefix}{sep}{modality}.nii.gz", modality)
                paths[modality] = _pick_one(folder, found, f"{modality} file")
            candidates = label_candidates.get(case_id, [])
            if len(candidates) > 1:  # prefer the canonical names, e.g. a stray "-seg_pred" beside "-seg"
                exact = {f"{stem}{s}{w}" for stem in (case_id, prefix) for s in "_-" for w in _LABEL_WORDS}
                canonical = [n for n in candidates if strip_nifti_suffix(n).lower() in {e.lower() for e in exact}]
                candidates = canonical or candidates
            if candidates:
                paths["seg"] = _pick_one(folder, candidates, "label file")
        except NeumoursDataError as exc:
            errors[case_id] = exc
            continue
        is_brats = prefix == folder.name
        refs.append(
            CaseRef(
                case_id=prefix if is_brats else case_id,
                path=folder if len(groups) == 1 else folder / case_id,
                layout="brats" if is_brats else "mu-glioma-post",
                paths=paths,
            )
        )
    return refs, errors


def _nnunet_channels(dataset: Path) -> dict[int, str]:
    """Channel index -> modality for an nnU-Net dataset (see module docstring)."""
    meta = dataset / "dataset.json"
    if not meta.is_file():
        return dict(_DEFAULT_CHANNELS)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NeumoursDataError(meta, f"cannot read dataset.json ({exc})") from None
    names = info.get("channel_names") or info.get("modality") if isinstance(info, dict) else None
    if not isinstance(names, dict) or not names:
        return dict(_DEFAULT_CHANNELS)
    try:
        channels = {int(k): re.sub(r"[^a-z0-9]", "", str(v).lower()) for k, v in names.items()}
    except ValueError:
        raise NeumoursDataError(meta, f"channel numbers must be integers, got {sorted(names)}") from None
    if sorted(channels) != [0, 1, 2, 3]:
        raise NeumoursDataError(meta, f"expected 4 channels 0..3 (t1n, t1c, t2w, t2f), got {names}")
    mapped = {k: _CHANNEL_NAME_TO_MODALITY.get(v) for k, v in channels.items()}
    if all(m is None for m in mapped.values()):
        return dict(_DEFAULT_CHANNELS)  # names like "MRI 0": fall back to the project convention
    if None in mapped.values() or sorted(mapped.values()) != sorted(MODALITIES):  # type: ignore[type-var]
        raise NeumoursDataError(meta, f"cannot map channel names {names} onto t1n, t1c, t2w, t2f")
    return mapped  # type: ignore[return-value]


def _scan_nnunet(folder: Path, names: list[str]) -> tuple[list[CaseRef], dict[str, NeumoursDataError]]:
    """Cases of an nnU-Net ``imagesTr`` / ``imagesTs`` folder."""
    groups: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in names:
        m = _NNUNET_RE.match(name)
        if m is not None:
            groups[m["case"]][int(m["channel"])].append(name)
    if not groups:
        return [], {}
    channels = _nnunet_channels(folder.parent)
    by_modality = {mod: ch for ch, mod in channels.items()}
    label_dir = folder.parent / _NNUNET_IMAGE_DIRS[folder.name]
    label_names = _nifti_files(label_dir) if label_dir.is_dir() else []
    labels: dict[str, list[str]] = defaultdict(list)
    for name in label_names:
        labels[strip_nifti_suffix(name)].append(name)

    refs: list[CaseRef] = []
    errors: dict[str, NeumoursDataError] = {}
    for case_id in sorted(groups):
        try:
            extra = sorted(set(groups[case_id]) - set(channels))
            if extra:
                raise NeumoursDataError(
                    folder / groups[case_id][extra[0]][0], f"unexpected channel _{extra[0]:04d}: expected 4 channels"
                )
            paths: dict[str, Path] = {}
            for modality in MODALITIES:
                ch = by_modality[modality]
                found = groups[case_id].get(ch, [])
                if not found:
                    raise _missing_modality(folder, f"{case_id}_{ch:04d}.nii.gz", modality)
                paths[modality] = _pick_one(folder, found, f"{modality} file")
            if labels.get(case_id):
                paths["seg"] = _pick_one(label_dir, labels[case_id], "label file")
        except NeumoursDataError as exc:
            errors[case_id] = exc
            continue
        refs.append(CaseRef(case_id=case_id, path=folder / case_id, layout="nnunet", paths=paths))
    return refs, errors


def _scan_dir(folder: Path) -> tuple[list[CaseRef], dict[str, NeumoursDataError]]:
    """All cases whose image files lie directly in ``folder``, and per-case errors."""
    names = _nifti_files(folder)
    if folder.name in _NNUNET_IMAGE_DIRS:
        refs, errors = _scan_nnunet(folder, names)
        if refs or errors:
            return refs, errors
    return _scan_named_files(folder, names)


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def list_cases(root: str | os.PathLike) -> list[CaseRef]:
    """Find every case under ``root`` (recursively), in any supported layout.

    Args:
        root: a folder of cases (a BraTS training folder, an MU-Glioma-Post
            download, an nnU-Net ``DatasetXXX_Name`` folder, or a mix), or a
            single case folder.

    Returns:
        The cases sorted by ``str(ref.path)``: deterministic for a given tree,
        whatever order the file system lists it in.

    Raises:
        NeumoursDataError: ``root`` does not exist or is not a folder, holds no
            case, or holds something that looks like a case but is incomplete or
            ambiguous (e.g. a missing modality).
    """
    root = Path(root)
    if not root.exists():
        raise NeumoursDataError(root, "folder does not exist")
    if not root.is_dir():
        raise NeumoursDataError(root, "is not a folder (expected a folder of cases)")
    refs: list[CaseRef] = []
    seen: set[str] = set()

    def _walk_error(exc: OSError) -> None:
        raise NeumoursDataError(exc.filename or root, f"cannot list folder ({exc.strerror or exc})")

    for dirpath, dirnames, _ in os.walk(root, followlinks=True, onerror=_walk_error):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found, errors = _scan_dir(Path(dirpath))
        if errors:
            raise errors[min(errors)]
        refs.extend(found)
    if not refs:
        raise NeumoursDataError(
            root,
            "no cases found (looked for BraTS <case>/<case>-t1n.nii.gz, MU-Glioma-Post *_t1n.nii.gz "
            "and nnU-Net imagesTr/<case>_0000.nii.gz files)",
        )
    refs = sorted(refs, key=lambda r: str(r.path))
    _check_unique_ids(refs)
    return refs


def _check_unique_ids(refs: list[CaseRef]) -> None:
    """Refuse two cases with one id: outputs are named by case id (``segment`` would write the second over the
    first), and scores are matched by it (``evaluate`` would score one of them)."""
    first: dict[str, CaseRef] = {}
    for ref in refs:
        other = first.setdefault(ref.case_id, ref)
        if other is not ref:
            raise NeumoursDataError(ref.path, f"case id {ref.case_id} is also the id of the case at {other.path}; "
                                              "case ids must be unique under a folder (rename or move one)")


def case_files(refs) -> list[tuple[str, Path]]:
    """``(description, path)`` of every file of ``refs`` (modalities and labels), the inputs
    :func:`neumours.outputs.check_outputs` protects."""
    return [(f"{name} of case {ref.case_id}", path) for ref in refs for name, path in ref.paths.items()]


def resolve_case(source: CaseRef | str | os.PathLike) -> CaseRef:
    """Turn whatever :func:`load_case` was given into a :class:`CaseRef`.

    Accepts a ``CaseRef``; a folder holding exactly one case; a virtual
    ``<folder>/<case id>`` path (e.g. ``<dataset>/imagesTr/<case>`` or
    ``<dataset>/<case>`` for nnU-Net); or one modality file of a case.

    Raises:
        NeumoursDataError: the path does not exist or does not lead to exactly
            one complete case.
    """
    if isinstance(source, CaseRef):
        return source
    path = Path(source)
    if path.is_dir():
        refs, errors = _scan_dir(path)
        if len(refs) == 1 and not errors:
            return refs[0]
        if errors:
            raise errors[min(errors)]
        if refs:
            ids = ", ".join(r.case_id for r in refs[:5]) + (", ..." if len(refs) > 5 else "")
            raise NeumoursDataError(
                path, f"folder holds {len(refs)} cases ({ids}); name one case as <folder>/<case id>"
            )
        if any((path / d).is_dir() for d in _NNUNET_IMAGE_DIRS):
            raise NeumoursDataError(
                path, "is an nnU-Net dataset folder; name one case as <dataset>/imagesTr/<case id>"
            )
        raise NeumoursDataError(
            path,
            "no case files found in this folder (expected <case>-t1n.nii.gz, -t1c, -t2w, -t2f); "
            "or name one case of a folder of cases as <folder>/<case id>",
        )
    if path.is_file():
        refs, _ = _scan_dir(path.parent)
        for ref in refs:
            if any(p.name == path.name for k, p in ref.paths.items() if k != "seg"):
                return ref
        raise NeumoursDataError(path, "is not a modality file of a complete case (t1n, t1c, t2w, t2f)")
    parent = path.parent
    if parent.is_dir():
        folders = [parent] + [parent / d for d in _NNUNET_IMAGE_DIRS if (parent / d).is_dir()]
        for folder in folders:
            refs, errors = _scan_dir(folder)
            for ref in refs:
                if ref.case_id == path.name or ref.path.name == path.name:
                    return ref
            if path.name in errors:
                raise errors[path.name]
    raise NeumoursDataError(path, "does not exist (neither a case folder nor <folder>/<case id>)")
