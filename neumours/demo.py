"""``neumours demo``: the project's main job on its embedded default data.

Synthesise a phantom dataset, train the INR (the tiny preset on the CPU device so
the demo ends in a few minutes; the paper's network on a GPU), segment the
validation cases raw and denoised, print the paper's Table III analogue and
write a Fig. 5-style comparison, plus a montage of the data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: (cases, shape, preset, steps) per kind of device. CPU: the tiny network learns the hard
#: phantoms to whole-tumour Dice ~0.85 in about a minute of training on 2 cores at
#: 96 x 96 x 64; at 64 x 64 x 48 the lesions are a few voxels across and WT stayed near 0.80 with
#: any number of cases, steps, batch or a wider network (README, "neumours demo").
CPU_PLAN = (32, (96, 96, 64), "tiny", 4000)
GPU_PLAN = (40, (128, 128, 96), "paper", 3000)


def run_demo(out_dir="neumours-demo", device=None, cases: int | None = None, shape=None, steps: int | None = None,
             seed: int = 0, progress: bool = True) -> dict:
    """Run the demo; returns what it wrote and the evaluation.

    Args:
        out_dir: output folder: ``data/``, ``run/``, ``evaluation/``, ``montage.png``,
            ``segmentations.png``.
        device: slangpy device (default: auto); decides the plan (CPU_PLAN / GPU_PLAN)
            unless ``cases``, ``shape`` or ``steps`` override it.
    """
    import slangpy as spy

    from neumours.data import list_cases, load_case
    from neumours.data.phantom import write_dataset
    from neumours.device import get_device
    from neumours.eval.evaluate import evaluate_checkpoint, summary_markdown, write_report
    from neumours.figures import case_montage, segmentation_comparison
    from neumours.train.config import preset
    from neumours.train.trainer import train

    from neumours.outputs import Output, check_output_folder, check_outputs

    check_output_folder(out_dir, "demo folder")
    check_outputs([Output(Path(out_dir), "demo folder", folder=True)])  # not inside, nor itself, a run or dataset
    device = device or get_device()
    cpu = device.info.type == spy.DeviceType.cpu
    plan_cases, plan_shape, plan_preset, plan_steps = CPU_PLAN if cpu else GPU_PLAN
    out = Path(out_dir)
    data = out / "data"
    write_dataset(data, cases or plan_cases, shape=tuple(shape or plan_shape), seed=seed, progress=progress,
                  overwrite=True)
    refs = list_cases(data)
    config = preset(plan_preset)
    config = dataclasses.replace(config, schedule=dataclasses.replace(
        config.schedule, steps=steps or plan_steps, val_every=max(1, (steps or plan_steps) // 5), seed=seed))
    # The demo owns out/: a second demo into the same folder replaces the first one's run.
    summary = train(data, out / "run", config, device, progress=progress, overwrite=True)
    checkpoint = out / "run" / "best.safetensors"

    rows = []  # the first three validation cases, for the figure, from the evaluation's own pass

    def keep(case, raw, clean):
        if len(rows) < 3:
            rows.append((case.case_id, case.images[3], [case.label, raw, clean]))

    metric = evaluate_checkpoint(checkpoint, data, split="val", seed=seed, device=device, progress=progress,
                                 on_case=keep)
    source = f"{len(refs)} phantom cases, {config.schedule.steps} steps of the {plan_preset} preset"
    report = write_report(metric, out / "evaluation", source=source)
    figure = segmentation_comparison(rows, out / "segmentations.png")
    montage = case_montage([load_case(r) for r in refs[:3]], out / "montage.png")
    return {"data": data, "run": out / "run", "train": summary, "evaluation": report, "figure": figure,
            "montage": montage, "table": summary_markdown(metric, source)}


def format_demo_report(result: dict) -> str:
    train_summary = result["train"]
    return "\n".join([
        result["table"],
        f"training: {train_summary['steps']} steps in {train_summary['time_s']:.1f} s, "
        f"best validation mean Dice {train_summary['best_val_dice_mean']:.3f} ({result['run']})",
        f"evaluation: {result['evaluation'][0]}, {result['evaluation'][1]}",
        f"figures:    {result['figure']}, {result['montage']}",
    ])
