"""A training run's checkpoints as atomic units: write, verify, recover after a crash.

A checkpoint is everything ``--resume`` needs at one step, committed together::

    RUN/checkpoints/step-00000050/weights.safetensors   INR weights (also a normal INR checkpoint)
                                  state.safetensors     the tensors of the optimiser states
                                  state.json            the rest: optimiser settings, samplers, case pool,
                                                        best, metric rows, the run's data (see below)
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

Nothing is unpickled: the state is safetensors + JSON (:mod:`neumours.train.state_files`).
Runs written before that (a ``state.pt`` in the step folder, or the still
earlier ``last.safetensors`` + ``last.state.pt``) are read with
``torch.load(weights_only=True)``, which builds tensors and plain values only;
a file that needs anything else is refused in one line (the payload of a
tampered file never runs), and the earliest format also needs both files to be
from the same step.

The state records the run's data (:func:`data_record`: the case ids of the
training and validation splits and a SHA-256 over the cases' NIfTI headers);
``--resume`` compares it with the data it is given (:func:`check_same_data`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_tensors

from neumours.atomic import (atomic_write_bytes, atomic_write_text, make_folder, remove_stale_temporaries,
                             temporary_name)
from neumours.errors import NeumoursError
from neumours.outputs import write_error
from neumours.train.state_files import encode

MANIFEST = "checkpoint.json"
FOLDER = "checkpoints"
WEIGHTS, STATE_TENSORS, STATE_JSON, METRICS = "weights.safetensors", "state.safetensors", "state.json", "metrics.csv"
OLD_STATE = "state.pt"  # the step folder's state before the safetensors + JSON format
LAST, BEST, METRICS_COPY = "last.safetensors", "best.safetensors", "metrics.csv"
LEGACY_STATE = "last.state.pt"
FORMAT = "neumours-run-checkpoint/2"
READABLE_FORMATS = ("neumours-run-checkpoint/1", FORMAT)  # /1: the state in a state.pt
STATE_FORMAT = "neumours-run-state/1"  # metadata of state.safetensors
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


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a parsed ``checkpoint.json`` (None: usable). Checked in full because the
    manifest names the files ``--resume`` reads: a hand-edited or foreign one must not reach them."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, expected an object"
    if manifest.get("format") not in READABLE_FORMATS:
        return f"format {str(manifest.get('format'))[:60]!r}, expected {FORMAT!r}"
    for key in ("step", "folder", "files"):
        if key not in manifest:
            return f"no {key!r} entry"
    if not is_int(manifest["step"]):
        return f"'step' is {str(manifest['step'])[:40]!r}, expected a whole number"
    if manifest["folder"] != step_folder(manifest["step"]):
        return f"'folder' is {str(manifest['folder'])[:60]!r}, expected {step_folder(manifest['step'])!r}"
    files = manifest["files"]
    known = (WEIGHTS, STATE_TENSORS, STATE_JSON, METRICS, OLD_STATE)
    if not isinstance(files, dict) or not all(k in known and isinstance(v, str) for k, v in files.items()):
        return f"'files' must map the checkpoint's file names ({', '.join(known)}) to SHA-256 strings"
    state_files = (STATE_TENSORS, STATE_JSON) if STATE_JSON in files or OLD_STATE not in files else (OLD_STATE,)
    missing = [n for n in (WEIGHTS, METRICS, *state_files) if n not in files]
    if missing:
        return f"'files' lacks {', '.join(missing)}"
    best = manifest.get("best")
    if best is not None:
        if not isinstance(best, dict):
            return f"'best' is {str(best)[:40]!r}, expected an object or null"
        if not is_int(best.get("step")) or best.get("folder") != step_folder(best["step"]) \
                or not isinstance(best.get("sha256"), str) \
                or not isinstance(best.get("val_dice_mean"), (int, float)) or isinstance(best["val_dice_mean"], bool):
            return "'best' must hold step (a whole number), its folder, sha256 and val_dice_mean (a number)"
    return None


def _read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise NeumoursError(f"{path}: cannot resume, the checkpoint manifest is unreadable "
                            f"({str(exc)[:200]})") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise NeumoursError(f"{path}: cannot resume, the checkpoint manifest is malformed ({problem})")
    return manifest


def _state_problem(state) -> str | None:
    """What is wrong with a decoded state (None: the entries ``--resume`` reads have the types it needs)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, expected a mapping"
    checks = {"step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "best": number,
              # the device sampler's generator (a run of a version that drew points with numpy has none)
              "sampler": lambda v: isinstance(v, dict) and v.get("generator") == "philox4x32-10"
              and isinstance(v.get("seed"), int) and not isinstance(v.get("seed"), bool),
              "optimizers": lambda v: isinstance(v, list) and all(isinstance(o, dict) for o in v),
              "rows": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)}
    for key, ok in checks.items():
        if key not in state or not ok(state[key]):
            return f"has no usable {key!r} entry"

    def swaps(v) -> bool:  # at most one case swap per step (the pool replays them when it is rebuilt)
        n = v.get("refreshes", 0) if isinstance(v, dict) else None
        return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= state["step"]

    optional = {"pool": swaps, "best_step": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
                "augment": lambda v: v is None or isinstance(v, dict),
                "data": lambda v: v is None or isinstance(v, dict)}
    for key, ok in optional.items():
        if key in state and not ok(state[key]):
            return f"has an unusable {key!r} entry"
    return None


def _load_state(folder: Path) -> dict:
    """The state of a step folder (safetensors + JSON; ``torch.load(weights_only=True)`` for a state.pt)."""
    from safetensors.torch import load as load_tensors

    from neumours.input_files import read_input_bytes
    from neumours.train.state_files import decode

    path = folder / STATE_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        # Read whole, not memory-mapped: a mapping would keep the run's file (and its file system) in use
        # for as long as any optimiser state tensor lives.
        tensors = load_tensors(read_input_bytes(folder / STATE_TENSORS, "checkpoint state"))
        state = decode(data, tensors)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file (hash-checked: not one we wrote)
        raise NeumoursError(f"{path}: cannot resume from it ({_first_line(exc)})") from None
    problem = _state_problem(state)
    if problem is not None:
        raise NeumoursError(f"{path}: cannot resume from it (it {problem})")
    return state


def _load_old_state(path: Path) -> dict:
    """A state.pt of the earlier formats, unpickled with torch's restricted loader (tensors and plain values)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for anything beyond tensors and plain values
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            raise NeumoursError(f"{path}: cannot resume: the file holds objects other than tensors and plain "
                                "values, which are never unpickled (a run written before the safe checkpoint "
                                "format, or a tampered file)") from None
        raise NeumoursError(f"{path}: cannot resume from it ({_first_line(exc)})") from None
    problem = _state_problem(state)
    if problem is not None:
        raise NeumoursError(f"{path}: cannot resume from it (it {problem})")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


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
    state = _load_state(folder) if STATE_JSON in manifest["files"] else _load_old_state(folder / OLD_STATE)
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
    state = _load_old_state(run_dir / LEGACY_STATE)
    weights_step = _weights_step(run_dir / LAST)
    if weights_step != int(state["step"]):
        raise NeumoursError(f"{run_dir}: cannot resume: {LAST} (step {weights_step}) and {LEGACY_STATE} (step "
                            f"{state['step']}) are from different checkpoints (a crash between their writes); "
                            "start a new run or restore both files")
    return Checkpoint(int(state["step"]), run_dir / LAST, state, None)


def data_record(data, train_refs, val_refs) -> dict:
    """What a checkpoint records of the run's data: where it was, the case ids of both splits in order,
    and :func:`neumours.data.case.headers_sha256` over all of them."""
    from neumours.data.case import headers_sha256

    return {"data": str(data), "train": [r.case_id for r in train_refs], "val": [r.case_id for r in val_refs],
            "headers_sha256": headers_sha256([*train_refs, *val_refs])}


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:3])
    return shown + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def check_same_data(run_dir: str | os.PathLike, recorded, current: dict) -> None:
    """Refuse to resume a run on data other than its own (:func:`data_record` of both).

    ``recorded`` None (a run written before runs recorded their data) is accepted.

    Raises:
        NeumoursError: one line naming the run and the data, and what differs: case ids
            (some missing or new), the validation split, or the headers of the same cases.
    """
    if recorded is None:
        return
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), list) for k in ("train", "val")):
        raise NeumoursError(f"{run_dir}: cannot resume: the checkpoint's record of the run's data is malformed")
    then, now = set(recorded["train"]) | set(recorded["val"]), set(current["train"]) | set(current["val"])
    if then != now:
        missing, new = sorted(then - now, key=str), sorted(now - then, key=str)
        what = "; ".join(([f"{len(missing)} of the run's cases are missing ({_ids(missing)})"] if missing else [])
                         + ([f"{len(new)} cases are new ({_ids(new)})"] if new else []))
    elif recorded["val"] != current["val"] or recorded["train"] != current["train"]:
        what = (f"the validation split differs (the run validated on {_ids(list(map(str, recorded['val'])))}, "
                f"this split on {_ids(current['val'])}; a different --seed or val_fraction?)")
    elif recorded.get("headers_sha256") != current["headers_sha256"]:
        what = "the cases have the run's ids but other NIfTI headers (other grids, spacings or data types)"
    else:
        return
    raise NeumoursError(f"{current['data']}: is not the data run {run_dir} was trained on "
                        f"({str(recorded.get('data'))[:200]}): {what}; resume with the run's data, or add "
                        "--resume-new-data to continue on this data with a new best")


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
    try:
        data = source.read_bytes()
    except OSError as exc:  # a manifest naming a step folder that is gone
        raise NeumoursError(f"{source}: cannot resume: this file of the committed checkpoint cannot be read "
                            f"({exc.strerror or exc})") from None
    atomic_write_bytes(target, data)


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
        data, tensors = encode(state)
        atomic_write_bytes(tmp / STATE_TENSORS, save_tensors(tensors, metadata={"format": STATE_FORMAT}))
        atomic_write_text(tmp / STATE_JSON, json.dumps(data, allow_nan=False) + "\n")
        atomic_write_text(tmp / METRICS, metrics_csv)
        files = {name: sha256(tmp / name) for name in (WEIGHTS, STATE_TENSORS, STATE_JSON, METRICS)}
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
    if best_entry is None:  # no best yet (or none since --resume-new-data): no copy of an earlier one
        (run_dir / BEST).unlink(missing_ok=True)
    _prune(run_dir, {manifest["folder"]} | ({best_entry["folder"]} if best_entry else set()))
    (run_dir / LEGACY_STATE).unlink(missing_ok=True)  # a resumed run of the earlier format: now superseded
    return manifest


__all__ = ["BEST", "LAST", "MANIFEST", "Checkpoint", "check_same_data", "commit", "data_record", "is_run", "load",
           "never_committed", "recover", "remove_run", "resumable"]
