"""``neumours demo``: the project's main job on its embedded default data.

At this stage: synthesise a few phantom cases, load them back through the data
layer (as any BraTS dataset would be), and write a montage PNG plus a summary.
"""

from __future__ import annotations

from pathlib import Path

from neumours.data import list_cases, load_case
from neumours.data.phantom import write_dataset
from neumours.figures import case_montage
from neumours.summary import case_summary, format_case_summary


def run_demo(out_dir="neumours-demo", cases: int = 3, shape=(96, 96, 64), seed: int = 0) -> dict:
    """Run the demo and return what it wrote.

    Args:
        out_dir: folder for ``data/`` (the phantom cases) and ``montage.png``.
        cases: number of phantom cases.
        shape: volume shape (X, Y, Z) of each case.
        seed: phantom seed.

    Returns:
        ``{"data": Path, "montage": Path, "summaries": [dict, ...]}``.
    """
    out = Path(out_dir)
    data_dir = out / "data"
    write_dataset(data_dir, cases, shape=tuple(shape), seed=seed, progress=True)
    loaded = [load_case(ref) for ref in list_cases(data_dir)]
    montage = case_montage(loaded, out / "montage.png")
    return {"data": data_dir, "montage": montage, "summaries": [case_summary(c) for c in loaded]}


def format_demo_report(result: dict) -> str:
    lines = [format_case_summary(s) for s in result["summaries"]]
    lines.append(f"phantom cases: {result['data']}")
    lines.append(f"montage:       {result['montage']}")
    return "\n".join(lines)
