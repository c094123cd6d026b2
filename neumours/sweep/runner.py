"""Run (or resume) a sweep on Ray Tune and write its tables.

:func:`new_sweep` checks everything a sweep needs before Ray starts (output
folder, search space, configuration, folds), and
:func:`neumours.sweep.settings.save_sweep` then writes the sweep folder;
:func:`start_ray` starts a local Ray instance or joins a cluster;
:func:`run_sweep` builds a new ``Tuner`` for the trials left and writes
``results.csv``, ``summary.md``, ``best_config.toml`` and ``sweep.png``.

Resume reads only the sweep's own plain files, never Tune's experiment state
(Tune pickles its searcher, scheduler and trials there: unpickling them from a
folder would run whatever code a planted file holds). :func:`plan_launch` reads
the trial folders (:func:`~neumours.sweep.results.read_trials`): trials recorded
as ended (finished, stopped early or failed: a failure is final, it is in the
table) are not run again, interrupted ones continue in their own folders (their
folds resume from their checkpoints), and the configurations of the plan
(``configurations.json``) that no trial has taken yet run as new trials. Each
launch is a new Tune experiment, ``SWEEP/tune/launch-<n>``. A trial that
finished after the driver last recorded it has its ``result.json``: it counts
as finished.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from neumours.errors import NeumoursError
from neumours.locks import LOCK_NAME
from neumours.outputs import check_output_folder
from neumours.sweep.folds import make_folds
from neumours.sweep.resources import Resources
from neumours.sweep.results import read_trials, write_results_csv, write_summary
from neumours.sweep.settings import TUNE_DIR, Sweep, SweepSettings, load_configurations, load_sweep
from neumours.sweep.space import config_key, load_space
from neumours.sweep.trainable import METRIC, POINT, TrialSetup, point, run_trial, trial_dir

INSTALL = "Ray Tune is not installed: pip install 'neumours[sweep]'"
OPTUNA = "--search optuna needs Optuna: pip install optuna"


def require_ray() -> None:
    """One line telling how to install the ``sweep`` extra, when Ray Tune is missing."""
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        raise NeumoursError(INSTALL) from None


def require_optuna() -> None:
    """``--search optuna`` needs Optuna (not part of the sweep extra): one line saying how to install it."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise NeumoursError(OPTUNA) from None


def new_sweep(out: str | Path, space_file: str | Path, base, settings: SweepSettings) -> Sweep:
    """Check the inputs of a new sweep; nothing is written (:func:`save_sweep` does that, once Ray can start).

    Raises:
        NeumoursError: ``out`` unwritable or not empty, a bad space or option, fewer labelled cases than folds.
    """
    out = check_output_folder(out, "sweep folder")
    if out.is_dir() and any(entry.name != LOCK_NAME for entry in out.iterdir()):  # the lock of this sweep aside
        hint = " (continue it with --resume)" if (out / "sweep.json").is_file() else ""
        raise NeumoursError(f"{out}: the sweep folder is not empty{hint}")
    space = load_space(space_file, base)
    space.check_search(settings.search)
    if settings.search == "optuna":
        require_optuna()
    if settings.samples < 1:
        raise NeumoursError(f"--samples {settings.samples}: must be at least 1")
    if settings.asha and not 0 < settings.asha_grace <= base.schedule.steps:
        raise NeumoursError(f"--asha-grace {settings.asha_grace}: must be between 1 and --steps "
                            f"({base.schedule.steps})")
    if settings.asha and settings.asha_reduction < 2:
        raise NeumoursError(f"--asha-reduction {settings.asha_reduction}: must be at least 2")
    folds = make_folds(settings.data, settings.folds, base.schedule.seed)
    return Sweep(out, settings, space, base, folds)


def resume(out: str | Path) -> Sweep:
    """The sweep saved in ``out`` (``--resume``)."""
    return load_sweep(check_output_folder(out, "sweep folder"))


def trial_device(settings: SweepSettings, resources: Resources) -> str:
    """The device kind of every trial: ``NEUMOURS_DEVICE``, else ``--device``; ``auto`` means cuda
    when trials get a GPU share, else the CPU device."""
    kind = os.environ.get("NEUMOURS_DEVICE", "").strip().lower() or settings.device
    if kind == "auto":
        return "cuda" if resources.gpu_per_trial > 0 else "cpu"
    return kind


def start_ray(address: str | None, cpus: int | None, gpus: int) -> bool:
    """Start a local Ray instance with ``cpus`` CPUs (None: all) and ``gpus`` GPUs, or join ``address``.

    Returns whether this call started Ray (False: already initialised in this process, e.g. by a test).
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)  # trial output stays in Ray's session logs
    try:
        if address and address.startswith("ray://"):
            ray.init(address=address, logging_level=logging.ERROR)
        elif address:
            ray.init(address=address, **quiet)
        else:
            # "local": a new instance of our own even when another Ray runs on this machine; Ray reads
            # CUDA_VISIBLE_DEVICES for the ids of the ``gpus`` GPUs and gives each trial its own.
            ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeumoursError(f"cannot start or join {where} ({reason})") from None
    return True


def cluster_gpus() -> int:
    """GPUs of the Ray cluster this process is connected to."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def _searcher(sweep: Sweep, launch: int):
    """A new Optuna searcher (seeded by the seed and the launch, so a resume does not propose the first
    launch's configurations again)."""
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its study banner would break the progress bar
        return OptunaSearch(seed=sweep.base.schedule.seed + launch - 1)
    except (ImportError, AssertionError):
        raise NeumoursError(OPTUNA) from None


def _scheduler(sweep: Sweep):
    """Tune's ASHA scheduler with the sweep's settings (a new one per launch), or None."""
    from ray.tune.schedulers import ASHAScheduler

    s = sweep.settings
    if not s.asha:
        return None
    return ASHAScheduler(time_attr="step", max_t=sweep.base.schedule.steps, grace_period=s.asha_grace,
                         reduction_factor=s.asha_reduction)


@dataclass(frozen=True)
class Launch:
    """What one launch of the driver runs.

    ``points``: Tune configurations (:func:`~neumours.sweep.trainable.point`) of the interrupted trials it
    continues and of the planned configurations no trial has taken; ``proposed``: new trials Optuna
    proposes after those; ``ended``: folder names of the trials ended before this launch.
    """

    points: list[dict]
    proposed: int
    ended: set[str]


def plan_launch(sweep: Sweep) -> Launch:
    """Which trials this launch runs, from the sweep folder's own files (no Tune state)."""
    records = read_trials(sweep)
    for r in [r for r in records if r.status == "unfinished" and not r.config]:
        shutil.rmtree(trial_dir(sweep.out, r.trial_id))  # created, killed before its trial.json: nothing in it
        records.remove(r)
    ended = {r.trial_id for r in records if r.status in ("finished", "stopped", "failed")}
    points = [point(r.config, r.trial_id) for r in records if r.status == "unfinished"]
    left = max(sweep.space.num_trials(sweep.settings.search, sweep.settings.samples) - len(records), 0)
    plan = load_configurations(sweep)
    if plan is None:  # optuna: proposes the rest as it goes
        return Launch(points, left, ended)
    taken: dict[str, int] = {}
    for r in records:
        taken[config_key(r.config)] = taken.get(config_key(r.config), 0) + 1
    new = []
    for config in plan:
        key = config_key(config)
        if taken.get(key, 0):
            taken[key] -= 1  # a trial has this configuration (a random search may draw one twice)
        else:
            new.append(point(config))
    return Launch(points + new[:left], 0, ended)


def _launch_number(tune_dir: Path) -> int:
    """1 + the launches before (``tune/launch-<n>`` folders): each launch has a new Tune experiment."""
    numbers = [int(p.name.split("-")[1]) for p in tune_dir.glob("launch-*") if p.name.split("-")[1].isdigit()]
    return max(numbers, default=0) + 1


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished (or interrupted) run of the driver wrote."""

    results: Path
    summary: Path
    figure: Path | None
    best: object | None  # the best finished TrialRecord
    counts: dict[str, int]


def write_tables(sweep: Sweep) -> SweepOutcome:
    """``results.csv``, ``summary.md``, ``best_config.toml`` and ``sweep.png`` from the trial folders."""
    from neumours.sweep.figure import plot_sweep

    records = read_trials(sweep)
    results = write_results_csv(sweep, records)
    summary, best = write_summary(sweep, records)
    figure = plot_sweep(sweep, records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return SweepOutcome(results, summary, figure, best, counts)


def run_sweep(sweep: Sweep, resources: Resources, quiet: bool = False) -> SweepOutcome:
    """Run the sweep's trials on the Ray instance this process is connected to; then write the tables.

    A resumed sweep (:func:`plan_launch`) runs in a new Tune experiment: Tune's saved state is never read.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from neumours.sweep import progress

    setup = TrialSetup(str(Path(sweep.settings.data).resolve()), str(sweep.out.resolve()), sweep.base,
                       tuple(sweep.folds), trial_device(sweep.settings, resources))
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources.per_trial())
    tune_dir = sweep.out.resolve() / TUNE_DIR
    total = sweep.space.num_trials(sweep.settings.search, sweep.settings.samples)
    launch = plan_launch(sweep)
    progress.configure(quiet, launch.ended)
    # Tune's newer console output prints its own banner and tables even at verbose=0; the older one is silent
    # there, leaving the terminal to progress.SweepProgress.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    number = _launch_number(tune_dir)
    runs = []  # (param_space, search algorithm, samples) of each Tune experiment of this launch
    if launch.points:  # the planned trials, one Tune trial per point, in order
        runs.append(({POINT: tune.grid_search([p[POINT] for p in launch.points])}, BasicVariantGenerator(), 1))
    if launch.proposed:  # then Optuna's
        runs.append((sweep.space.tune_space(sweep.settings.search), _searcher(sweep, number), launch.proposed))
    for index, (space, search, samples) in enumerate(runs):
        name = f"launch-{number}" + (f"-{index + 1}" if len(runs) > 1 else "")
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", search_alg=search, scheduler=_scheduler(sweep), num_samples=samples,
                # Reused trial processes keep their device and compiled kernels (each later trial runs
                # in a new thread there: neumours.device.get_device makes the CUDA context current).
                trial_dirname_creator=progress.trial_dirname, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=str(tune_dir), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[progress.SweepProgress(sweep.out.resolve(), total, len(sweep.folds),
                                                  sweep.space.names)]))
        tuner.fit()
    return write_tables(sweep)
