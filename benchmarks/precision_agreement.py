"""bf16 against fp32 on a trained checkpoint: how many voxels get the same label, and the
Dice of the bf16 labels against the fp32 labels per region (and both against the truth).

Cases: ``--cases`` fresh 240 x 240 x 155 phantoms (dataset seed 1000, never trained on), segmented raw (no denoising,
so the comparison is the network's) by ``neumours.infer.segment.Segmenter`` with
``precision="bf16"`` (tensor cores) and ``precision="fp32"``, on the same GPU. The issue's
bar: >= 99.9 % of voxels agree and Dice(bf16, fp32) >= 0.995 per region.

    python benchmarks/precision_agreement.py --checkpoint CKPT [--cases 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.data import list_cases, load_case  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.eval.metrics import REGION_NAMES, region_scores  # noqa: E402
from neumours.infer.segment import Segmenter  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained checkpoint (.safetensors)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--json", default="precision_agreement.json")
    add_device_argument(parser, note="needs cuda: it compares bf16 (CUDA only) with fp32")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    segmenters = {p: Segmenter(args.checkpoint, device, precision=p) for p in ("bf16", "fp32")}
    rows, results = [], {"device": describe(device), "checkpoint": args.checkpoint, "cases": []}
    data = Path(tempfile.mkdtemp()) / "data"
    write_dataset(data, args.cases, shape=tuple(args.shape), seed=1000, progress=False)
    for ref in list_cases(data):
        case = load_case(ref)
        labels = {p: s(case).raw_labels for p, s in segmenters.items()}
        agree = float(np.mean(labels["bf16"] == labels["fp32"]))
        between = region_scores(labels["bf16"], labels["fp32"], case.spacing)
        truth = {p: region_scores(lab, case.label, case.spacing) for p, lab in labels.items()}
        entry = {"case": case.case_id, "agree": agree, "dice_bf16_vs_fp32": between, "vs_truth": truth}
        results["cases"].append(entry)
        row = {"case": case.case_id, "voxels agreeing": f"{100 * agree:.4f} %"}
        row.update({f"Dice {r} bf16/fp32": f"{between['dice_' + r]:.4f}" for r in REGION_NAMES})
        row.update({f"WT vs truth {p}": f"{truth[p]['dice_WT']:.4f}" for p in labels})
        rows.append(row)
    write_json(args.json, results)
    print(f"device: {results['device']}; checkpoint {args.checkpoint}; raw labels, {args.cases} case(s) "
          f"{tuple(args.shape)}")
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
