"""Training curves in the style of the paper's Fig. 3/4 (raw values faintly, EMA 0.9 per step over them),
and AdamW-vs-Muon overlays."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neumours.errors import NeumoursError  # noqa: E402
from neumours.figures import save_figure  # noqa: E402

#: (metrics.csv column, panel title, y-axis label).
PANELS = [("loss", "(a) combined loss", "Dice loss + weighted CE (log)"),
          ("dice_mean", "(b) mean soft Dice", "soft Dice, training batch"),
          ("ce", "(c) weighted CE", "weighted cross-entropy (log)"),
          ("val_dice_mean", "(d) validation mean Dice", "hard Dice, validation cases")]
#: Smallest y-range of the Dice panels: a run that barely moves is drawn flat, not zoomed into noise.
MIN_DICE_SPAN = 0.2


def read_metrics(run_dir) -> dict[str, np.ndarray]:
    """Columns of ``run_dir/metrics.csv`` as float arrays (NaN where empty or written ``nan``).

    Raises:
        NeumoursError: no such file, a folder, not UTF-8 text, not CSV, no ``step`` and ``loss``
            columns, a row longer than the header, or a cell that is not a number (or is infinite;
            ``step`` must be a finite number in every row): one line naming the file, line and column.
    """
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, restkey=_EXTRA))
    except FileNotFoundError:
        raise NeumoursError(f"{path}: no metrics file (is {run_dir} a training run?)") from None
    except IsADirectoryError:
        raise NeumoursError(f"{path}: is a folder, not a metrics file") from None
    except UnicodeDecodeError:
        raise NeumoursError(f"{path}: not a metrics file (not UTF-8 text)") from None
    except csv.Error as exc:
        raise NeumoursError(f"{path}: not a metrics file (not CSV: {exc})") from None
    except OSError as exc:
        raise NeumoursError(f"{path}: cannot read the metrics file ({exc.strerror or exc})") from None
    if not rows or "loss" not in rows[0] or "step" not in rows[0]:
        raise NeumoursError(f"{path}: no metric rows (a header with step and loss, then one row per logged step)")
    columns: dict[str, list[float]] = {key: [] for key in rows[0] if key != _EXTRA}
    for line, row in enumerate(rows, start=2):
        if _EXTRA in row:
            raise NeumoursError(f"{path}: line {line} has more values than the header has columns")
        for key, values in columns.items():
            text = row.get(key)
            values.append(_cell_value(path, line, key, text))
    if not np.isfinite(columns["step"]).all():
        raise NeumoursError(f"{path}: every row needs a step (a finite number)")
    return {key: np.array(values, dtype=np.float64) for key, values in columns.items()}


#: Where csv.DictReader puts the values of a row beyond the header.
_EXTRA = "\0extra"


def _cell_value(path: Path, line: int, key: str, text: str | None) -> float:
    """A cell as a float: NaN when empty or ``nan``; anything else must be a finite number."""
    if text is None or not text.strip():
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 30 else text[:27] + "..."
        raise NeumoursError(f"{path}: line {line}, column {key}: {shown!r} is not a number") from None
    if math.isinf(value):
        raise NeumoursError(f"{path}: line {line}, column {key}: {text.strip()} is not a finite number")
    return value


def ema(values: np.ndarray, alpha: float = 0.9, steps: np.ndarray | None = None) -> np.ndarray:
    """Exponential moving average with weight ``alpha`` per training step on the past, skipping NaNs.

    ``metrics.csv`` logs every ``log_every`` steps; with ``steps`` given, a row
    ``d`` steps after the previous one gets weight ``alpha ** d`` on the past,
    so the average has the time constant of a per-step EMA (about 10 steps for
    0.9) instead of lagging ``log_every`` times further behind.
    """
    out = np.full_like(values, np.nan, dtype=np.float64)
    state, last = np.nan, None
    for i, v in enumerate(values):
        if np.isnan(v):
            out[i] = state
            continue
        decay = alpha if steps is None or last is None else alpha ** max(float(steps[i] - last), 1.0)
        state = v if np.isnan(state) else decay * state + (1 - decay) * v
        last = None if steps is None else steps[i]
        out[i] = state
    return out


def dice_limits(values: np.ndarray, span: float = MIN_DICE_SPAN) -> tuple[float, float]:
    """y-limits for Dice values: the data with a margin, at least ``span`` wide, inside [0, 1.02]."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.02
    lo, hi = float(values.min()) - 0.02, float(values.max()) + 0.02
    if hi - lo < span:
        middle = (lo + hi) / 2
        lo, hi = middle - span / 2, middle + span / 2
    if hi > 1.02:
        lo, hi = lo - (hi - 1.02), 1.02
    if lo < 0.0:
        lo, hi = 0.0, max(hi - lo, hi)
    return max(lo, 0.0), min(hi, 1.02)


def _draw(axes, metrics, label, colour):
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        steps, values = metrics["step"], metrics.get(key)
        if values is None:
            continue
        keep = ~np.isnan(values)
        if key.startswith("val_"):
            ax.plot(steps[keep], values[keep], "o-", color=colour, label=label, markersize=3)
            cases = metrics.get("val_cases")
            if cases is not None and np.isfinite(cases).any():  # what the score rests on
                n = int(np.nanmax(cases))
                title = f"{title} ({n} case{'s' if n != 1 else ''})"
        else:
            ax.plot(steps[keep], values[keep], color=colour, alpha=0.3, linewidth=0.7)  # raw, faint
            ax.plot(steps[keep], ema(values[keep], steps=steps[keep]), color=colour, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=9)
        if key in ("loss", "ce"):
            ax.set_yscale("log")  # the fast early drop would hide the rest
        else:
            lo, hi = dice_limits(np.concatenate([line.get_ydata() for line in ax.get_lines()]).astype(float))
            ax.set_ylim(lo, hi)


def _style_legend(ax) -> None:
    """A key to the two line styles of the training panels: raw values and their moving average."""
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color="0.4", alpha=0.3, linewidth=0.7, label="raw (each logged step)"),
                       Line2D([], [], color="0.4", label="moving average (EMA 0.9 a step)")],
              fontsize=8, loc="lower right")


def plot_run(run_dir, out=None) -> Path:
    """Write ``run_dir/curves.png`` (or ``out``): loss, soft Dice, CE (raw and EMA 0.9) and validation Dice."""
    metrics = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    _draw(axes, metrics, Path(run_dir).name, "C0")
    _style_legend(axes[1])
    fig.suptitle(f"training run {Path(run_dir).resolve().name}", fontsize=10)
    return save_figure(fig, out or Path(run_dir) / "curves.png")


def compare_runs(run_dirs, out) -> Path:
    """One figure overlaying the curves of several runs (e.g. AdamW vs Muon)."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for i, run in enumerate(run_dirs):
        _draw(axes, read_metrics(run), Path(run).name, f"C{i}")
    axes[0].legend(fontsize=8, title="run", title_fontsize=8)
    _style_legend(axes[1])
    return save_figure(fig, out)
