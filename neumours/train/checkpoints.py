"""A training run's checkpoints as atomic units: write, verify, recover after a crash.

A checkpoint is everything ``--resume`` needs at one step, committed together::

    RUN/checkpoints/step-00000050/weights.safetensors   INR weights (also a normal INR checkpoint)
                                  state.pt              optimisers, sampler, case pool, best, metric rows
                                  metrics.csv           the metric rows up to and including this step
    RUN/checkpoint.json                                  the manifest: step, folder, SHA-256 of each file, best

The step folder is written under a temporary name and renamed whole; the
manifest is then replaced atomically, and that rename is the commit: before
it the previous checkpoint is the run's, after it the new one. ``--resume``
reads only what the manifest names and checks every hash, so files from two
different steps can never be combined. ``RUN/last.safetensors``,
``RUN/best.safetensors`` and ``RUN/metrics.csv`` are copies made after each
commit for people and other commands (``neumours segment --checkpoint
RUN/best.safetensors``); :func:`recover` brings them up to date again if a
crash came between the commit and the copies, and removes what a crash left
behind (temporary files and folders, a step folder that was never committed).

Runs written before this format (``last.safetensors`` + ``last.state.pt``)
still resume when both files are from the same step.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from neumours.atomic import (atomic_write_bytes, atomic_write_text, make_folder, remove_stale_temporaries,
                             temporary_name)
from neumours.errors import NeumoursError
from neumours.outputs import write_error

MANIFEST = "checkpoint.json"
FOLDER = "checkpoints"
WEIGHTS, STATE, METRICS = "weights.safetensors", "state.pt", "metrics.csv"
LAST, BEST, METRICS_COPY = "last.safetensors", "best.safetensors", "metrics.csv"
LEGACY_STATE = "last.state.pt"
FORMAT = "neumours-run-checkpoint/1"
#: Files of a run folder that mark it as a training run (``train --out`` refuses such a folder).
RUN_FILES = ("config.toml", MANIFEST, FOLDER, LAST, BEST, LEGACY_STATE, METRICS_COPY, "curves.png")
_STEP_RE = re.compile(r"^step-(\d{8})$")
# mkstemp names of earlier versions: .<name>.<random>.tmp<suffix>
_LEGACY_TEMP_RE = re.compile(r"^\.(config\.toml|metrics\.csv|last\.safetensors|best\.safetensors|last\.state\.pt|"
                             r"curves\.png)\.[A-Za-z0-9_]+\.tmp")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_folder(step: int) -> str:
    return f"{FOLDER}/step-{step:08d}"


def is_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` already holds (part of) a training run."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in RUN_FILES)


def resumable(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` has a committed checkpoint (this format or the earlier one) to resume from."""
    run_dir = Path(run_dir)
    return (run_dir / MANIFEST).is_file() or ((run_dir / LAST).is_file() and (run_dir / LEGACY_STATE).is_file())


def never_committed(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a run stopped before its first checkpoint: ``config.toml`` and no checkpoint
    files of either format (``--resume`` then starts it again from step 0)."""
    run_dir = Path(run_dir)
    return (run_dir / "config.toml").is_file() and not any((run_dir / n).exists() for n in (MANIFEST, LAST,
                                                                                            LEGACY_STATE))


def remove_run(run_dir: str | os.PathLike) -> None:
    """Delete a run's own files from ``run_dir`` (``train --overwrite``); other files are left alone."""
    run_dir = Path(run_dir)
    try:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    except OSError as exc:
        raise write_error(run_dir, exc) from None


@dataclass
class Checkpoint:
    """A verified checkpoint: the INR weights file, the progress state and where they came from."""

    step: int
    weights: Path
    state: dict
    manifest: dict | None  # None for a run of the earlier format


def _read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        int(manifest["step"]), str(manifest["folder"]), dict(manifest["files"])  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NeumoursError(f"{path}: cannot resume, the checkpoint manifest is unreadable ({exc})") from None
    return manifest


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, weights_only=False)
        int(state["step"])
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise NeumoursError(f"{path}: cannot resume from it ({exc})") from None
    return state


def _weights_step(path: Path) -> int | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return int((f.metadata() or {}).get("step", ""))
    except Exception:  # noqa: BLE001 - checked in full by load_checkpoint later
        return None


def load(run_dir: str | os.PathLike) -> Checkpoint:
    """The run's committed checkpoint, with every file checked against the manifest.

    Raises:
        NeumoursError: one line: no checkpoint, a missing file, a file whose hash
            or step does not match the manifest (files that do not belong
            together), or an unreadable state.
    """
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        return _load_legacy(run_dir)
    manifest = _read_manifest(run_dir)
    step, folder = int(manifest["step"]), run_dir / manifest["folder"]
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise NeumoursError(f"{run_dir}: cannot resume: {path.relative_to(run_dir)} of the step-{step} "
                                "checkpoint is missing")
        if sha256(path) != digest:
            raise NeumoursError(f"{run_dir}: cannot resume: {path.relative_to(run_dir)} does not belong to the "
                                f"step-{step} checkpoint (its SHA-256 differs from {MANIFEST})")
    state = _load_state(folder / STATE)
    weights_step = _weights_step(folder / WEIGHTS)
    if int(state["step"]) != step or weights_step != step:
        raise NeumoursError(f"{run_dir}: cannot resume: the checkpoint's files are from different steps "
                            f"(manifest {step}, weights {weights_step}, state {state['step']})")
    return Checkpoint(step, folder / WEIGHTS, state, manifest)


def _load_legacy(run_dir: Path) -> Checkpoint:
    for name in ("config.toml", LAST, LEGACY_STATE):
        if not (run_dir / name).is_file():
            raise NeumoursError(f"{run_dir}: cannot resume, no checkpoint ({MANIFEST} is missing)"
                                if name != "config.toml" else f"{run_dir}: cannot resume, config.toml is missing")
    state = _load_state(run_dir / LEGACY_STATE)
    weights_step = _weights_step(run_dir / LAST)
    if weights_step != int(state["step"]):
        raise NeumoursError(f"{run_dir}: cannot resume: {LAST} (step {weights_step}) and {LEGACY_STATE} (step "
                            f"{state['step']}) are from different checkpoints (a crash between their writes); "
                            "start a new run or restore both files")
    return Checkpoint(int(state["step"]), run_dir / LAST, state, None)


def recover(run_dir: str | os.PathLike) -> list[Path]:
    """Clean up after a crash and bring the copies in line with the committed checkpoint.

    Removes temporary files and folders whose writer is gone (and those of
    earlier versions), and step folders the manifest does not name (written,
    never committed); re-copies ``last.safetensors``, ``best.safetensors`` and
    ``metrics.csv`` where they differ from the committed files. Safe to run on
    a run folder of the earlier format (only its temporary files are removed).

    Returns:
        What was removed.
    """
    run_dir = Path(run_dir)
    removed = remove_stale_temporaries(run_dir) + remove_stale_temporaries(run_dir / FOLDER)
    for entry in list(run_dir.iterdir()) if run_dir.is_dir() else []:
        if _LEGACY_TEMP_RE.match(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if not (run_dir / MANIFEST).is_file():
        return removed
    manifest = _read_manifest(run_dir)
    keep = {manifest["folder"]} | ({manifest["best"]["folder"]} if manifest.get("best") else set())
    removed += _prune(run_dir, keep)
    _refresh_copies(run_dir, manifest)
    return removed


def _prune(run_dir: Path, keep: set[str]) -> list[Path]:
    removed = []
    folder = run_dir / FOLDER
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if _STEP_RE.match(entry.name) and f"{FOLDER}/{entry.name}" not in keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _copy(source: Path, target: Path, digest: str | None = None) -> None:
    """Atomically copy ``source`` onto ``target`` unless it already holds the same bytes."""
    if target.is_file() and digest is not None and sha256(target) == digest:
        return
    atomic_write_bytes(target, source.read_bytes())


def _refresh_copies(run_dir: Path, manifest: dict) -> None:
    folder = run_dir / manifest["folder"]
    _copy(folder / WEIGHTS, run_dir / LAST, manifest["files"][WEIGHTS])
    _copy(folder / METRICS, run_dir / METRICS_COPY, manifest["files"][METRICS])
    best = manifest.get("best")
    if best:
        _copy(run_dir / best["folder"] / WEIGHTS, run_dir / BEST, best["sha256"])


def commit(run_dir: str | os.PathLike, step: int, save_weights, state: dict, metrics_csv: str,
           best: dict | None) -> dict:
    """Write the step-``step`` checkpoint as one unit and make it the run's.

    Args:
        save_weights: called with a path; writes the INR weights there (safetensors
            with a ``step`` metadata entry equal to ``step``).
        state: progress for ``--resume`` (``step`` must equal ``step``).
        metrics_csv: the metric rows up to and including this step.
        best: ``{"step": s, "val_dice_mean": v}`` of the best validation so far
            (its weights: this step's when ``s == step``, else the earlier
            checkpoint's that the previous manifest names), or None.

    Returns:
        The new manifest.

    Raises:
        NeumoursError: a write failed (one line naming the file); the previous
            checkpoint is still the run's and nothing of the new one is left.
    """
    run_dir = Path(run_dir)
    make_folder(run_dir / FOLDER)
    final = run_dir / step_folder(step)
    tmp = temporary_name(final)
    try:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(tmp / STATE, buffer.getvalue())
        atomic_write_text(tmp / METRICS, metrics_csv)
        files = {name: sha256(tmp / name) for name in (WEIGHTS, STATE, METRICS)}
        if final.exists():  # an uncommitted folder of an earlier, crashed attempt at this step
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, exc) from None
    except NeumoursError as exc:  # a file of the folder failed: name it where it was going, not its temporary
        shutil.rmtree(tmp, ignore_errors=True)
        raise NeumoursError(str(exc).replace(str(tmp), str(final))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = _read_manifest(run_dir) if (run_dir / MANIFEST).is_file() else None
    best_entry = None
    if best is not None:
        if int(best["step"]) == step:
            best_entry = {"step": step, "val_dice_mean": float(best["val_dice_mean"]), "folder": step_folder(step),
                          "sha256": files[WEIGHTS]}
        elif previous is not None and previous.get("best") and int(previous["best"]["step"]) == int(best["step"]):
            best_entry = previous["best"]
    manifest = {"format": FORMAT, "step": step, "folder": step_folder(step), "files": files, "best": best_entry}
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")  # the commit
    _refresh_copies(run_dir, manifest)
    _prune(run_dir, {manifest["folder"]} | ({best_entry["folder"]} if best_entry else set()))
    (run_dir / LEGACY_STATE).unlink(missing_ok=True)  # a resumed run of the earlier format: now superseded
    return manifest


__all__ = ["BEST", "LAST", "MANIFEST", "Checkpoint", "commit", "is_run", "load", "never_committed", "recover",
           "remove_run", "resumable"]
