"""One sweep trial: one configuration trained on every fold, reported to Ray Tune after each validation.

Why one trial per configuration (and not one per fold): Tune's search
algorithms and its ASHA scheduler judge *configurations*. With one trial per
fold, ASHA would stop single folds of a configuration (leaving its
cross-validated mean half-measured), and a searcher such as Optuna would be
told each fold's score as if it were a separate configuration. So a trial holds
one :class:`~neumours.train.trainer.Trainer` per fold and advances them in
lockstep, ``val_every`` steps at a time; after each round it reports the mean
and standard deviation over folds of the validation Dice at that step, which is
what ASHA compares across trials. The price is memory: a trial keeps all
``k`` folds' case pools on its device at once (bound them with
``[sampler] pool_bytes``).

Files of a trial, under ``SWEEP/trials/<trial id>/``:

- ``fold-<i>/``: a normal run folder (``config.toml``, ``metrics.csv``,
  checkpoints, ``checkpoint.json``) plus ``split.json`` (its case ids), so
  ``neumours plot`` and ``neumours evaluate`` work on it;
- ``trial.json``: the trial's swept values, device kind, the GPU ids Ray gave it, its process id and its
  Tune trial id (not its folder's name when a resume continued it), written when it starts;
- ``result.json``: per-fold final validation Dice, written when every fold has
  finished (a trial that finds it just reports it again and returns);
- ``error.txt``: the error of a failed trial (first line the message, then the
  traceback).

Tune's configuration of a trial is either the swept values themselves (Optuna
proposes them) or a *point* of the sweep's plan, ``{POINT: {"config": swept,
"folder": name or None}}`` (:mod:`neumours.sweep.runner`): ``folder`` names the
folder of an interrupted trial that ``--resume`` continues, in a new Tune
experiment under a new Tune trial id. Such a trial resumes every fold from its
run folder (``Trainer(resume=True)``), so no finished step is trained twice.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neumours import strict_json
from neumours.atomic import atomic_write_text
from neumours.conventions import CLASS_KEYS
from neumours.errors import NeumoursError
from neumours.sweep.folds import Fold, fold_cases
from neumours.sweep.space import apply
from neumours.train.config import TrainConfig

TRIALS = "trials"
TRIAL_INFO = "trial.json"
TRIAL_RESULT = "result.json"
TRIAL_ERROR = "error.txt"
VAL_KEYS = tuple(f"val_dice_{k}" for k in CLASS_KEYS) + ("val_dice_mean",)
POINT = "sweep_point"  # Tune's config key of a planned trial: {"config": swept values, "folder": trial folder or None}
METRIC = "val_dice_mean"  # what Tune optimises and ASHA compares: the mean over folds of this fold metric


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent to the trials once by ``tune.with_parameters``).

    Attributes:
        data: dataset folder (the same path on every node of a cluster).
        out: the sweep folder.
        base: the configuration the swept values are applied to.
        folds: ``(train ids, val ids)`` per fold.
        device: device kind for ``NEUMOURS_DEVICE`` in the trial (``cpu``, ``cuda``, ...).
    """

    data: str
    out: str
    base: TrainConfig
    folds: tuple[Fold, ...]
    device: str


def trial_dir(out: str | Path, trial_id: str) -> Path:
    return Path(out) / TRIALS / trial_id


def point(config: dict, folder: str | None = None) -> dict:
    """Tune's configuration of a planned trial: the swept values, and the folder it continues (None: a new one)."""
    return {POINT: {"config": config, "folder": folder}}


def unpack(config: dict, trial_id: str) -> tuple[dict, str]:
    """(swept values, trial folder name) of Tune's configuration of a trial whose Tune id is ``trial_id``."""
    if POINT in config:
        planned = config[POINT]
        return planned["config"], planned["folder"] or trial_id
    return config, trial_id


def fold_scores(rows: list[dict]) -> dict[str, float]:
    """Mean over folds of each validation key, plus ``val_dice_sd`` (sample sd of the fold means)."""
    scores = {k: float(np.mean([r[k] for r in rows])) for k in VAL_KEYS}
    means = [r["val_dice_mean"] for r in rows]
    scores["val_dice_sd"] = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
    return scores


def _next_boundary(step: int, schedule) -> int:
    """The next step at which every fold validates: a multiple of ``val_every``, or the last step."""
    return min(schedule.steps, (step // schedule.val_every + 1) * schedule.val_every)


def _validation_row(trainer, step: int) -> dict:
    for row in reversed(trainer.rows):
        if row["step"] == step and "val_dice_mean" in row:
            return {k: float(row[k]) for k in VAL_KEYS}
    raise NeumoursError(f"{trainer.run_dir}: no validation at step {step} in metrics.csv")


def _open_fold(setup: TrialSetup, config: TrainConfig, index: int, run_dir: Path, device):
    """A fold's Trainer: resumed from its run folder when one was left behind, else new."""
    from neumours.train import checkpoints
    from neumours.train.trainer import Trainer

    train_refs, val_refs = fold_cases(setup.data, setup.folds[index])
    if checkpoints.resumable(run_dir):  # a committed checkpoint: continue from it
        try:
            return Trainer(setup.data, run_dir, config, device, resume=True, progress=False,
                           cases=(train_refs, val_refs))
        except NeumoursError:  # a checkpoint that fails its checks: train this fold again from the start
            shutil.rmtree(run_dir)
    # A fold killed before its first checkpoint is a run folder too: replace it (the trial starts it again).
    trainer = Trainer(setup.data, run_dir, config, device, progress=False, cases=(train_refs, val_refs),
                      overwrite=checkpoints.is_run(run_dir))
    split = {"train": list(setup.folds[index][0]), "val": list(setup.folds[index][1])}
    atomic_write_text(run_dir / "split.json", strict_json.dumps(split, indent=1) + "\n")
    return trainer


def train_folds(setup: TrialSetup, swept: dict, folder: Path, report) -> dict:
    """Train one configuration on every fold in lockstep; ``report(metrics)`` after each round.

    Returns the final per-fold validation rows and their mean (what ``result.json`` holds).
    """
    from neumours.device import get_device

    config = apply(setup.base, swept, source=f"trial {folder.name}")
    device = get_device(setup.device, announce=False)
    trainers = []
    try:
        for i in range(len(setup.folds)):
            trainers.append(_open_fold(setup, config, i, folder / f"fold-{i}", device))
        schedule = config.schedule
        while True:
            boundary = _next_boundary(min(t.step for t in trainers), schedule)
            for trainer in trainers:
                if trainer.step < boundary:
                    trainer.run(stop_after=boundary - trainer.step)
            rows = [_validation_row(t, boundary) for t in trainers]
            metrics = {"step": boundary, **fold_scores(rows)}
            if boundary >= schedule.steps:
                return {"steps": boundary, "folds": rows, "report": metrics}
            report(metrics)
    finally:
        for trainer in trainers:
            trainer.close()


def run_trial(config: dict, setup: TrialSetup) -> None:
    """The Ray Tune trainable: ``config`` holds the trial's swept values, nested like ``config.toml``
    (or a :func:`point` of them)."""
    import ray
    from ray import tune

    tune_id = tune.get_context().get_trial_id()
    config, trial_id = unpack(config, tune_id)
    folder = trial_dir(setup.out, trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NEUMOURS_DEVICE"] = setup.device  # the library's device choice, inside this trial's process
    done = folder / TRIAL_RESULT
    if done.is_file():  # finished before the driver could record it: report, do not train again
        result = json.loads(done.read_text(encoding="utf-8"))
        tune.report(result["report"])
        return
    # The GPUs Ray gave this trial (its CUDA_VISIBLE_DEVICES): where it ran, for the benchmarks and the curious.
    info = {"trial_id": trial_id, "tune_trial": tune_id, "config": config,
            "gpus": [str(g) for g in ray.get_gpu_ids()], "device": setup.device, "pid": os.getpid()}
    atomic_write_text(folder / TRIAL_INFO, strict_json.dumps(info, indent=1) + "\n")
    try:
        result = train_folds(setup, config, folder, tune.report)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, NeumoursError):
            message = f"{type(exc).__name__}: {message}"
        atomic_write_text(folder / TRIAL_ERROR, message + "\n\n" + traceback.format_exc())
        raise
    atomic_write_text(done, strict_json.dumps(result, indent=1) + "\n")  # before the last report: Tune may end us there
    tune.report(result["report"])
