"""``neumours demo``: the main job on the embedded phantom data."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.data import parse_shape, shape_edge
from neumours.cli.options import add_command, add_device_option, add_quiet_option, int_range, positive_int, seed
from neumours.demo import CPU_PLAN, GPU_PLAN
from neumours.errors import NeumoursError


def cmd_demo(args) -> None:
    from neumours.demo import format_demo_report, run_demo
    from neumours.device import get_device

    if args.cases is not None and args.cases < 2:
        raise NeumoursError(f"--cases must be at least 2 (training and validation), got {args.cases}")
    if args.steps is not None and args.steps < 1:
        raise NeumoursError(f"--steps must be at least 1, got {args.steps}")
    from neumours.outputs import check_output_folder

    check_output_folder(args.out, "output folder (--out)")
    result = run_demo(args.out, device=get_device(args.device), cases=args.cases,
                      shape=parse_shape(args.shape) if args.shape else None, steps=args.steps, seed=args.seed,
                      progress=not args.quiet)
    print(format_demo_report(result))


def add_parsers(sub) -> None:
    p = add_command(sub, "demo", "run the main job on the embedded phantom data",
                    "Synthesise phantom cases, train the INR (the tiny preset on the CPU, the paper's network "
                    "on a GPU), segment the validation cases raw and denoised, print the Table III analogue and "
                    "write figures.",
                    examples=("neumours demo", "neumours demo --device cpu --out demo --quiet"))
    p.add_argument("--out", type=Path, default=Path("neumours-demo"),
                   help="output folder (an earlier demo's results in it are replaced)")
    (cpu_cases, cpu_shape, _, cpu_steps), (gpu_cases, gpu_shape, _, gpu_steps) = CPU_PLAN, GPU_PLAN
    p.add_argument("--cases", type=int_range(2, 100_000),
                   help=f"number of phantom cases (default: CPU {cpu_cases}, GPU {gpu_cases})")
    p.add_argument("--shape", type=shape_edge, nargs=3, metavar=("X", "Y", "Z"),
                   help=f"case shape (default: CPU {' '.join(map(str, cpu_shape))}, "
                        f"GPU {' '.join(map(str, gpu_shape))})")
    p.add_argument("--steps", type=positive_int, help=f"training steps (default: CPU {cpu_steps}, GPU {gpu_steps})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the phantoms, the split and the training")
    add_device_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_demo)
