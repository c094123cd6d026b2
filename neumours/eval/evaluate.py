"""``neumours evaluate``: score segmentations per case and write ``per_case.csv`` and ``summary.md``.

Two ways in:

* :func:`evaluate_folders` — predictions already on disk (``--pred DIR --gt DIR``):
  every ground-truth case needs a prediction file ``<case id>.nii.gz`` (or
  ``<case id>-seg.nii.gz`` / ``<case id>_seg.nii.gz``, ``.nii``) on the same voxel
  grid; extra prediction files are ignored.
* :func:`evaluate_checkpoint` — segment and score in one go (``--checkpoint CKPT
  --data DIR [--split val|all] [--seed S]``): each case is scored raw and denoised
  (the defaults of :mod:`neumours.infer.denoise`, on the device where the Segmenter
  runs, the voxel spacing of the image header, as ``neumours segment --denoise``
  writes them). ``--split val`` is the
  validation part of ``neumours.data.split_cases(cases, 0.1, seed)``, the split
  training uses.

Metrics and the empty-region convention: :mod:`neumours.eval.metrics`. Spacing for
HD95 comes from the ground truth's affine (column norms, mm).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
import numpy as np

from neumours.atomic import atomic_write_text
from neumours.data import Case, list_cases, split_cases
from neumours.data.nifti import is_nifti_name, read_label_volume, strip_nifti_suffix
from neumours.errors import NeumoursDataError, NeumoursError
from neumours.eval.metrics import RegionMetric

#: Row titles of the summary table (paper Table III, plus the tumour core).
REGION_TITLES = {
    "NCR": "Necrotic Core (NCR)",
    "ED": "Peritumoral Edema (ED)",
    "ET": "Enhancing Tumor (ET)",
    "TC": "Tumor Core (TC)",
    "WT": "Whole Tumor (WT)",
}
VARIANT_TITLES = {"raw": "INR (raw)", "denoised": "INR (denoised)", "pred": "prediction"}


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def _case_key(name: str) -> str:
    stem = strip_nifti_suffix(name)
    for suffix in ("-seg", "_seg"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _ground_truth(gt_dir: Path) -> dict[str, Path]:
    """case id -> label file: a dataset folder (any layout), or a flat folder of label files."""
    if not gt_dir.is_dir():
        raise NeumoursDataError(gt_dir, "ground-truth folder does not exist")
    flat = sorted(p for p in gt_dir.iterdir() if p.is_file() and is_nifti_name(p.name))
    try:
        refs = list_cases(gt_dir)
    except NeumoursError:
        if not flat:
            raise
        return {_case_key(p.name): p for p in flat}
    missing = [r.case_id for r in refs if "seg" not in r.paths]
    if missing:
        raise NeumoursDataError(gt_dir, f"case {missing[0]} has no label file ({len(missing)} case(s) without labels)")
    return {r.case_id: Path(r.paths["seg"]) for r in refs}


def _predictions(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise NeumoursDataError(pred_dir, "prediction folder does not exist")
    preds: dict[str, Path] = {}
    for p in sorted(pred_dir.iterdir()):
        if p.is_file() and is_nifti_name(p.name) and not p.name.startswith("."):
            key = _case_key(p.name)
            if key in preds:
                raise NeumoursDataError(p, f"second prediction for case {key} (also {preds[key].name})")
            preds[key] = p
    return preds


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, progress: bool = True) -> RegionMetric:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``.

    Raises:
        NeumoursDataError: a folder missing, a case without prediction, an unreadable
            file, or a prediction whose shape or affine differs from its ground truth.
    """
    from tqdm import tqdm

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts = _ground_truth(gt_dir)
    preds = _predictions(pred_dir)
    missing = [cid for cid in gts if cid not in preds]
    if missing:
        raise NeumoursDataError(pred_dir, f"no prediction for case {missing[0]} "
                                          f"({len(missing)} of {len(gts)} missing; expected {missing[0]}.nii.gz)")
    metric = RegionMetric()
    for cid in tqdm(sorted(gts), desc="evaluate", unit="case", disable=not progress or len(gts) < 2):
        gt, gt_img = read_label_volume(gts[cid])
        pred, pred_img = read_label_volume(preds[cid])
        if pred.shape != gt.shape:
            raise NeumoursDataError(preds[cid], f"shape {pred.shape} differs from ground truth {gts[cid].name} "
                                                f"shape {gt.shape}")
        if not np.allclose(pred_img.affine, gt_img.affine, rtol=1e-4, atol=1e-3):
            raise NeumoursDataError(preds[cid], f"affine differs from ground truth {gts[cid].name} "
                                                "(the prediction does not lie on the same voxel grid)")
        metric(pred, gt, _spacing(gt_img.affine), case_id=cid, variant="pred")
    return metric


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split: str = "val",
                        seed: int = 0, device=None, progress: bool = True,
                        on_case: Callable[[Case, np.ndarray, np.ndarray], None] | None = None,
                        precision: str = "auto") -> RegionMetric:
    """Segment the cases of ``data_dir`` with ``checkpoint`` and score them raw and denoised.

    Args:
        split: ``"val"`` (validation part of ``split_cases(cases, 0.1, seed)``) or ``"all"``.
        on_case: called as ``on_case(case, raw_labels, denoised_labels)`` after each
            case (figures from the same pass, without segmenting again).

    Raises:
        NeumoursError: bad checkpoint (before any case is read), a bad split name,
            a case without labels, or one that fails to load (naming it).
    """
    from tqdm import tqdm

    from neumours.data import load_case
    from neumours.infer.segment import Segmenter

    if split not in ("val", "all"):
        raise NeumoursError(f"--split must be 'val' or 'all', got {split!r}")
    segmenter = Segmenter(checkpoint, device, precision=precision)
    refs = list_cases(data_dir)
    if split == "val":
        _, refs = split_cases(refs, 0.1, seed)
    missing = [r.case_id for r in refs if "seg" not in r.paths]
    if missing:
        raise NeumoursDataError(data_dir, f"case {missing[0]} has no label file; cannot score it")
    metric = RegionMetric()
    for ref in tqdm(refs, desc="evaluate", unit="case", disable=not progress or len(refs) < 2):
        case = load_case(ref)
        result = segmenter(case, denoise=True)  # on the device where there is one, as `segment --denoise`
        spacing = _spacing(case.affine)
        metric(result.raw_labels, case.label, spacing, case_id=case.case_id, variant="raw")
        clean = result.labels
        metric(clean, case.label, spacing, case_id=case.case_id, variant="denoised")
        if on_case is not None:
            on_case(case, result.raw_labels, clean)
    return metric


def _format_value(value: float) -> str:
    return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.6g}")


def per_case_csv(metric: RegionMetric) -> str:
    """CSV text: ``case_id``, ``variant`` (only when raw and denoised are both scored), dice_*, hd95_*."""
    variants = {r["variant"] for r in metric.rows}
    with_variant = len(variants) > 1
    columns = ["case_id"] + (["variant"] if with_variant else [])
    columns += [f"dice_{r}" for r in metric.regions] + [f"hd95_{r}" for r in metric.regions]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in metric.rows:
        writer.writerow([row[c] if c in ("case_id", "variant") else _format_value(row[c]) for c in columns])
    return buf.getvalue()


def _variants(metric: RegionMetric) -> list[str]:
    seen: list[str] = []
    for row in metric.rows:
        if row["variant"] not in seen:
            seen.append(row["variant"])
    return seen


def summary_markdown(metric: RegionMetric, source: str = "") -> str:
    """A Table III-style summary: Dice mean ± sd per region and variant, then HD95 (mm)."""
    variants = _variants(metric)
    cases = len({r["case_id"] for r in metric.rows})
    aggregates = {v: metric.aggregate(v) for v in variants}
    titles = [VARIANT_TITLES.get(v, v) for v in variants]
    lines = ["# Segmentation results", ""]
    if source:
        lines += [source, ""]
    lines += [f"n = {cases} case(s). Dice and HD95 mean ± sample sd over cases.", "",
              "## Dice", "", "| Region | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for region in metric.regions:
        cells = [f"{aggregates[v]['dice_' + region]['mean']:.3f} ± {aggregates[v]['dice_' + region]['sd']:.3f}"
                 for v in variants]
        lines.append(f"| {REGION_TITLES.get(region, region)} | " + " | ".join(cells) + " |")
    lines += ["", "## HD95 (mm)", "", "| Region | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    excluded_any = False
    for region in metric.regions:
        cells = []
        for v in variants:
            a = aggregates[v]["hd95_" + region]
            cell = "—" if a["n"] == 0 else f"{a['mean']:.2f} ± {a['sd']:.2f}"
            if a["excluded"]:
                excluded_any = True
                cell += f" ({a['excluded']} excl.)"
            cells.append(cell)
        lines.append(f"| {REGION_TITLES.get(region, region)} | " + " | ".join(cells) + " |")
    lines += ["", "Empty regions: when prediction and ground truth are both empty, Dice = 1 and HD95 = 0; "
                  "when exactly one is empty, Dice = 0 and HD95 = inf (per_case.csv writes `inf`). "
                  "Cases with HD95 = inf are left out of the HD95 mean"
              + (" and counted as \"excl.\"" if excluded_any else " (none here)") + ".",
              "HD95: symmetric 95th percentile of surface-voxel distances in mm (MONAI's definition), "
              "spacing from the ground truth's affine."]
    return "\n".join(lines) + "\n"


def write_report(metric: RegionMetric, out_dir: str | os.PathLike, source: str = "") -> tuple[Path, Path]:
    """Write ``per_case.csv`` and ``summary.md`` into ``out_dir`` (atomically); returns both paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NeumoursDataError(out, "--out must be a folder")
    csv_path, md_path = out / "per_case.csv", out / "summary.md"
    atomic_write_text(csv_path, per_case_csv(metric))
    atomic_write_text(md_path, summary_markdown(metric, source))
    return csv_path, md_path


def run_evaluate(out_dir: str | os.PathLike | None = None, pred: str | os.PathLike | None = None,
                 gt: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, split: str = "val", seed: int = 0, device=None,
                 progress: bool = True, precision: str = "auto") -> tuple[RegionMetric, str]:
    """The command: pick the way in from the arguments, score, write the report if ``out_dir``.

    Returns:
        (the metric with every row, the summary markdown).

    Raises:
        NeumoursError: both or neither way in given, or any failure of the two functions.
    """
    folders = pred is not None or gt is not None
    model = checkpoint is not None or data is not None
    if folders == model:
        raise NeumoursError("give either --pred DIR --gt DIR, or --checkpoint CKPT --data DIR")
    if folders:
        if pred is None or gt is None:
            raise NeumoursError("--pred and --gt go together")
        metric = evaluate_folders(pred, gt, progress)
        source = f"Predictions `{pred}` against ground truth `{gt}`."
    else:
        if checkpoint is None or data is None:
            raise NeumoursError("--checkpoint and --data go together")
        metric = evaluate_checkpoint(checkpoint, data, split, seed, device, progress, precision=precision)
        which = f"validation split (split_cases(…, 0.1, seed={seed}))" if split == "val" else "all cases"
        source = (f"Checkpoint `{checkpoint}` on `{data}`, {which}; denoised = "
                  "`neumours.infer.denoise.denoise` defaults.")
    if not metric.rows:
        raise NeumoursError("no case to evaluate")
    summary = summary_markdown(metric, source)
    if out_dir is not None:
        write_report(metric, out_dir, source)
    return metric, summary

