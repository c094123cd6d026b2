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
HD95 comes from the ground truth's checked geometry
(:func:`neumours.data.geometry.voxel_spacing`, the same function behind every mm
and mL figure of the project).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
import numpy as np

from neumours.atomic import atomic_write_files, removed_if_unfinished
from neumours.data import Case, list_cases, split_cases
from neumours.data.layouts import case_files
from neumours.data.nifti import is_nifti_name, read_header, read_volume, strip_nifti_suffix
from neumours.errors import CasesFailedError, NeumoursDataError, NeumoursError
from neumours.outputs import Output, check_output_folder, check_outputs, files_under
from neumours.eval.metrics import RegionMetric

#: Row titles of the summary table (paper Table III, plus the tumour core).
REGION_TITLES = {
    "NCR": "Necrotic Core (NCR)",
    "ED": "Peritumoral Edema (ED)",
    "ET": "Enhancing Tumor (ET)",
    "TC": "Tumor Core (TC)",
    "WT": "Whole Tumor (WT)",
}
#: The files of a report folder (written together by :func:`write_report`).
REPORT_FILES = ("per_case.csv", "summary.md")
VARIANT_TITLES = {"raw": "INR (raw)", "denoised": "INR (denoised)", "pred": "prediction"}


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


def _pair_headers(cid: str, pred_path: Path, gt_path: Path, force_geometry: bool) -> None:
    """Header-only check of one prediction / ground-truth pair (see :func:`neumours.data.check_case`)."""
    gt_facts, gt_geometry = read_header(gt_path, force_geometry)
    pred_facts, pred_geometry = read_header(pred_path, force_geometry)
    _same_grid(pred_path, pred_facts.shape, pred_geometry.affine, gt_path, gt_facts.shape, gt_geometry.affine)


def _squeeze(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _same_grid(pred_path: Path, pred_shape, pred_affine, gt_path: Path, gt_shape, gt_affine) -> None:
    if _squeeze(pred_shape) != _squeeze(gt_shape):
        raise NeumoursDataError(pred_path, f"shape {_squeeze(pred_shape)} differs from ground truth {gt_path.name} "
                                           f"shape {_squeeze(gt_shape)}")
    if not np.allclose(pred_affine, gt_affine, rtol=1e-4, atol=1e-3):
        raise NeumoursDataError(pred_path, f"affine differs from ground truth {gt_path.name} "
                                           "(the prediction does not lie on the same voxel grid)")


def _checked(items, check, keep_going: bool, failures: list | None) -> list:
    """The items whose ``check(item)`` passes; a failure raises, or with ``keep_going`` is recorded."""
    good = []
    for cid, item in items:
        try:
            check(item)
            good.append((cid, item))
        except NeumoursError as exc:
            if not keep_going:
                raise
            if failures is not None:
                failures.append((cid, str(exc)))
    return good


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, progress: bool = True,
                     force_geometry: bool = False, keep_going: bool = False,
                     failures: list | None = None) -> RegionMetric:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``.

    Every pair's headers are checked before any case is scored (shape, grid,
    geometry); with ``keep_going`` a bad pair (at that check or while reading
    its voxels) is left out and appended to ``failures`` as (case id, error).

    Raises:
        NeumoursDataError: a folder missing, a case without prediction, an unreadable
            file, bad geometry, or a prediction whose shape or affine differs from its
            ground truth (unless ``keep_going``).
    """
    from tqdm import tqdm

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts = _ground_truth(gt_dir)
    preds = _predictions(pred_dir)
    missing = [cid for cid in gts if cid not in preds]
    if missing and not keep_going:
        raise NeumoursDataError(pred_dir, f"no prediction for case {missing[0]} "
                                          f"({len(missing)} of {len(gts)} missing; expected {missing[0]}.nii.gz)")
    for cid in missing:
        if failures is not None:
            failures.append((cid, f"{pred_dir}: no prediction (expected {cid}.nii.gz)"))
    pairs = [(cid, (preds[cid], gts[cid])) for cid in sorted(gts) if cid in preds]
    pairs = _checked(pairs, lambda pair: _pair_headers("", pair[0], pair[1], force_geometry), keep_going, failures)

    def score(pair) -> None:
        pred_path, gt_path = pair
        gt = read_volume(gt_path, label=True, force_geometry=force_geometry)
        pred = read_volume(pred_path, label=True, force_geometry=force_geometry)
        _same_grid(pred_path, pred.data.shape, pred.img.affine, gt_path, gt.data.shape, gt.img.affine)
        metric(pred.data, gt.data, gt.geometry.spacing, case_id=cid, variant="pred")

    metric = RegionMetric()
    for cid, pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress or len(pairs) < 2):
        _checked([(cid, pair)], score, keep_going, failures)
    return metric


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split: str = "val",
                        seed: int = 0, device=None, progress: bool = True,
                        on_case: Callable[[Case, np.ndarray, np.ndarray], None] | None = None,
                        force_geometry: bool = False, keep_going: bool = False,
                        failures: list | None = None, precision: str = "auto") -> RegionMetric:
    """Segment the cases of ``data_dir`` with ``checkpoint`` and score them raw and denoised.

    Args:
        split: ``"val"`` (validation part of ``split_cases(cases, 0.1, seed)``) or ``"all"``.
        on_case: called as ``on_case(case, raw_labels, denoised_labels)`` after each
            case (figures from the same pass, without segmenting again).
        force_geometry: see :func:`neumours.data.load_case`.
        keep_going: leave out cases that fail (appended to ``failures`` as
            (case id, error)) instead of stopping at the first.

    Raises:
        NeumoursError: bad checkpoint (before any case is read), a bad split name,
            or (unless ``keep_going``) a case without labels or whose headers fail
            the checks of :func:`neumours.data.check_case` (all checked before the
            first case is segmented), or one that fails to load (naming it).
    """
    from tqdm import tqdm

    from neumours.data import check_case, load_case
    from neumours.infer.segment import Segmenter

    if split not in ("val", "all"):
        raise NeumoursError(f"--split must be 'val' or 'all', got {split!r}")
    segmenter = Segmenter(checkpoint, device, precision=precision)
    refs = list_cases(data_dir)
    segmenter.fits(data_dir)  # modalities and classes, before any case is read
    if split == "val":
        _, refs = split_cases(refs, 0.1, seed)
    items = _checked([(r.case_id, r) for r in refs],
                     lambda ref: check_case(ref, force_geometry=force_geometry, need_label=True), keep_going, failures)
    metric = RegionMetric()

    def score(ref) -> None:
        case = load_case(ref, force_geometry=force_geometry)
        result = segmenter(case, denoise=True)  # on the device where there is one, as `segment --denoise`
        spacing = case.spacing
        metric(result.raw_labels, case.label, spacing, case_id=case.case_id, variant="raw")
        clean = result.labels
        metric(clean, case.label, spacing, case_id=case.case_id, variant="denoised")
        if on_case is not None:
            on_case(case, result.raw_labels, clean)

    for cid, ref in tqdm(items, desc="evaluate", unit="case", disable=not progress or len(items) < 2):
        _checked([(cid, ref)], score, keep_going, failures)
    return metric


def _format_value(value: float) -> str:
    return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.6g}")


def per_case_csv(metric: RegionMetric) -> str:
    """CSV text: ``case_id``, ``variant`` (only when raw and denoised are both scored), dice_*, hd95_*, then the
    lesion-wise lw_dice_*, lw_hd95_* and lesion counts lw_tp_*, lw_fn_*, lw_fp_* (when the metric has them)."""
    variants = {r["variant"] for r in metric.rows}
    with_variant = len(variants) > 1
    columns = ["case_id"] + (["variant"] if with_variant else [])
    columns += [f"{kind}_{r}" for kind in metric.kinds for r in metric.regions]
    if metric.lesion_wise:
        columns += [f"lw_{count}_{r}" for count in ("tp", "fn", "fp") for r in metric.regions]
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


def _mean_sd(aggregate: dict, fmt: str) -> str:
    """``mean ± sd`` of an aggregate; the mean alone from one value (no spread to state), ``—`` from none."""
    if aggregate["n"] == 0:
        return "—"
    if aggregate["n"] == 1:
        return fmt.format(aggregate["mean"])
    return f"{fmt.format(aggregate['mean'])} ± {fmt.format(aggregate['sd'])}"


def summary_markdown(metric: RegionMetric, source: str = "") -> str:
    """A Table III-style summary: Dice mean ± sd per region and variant, then HD95 (mm)."""
    variants = _variants(metric)
    cases = len({r["case_id"] for r in metric.rows})
    aggregates = {v: metric.aggregate(v) for v in variants}
    titles = [VARIANT_TITLES.get(v, v) for v in variants]
    lines = ["# Segmentation results", ""]
    if source:
        lines += [source, ""]
    spread = ("Dice and HD95 mean ± sample sd over cases." if cases > 1 else
              "One case: its values, with no standard deviation to state.")
    lines += [f"n = {cases} case(s). {spread}", "",
              "## Dice", "", "| Region | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for region in metric.regions:
        cells = [_mean_sd(aggregates[v]["dice_" + region], "{:.3f}") for v in variants]
        lines.append(f"| {REGION_TITLES.get(region, region)} | " + " | ".join(cells) + " |")
    lines += ["", "## HD95 (mm)", "", "| Region | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    excluded_any = False
    for region in metric.regions:
        cells = []
        for v in variants:
            a = aggregates[v]["hd95_" + region]
            cell = _mean_sd(a, "{:.2f}")
            if a["excluded"]:
                excluded_any = True
                cell += f" ({a['excluded']} excl.)"
            cells.append(cell)
        lines.append(f"| {REGION_TITLES.get(region, region)} | " + " | ".join(cells) + " |")
    if metric.lesion_wise:
        for kind, title, fmt in (("lw_dice", "Lesion-wise Dice (BraTS 2023)", "{:.3f}"),
                                 ("lw_hd95", "Lesion-wise HD95 (mm, BraTS 2023)", "{:.2f}")):
            lines += ["", f"## {title}", "", "| Region | " + " | ".join(titles) + " | lesions found / missed / "
                      "false |", "|---" * (len(titles) + 2) + "|"]
            for region in metric.regions:
                cells = [_mean_sd(aggregates[v][f"{kind}_{region}"], fmt) for v in variants]
                counts = " · ".join("/".join(str(sum(r[f"lw_{c}_{region}"] for r in metric.rows if r["variant"] == v))
                                             for c in ("tp", "fn", "fp")) for v in variants)
                lines.append(f"| {REGION_TITLES.get(region, region)} | " + " | ".join(cells) + f" | {counts} |")
    lines += ["", "Empty regions: when prediction and ground truth are both empty, Dice = 1 and HD95 = 0; "
                  "when exactly one is empty, Dice = 0 and HD95 = inf (per_case.csv writes `inf`). "
                  "Cases with HD95 = inf are left out of the HD95 mean"
              + (" and counted as \"excl.\"" if excluded_any else " (none here)") + ".",
              "HD95: symmetric 95th percentile of surface-voxel distances in mm (MONAI's definition), "
              "spacing from the ground truth's affine."]
    if metric.lesion_wise:
        lines += ["Lesion-wise (BraTS 2023 glioma rules, neumours.eval.lesionwise): ground-truth components "
                  "(26-connected) merged when their 3-fold dilations touch; a predicted component matches a lesion "
                  "it overlaps after 3-fold dilation; each lesion is scored against its matches; a missed lesion "
                  "and each unmatched predicted component count Dice 0 and HD95 374 mm; lesions of 50 mm³ or less "
                  "are not scored; nothing to find and nothing found gives Dice 1, HD95 0. Counts are summed "
                  "over cases (per variant, separated by ·)."]
    return "\n".join(lines) + "\n"


def write_report(metric: RegionMetric, out_dir: str | os.PathLike, source: str = "") -> tuple[Path, Path]:
    """Write ``per_case.csv`` and ``summary.md`` into ``out_dir``, both or neither; returns both paths."""
    out = check_output_folder(out_dir, "report folder (--out)")
    csv_path, md_path = (out / name for name in REPORT_FILES)
    with removed_if_unfinished(out):  # a full disk leaves no empty report folder behind
        atomic_write_files({csv_path: per_case_csv(metric).encode("utf-8"),
                            md_path: summary_markdown(metric, source).encode("utf-8")})
    return csv_path, md_path


def run_evaluate(out_dir: str | os.PathLike | None = None, pred: str | os.PathLike | None = None,
                 gt: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, split: str = "val", seed: int = 0, device=None,
                 progress: bool = True, force_geometry: bool = False, keep_going: bool = False,
                 failures: list | None = None, precision: str = "auto") -> tuple[RegionMetric, str]:
    """The command: pick the way in from the arguments, score, write the report if ``out_dir``.

    ``out_dir`` is checked before any work. With ``keep_going``, cases that fail
    are left out of the report and appended to ``failures`` as (case id, error);
    the caller decides what to do with them (the CLI prints a table and exits 2).

    Returns:
        (the metric with every row, the summary markdown).

    Raises:
        NeumoursError: both or neither way in given, an unusable ``out_dir``, or any
            failure of the two functions (every case failing, with ``keep_going``).
    """
    folders = pred is not None or gt is not None
    model = checkpoint is not None or data is not None
    if folders == model:
        raise NeumoursError("give either --pred DIR --gt DIR, or --checkpoint CKPT --data DIR")
    if out_dir is not None:
        check_output_folder(out_dir, "report folder (--out)")
        inputs = [*files_under(pred, "--pred"), *files_under(gt, "--gt"), ("--checkpoint", checkpoint)]
        if data is not None:
            inputs += case_files(list_cases(data))
        check_outputs([Output(Path(out_dir) / name, "report file (--out)") for name in REPORT_FILES], inputs)
    failures = [] if failures is None else failures
    if folders:
        if pred is None or gt is None:
            raise NeumoursError("--pred and --gt go together")
        metric = evaluate_folders(pred, gt, progress, force_geometry, keep_going, failures)
        source = f"Predictions `{pred}` against ground truth `{gt}`."
    else:
        if checkpoint is None or data is None:
            raise NeumoursError("--checkpoint and --data go together")
        metric = evaluate_checkpoint(checkpoint, data, split, seed, device, progress, None, force_geometry,
                                     keep_going, failures, precision=precision)
        which = f"validation split (split_cases(…, 0.1, seed={seed}))" if split == "val" else "all cases"
        source = (f"Checkpoint `{checkpoint}` on `{data}`, {which}; denoised = "
                  "`neumours.infer.denoise.denoise` defaults.")
    if not metric.rows:
        if failures:
            raise CasesFailedError(f"all {len(failures)} case(s) failed; nothing evaluated", failures)
        raise NeumoursError("no case to evaluate")
    if failures:
        source += f" {len(failures)} case(s) failed and are not scored (--keep-going)."
    summary = summary_markdown(metric, source)
    if out_dir is not None:
        write_report(metric, out_dir, source)
    return metric, summary
