"""The paper's baseline: nnU-Net v2 (3d_fullres) beside the INR, Table III/IV analogues in one run (GPU).

Steps, all offline (nnU-Net downloads nothing for training or prediction):

1. ``neumours export-nnunet`` of the pre-operative training set (fold 0 = the INR's
   own validation split, ``split_cases(cases, 0.1, seed)``) and of the held-out
   post-operative set (never trained on).
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, then ``nnUNetv2_train`` fold 0
   with a short fixed-epoch trainer (``--trainer``, default
   ``nnUNetTrainer_50epochs``); its wall time is printed next to the INR's training
   time (``--inr-train-s``) so the budgets can be matched by choosing the trainer
   (nnU-Net has ``_1epoch``, ``_5epochs``, ``_10epochs``, ``_20epochs``, ``_50epochs``,
   ``_100epochs``, ... variants).
3. ``nnUNetv2_predict`` on the validation cases and on the post-operative cases;
   per-case time = wall time of the call / cases (includes nnU-Net's start-up and
   model load, once per call).
4. The INR checkpoint (``--checkpoint``) is scored on the same cases raw and
   denoised (``neumours.eval.evaluate.evaluate_checkpoint``, per-case time from
   the segmenter); nnU-Net's labels by ``evaluate_folders``. Both with the
   standard and the BraTS 2023 lesion-wise metrics.

Writes ``OUT/nnunet_baseline.md`` and ``OUT/nnunet_baseline.csv``.

    pip install 'neumours[nnunet]'       # nnunetv2 + torchvision pinned to our torch
    python benchmarks/nnunet_baseline.py --pre PRE_DIR --post POST_DIR --checkpoint INR.safetensors \\
        --inr-train-s 600 --work /tmp/nnunet --out nnunet_results
    python benchmarks/nnunet_baseline.py ... --dry-run   # print the nnU-Net commands only
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from neumours.atomic import atomic_write_text  # noqa: E402
from neumours.eval.evaluate import REGION_TITLES  # noqa: E402

PRE_ID, POST_ID = 501, 502


def run(cmd: list[str], env: dict, dry: bool) -> float:
    """Run an nnU-Net command (printed first); returns its wall time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    if dry:
        return 0.0
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - start


def images_of(dataset: Path, ids: list[str], dest: Path) -> Path:
    """A folder of the four channel files of ``ids`` (nnUNetv2_predict's input)."""
    dest.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        for f in sorted((dataset / "imagesTr").glob(f"{cid}_????.nii.gz")):
            shutil.copy2(f, dest / f.name)
    return dest


def labels_of(dataset: Path, ids: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        shutil.copy2(dataset / "labelsTr" / f"{cid}.nii.gz", dest / f"{cid}.nii.gz")
    return dest


def inr_seconds_per_case(checkpoint: Path, data: Path, split: str, seed: int, device) -> float:
    """Median wall time of segment + denoise per case (loaded case in memory, kernels warm), s."""
    import statistics

    from neumours.data import list_cases, load_case, split_cases
    from neumours.infer.segment import Segmenter

    refs = list_cases(data)
    if split == "val":
        refs = split_cases(refs, 0.1, seed)[1]
    segmenter = Segmenter(checkpoint, device)
    cases = [load_case(r) for r in refs]
    segmenter(cases[0], denoise=True)  # warm-up: kernel compilation
    times = []
    for case in cases:
        start = time.perf_counter()
        segmenter(case, denoise=True)  # labels come back to the host: the device work is done
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def column(metric, variant: str, key: str) -> str:
    a = metric.aggregate(variant)[key]
    return f"{a['mean']:.3f} ± {a['sd']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pre", type=Path, required=True, help="pre-operative dataset (INR training set)")
    parser.add_argument("--post", type=Path, required=True, help="held-out post-operative dataset")
    parser.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint trained on --pre")
    parser.add_argument("--inr-train-s", type=float, default=float("nan"), help="INR training wall time, s")
    parser.add_argument("--trainer", default="nnUNetTrainer_50epochs", help="nnU-Net trainer class")
    parser.add_argument("--seed", type=int, default=0, help="split seed of the INR run")
    parser.add_argument("--work", type=Path, required=True, help="new folder for nnUNet_raw/preprocessed/results")
    parser.add_argument("--out", type=Path, default=Path("nnunet_results"), help="folder for the .md and .csv")
    parser.add_argument("--device", default="cuda", help="nnU-Net and INR device")
    parser.add_argument("--dry-run", action="store_true", help="export, then print the nnU-Net commands only")
    args = parser.parse_args()

    from neumours.data.nnunet_export import export_nnunet
    from neumours.device import get_device
    from neumours.eval.evaluate import evaluate_checkpoint, evaluate_folders

    raw, pre_dir, res = args.work / "raw", args.work / "preprocessed", args.work / "results"
    pre_ds = export_nnunet(args.pre, raw / "pre", PRE_ID, "NeumoursPre", seed=args.seed)
    post_ds = export_nnunet(args.post, raw / "post", POST_ID, "NeumoursPost", seed=args.seed)
    nn_raw = raw / "all"
    nn_raw.mkdir(parents=True, exist_ok=True)
    for ds in (pre_ds, post_ds):
        os.replace(ds, nn_raw / ds.name)
    pre_ds, post_ds = nn_raw / pre_ds.name, nn_raw / post_ds.name
    env = dict(os.environ, nnUNet_raw=str(nn_raw), nnUNet_preprocessed=str(pre_dir), nnUNet_results=str(res))
    env.setdefault("nnUNet_compile", "f")
    val_ids = json.loads((pre_ds / "splits_final.json").read_text())[0]["val"]
    post_ids = sorted(p.name[: -len(".nii.gz")] for p in (post_ds / "labelsTr").iterdir())

    times = {"plan": run(["nnUNetv2_plan_and_preprocess", "-d", str(PRE_ID), "-c", "3d_fullres",
                          "--verify_dataset_integrity"], env, args.dry_run)}
    if not args.dry_run:
        (pre_dir / pre_ds.name).mkdir(parents=True, exist_ok=True)  # made by planning; fold 0 = our split
        shutil.copy2(pre_ds / "splits_final.json", pre_dir / pre_ds.name / "splits_final.json")
    times["train"] = run(["nnUNetv2_train", str(PRE_ID), "3d_fullres", "0", "-tr", args.trainer,
                          "-device", args.device.split(":")[0]], env, args.dry_run)
    preds = {}
    for name, ds, ids in (("val", pre_ds, val_ids), ("post", post_ds, post_ids)):
        inp = images_of(ds, ids, args.work / f"in_{name}")
        preds[name] = args.work / f"pred_{name}"
        times[f"predict_{name}"] = run(["nnUNetv2_predict", "-i", str(inp), "-o", str(preds[name]), "-d",
                                        str(PRE_ID), "-c", "3d_fullres", "-f", "0", "-tr", args.trainer,
                                        "-device", args.device.split(":")[0]], env, args.dry_run)
    if args.dry_run:
        return

    device = get_device(args.device)
    rows, table = [], []
    for name, data, split, ds, ids in (("val", args.pre, "val", pre_ds, val_ids),
                                       ("post", args.post, "all", post_ds, post_ids)):
        inr = evaluate_checkpoint(args.checkpoint, data, split, args.seed, device, progress=False)
        inr_s = inr_seconds_per_case(args.checkpoint, data, split, args.seed, device)
        nn = evaluate_folders(preds[name], labels_of(ds, ids, args.work / f"gt_{name}"), progress=False)
        nn_s = times[f"predict_{name}"] / max(len(ids), 1)
        table += [f"## {'Table III analogue: pre-operative validation' if name == 'val' else 'Table IV analogue: post-operative, never trained on'} (n = {len(ids)})",
                  "", "| Region | INR (raw) | INR (denoised) | nnU-Net | INR lesion-wise (denoised) | nnU-Net lesion-wise |",
                  "|---|---|---|---|---|---|"]
        for region in REGION_TITLES:
            cells = [column(inr, "raw", f"dice_{region}"), column(inr, "denoised", f"dice_{region}"),
                     column(nn, "pred", f"dice_{region}"), column(inr, "denoised", f"lw_dice_{region}"),
                     column(nn, "pred", f"lw_dice_{region}")]
            table.append(f"| {REGION_TITLES[region]} | " + " | ".join(cells) + " |")
            rows.append({"set": name, "region": region, "n": len(ids),
                         **{k: inr.aggregate(v)[f"{m}_{region}"]["mean"]
                            for k, v, m in (("inr_raw_dice", "raw", "dice"), ("inr_denoised_dice", "denoised", "dice"),
                                            ("inr_denoised_lw_dice", "denoised", "lw_dice"))},
                         "nnunet_dice": nn.aggregate("pred")[f"dice_{region}"]["mean"],
                         "nnunet_lw_dice": nn.aggregate("pred")[f"lw_dice_{region}"]["mean"],
                         "inr_s_per_case": inr_s, "nnunet_s_per_case": nn_s})
        table += ["", f"Inference per case: INR {inr_s:.2f} s (segment + denoise, median, kernels warm), "
                      f"nnU-Net {nn_s:.2f} s (nnUNetv2_predict wall time / cases, start-up included).", ""]
    head = ["# nnU-Net baseline beside the INR", "",
            f"Training: INR {args.inr_train_s:.0f} s (given), nnU-Net {args.trainer} {times['train']:.0f} s "
            f"(+ {times['plan']:.0f} s planning/preprocessing); device {args.device}.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "nnunet_baseline.md", "\n".join(head + table) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "nnunet_baseline.csv", buf.getvalue())
    print("\n".join(head + table))


if __name__ == "__main__":
    main()
