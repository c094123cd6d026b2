"""Train the INR, segment the validation cases and score them: the demo as a script.

    python examples/train_and_segment.py [--data BRATS_DIR] [--out DIR] [--preset tiny|paper] [--steps N]

Without --data a phantom dataset is synthesised. With BraTS 2023 data, point
--data at the folder of case folders (or an nnU-Net raw dataset) and use
--preset paper on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from neumours.data import list_cases, split_cases
from neumours.data.phantom import write_dataset
from neumours.device import get_device
from neumours.eval.evaluate import evaluate_checkpoint, summary_markdown, write_report
from neumours.infer.segment import Segmenter, write_segmentation
from neumours.train.config import preset
from neumours.train.trainer import train


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: synthesise phantoms)")
    parser.add_argument("--out", type=Path, default=Path("train-and-segment"))
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cases", type=int, default=12, help="phantom cases when synthesising")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48], help="phantom shape")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = get_device(args.device)

    # 1. Data: any layout list_cases knows; 90/10 split, deterministic from the seed.
    data = args.data
    if data is None:
        data = args.out / "data"
        write_dataset(data, args.cases, shape=tuple(args.shape), seed=0, overwrite=True)

    # 2. Train: Table I settings (or the tiny preset), a few overrides.
    config = preset(args.preset)
    config = dataclasses.replace(config, schedule=dataclasses.replace(
        config.schedule, steps=args.steps, val_every=max(1, args.steps // 5)))
    train(data, args.out / "run", config, device)
    checkpoint = args.out / "run" / "best.safetensors"

    # 3. Segment the validation cases (volume caching on the device, then denoising)
    #    into NIfTI files that lie on the input images.
    _, val_refs = split_cases(list_cases(data), config.schedule.val_fraction, config.schedule.seed)
    segmenter = Segmenter(checkpoint, device)
    for ref in val_refs:
        result = segmenter(ref, denoise=True)
        write_segmentation(result, args.out / "segmentations" / f"{ref.case_id}.nii.gz")

    # 4. Score raw and denoised: per_case.csv and a Table III-style summary.md.
    metric = evaluate_checkpoint(checkpoint, data, split="val", seed=config.schedule.seed, device=device)
    per_case, summary = write_report(metric, args.out / "evaluation", source=str(data))
    print(summary_markdown(metric, str(data)))
    return {"checkpoint": checkpoint, "per_case": per_case, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
