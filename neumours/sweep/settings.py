"""A sweep's settings, saved in its folder so that ``--resume SWEEP`` needs nothing else.

``SWEEP/sweep.json`` (the options), ``SWEEP/space.toml`` (a copy of the search
space), ``SWEEP/base_config.toml`` (the configuration the swept values are
applied to: preset, ``--config`` and flags resolved), ``SWEEP/folds.json`` and
``SWEEP/configurations.json`` (every configuration a grid or random search runs,
fixed at the first launch: ``--resume`` runs those no trial has taken yet).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, dataclass
from pathlib import Path

from neumours import strict_json
from neumours.atomic import atomic_write_text
from neumours.errors import NeumoursError
from neumours.sweep.folds import Fold, load_folds, save_folds
from neumours.schema import Boolean, Choice, Number, setting, validate
from neumours.sweep.space import SEARCHES, SearchSpace, load_space
from neumours.train.config import TrainConfig, load_toml, save_toml

SETTINGS = "sweep.json"
SPACE = "space.toml"
BASE_CONFIG = "base_config.toml"
FOLDS = "folds.json"
CONFIGURATIONS = "configurations.json"
TUNE_DIR = "tune"  # Ray Tune's experiment folders inside SWEEP (one per launch; written by Tune, never read back)


@dataclass(frozen=True)
class SweepSettings:
    """The options of ``neumours sweep`` that define the experiment (resources may change on resume).

    ``asha_grace``: steps every trial trains before ASHA may stop it;
    ``asha_reduction``: ASHA keeps 1 in this many trials at each rung.
    """

    data: str
    folds: int = setting(MISSING, Number(ge=2, le=1000, integer=True))
    search: str = setting("grid", Choice(SEARCHES))
    samples: int = setting(1, Number(ge=1, le=1_000_000, integer=True))
    asha: bool = setting(False, Boolean())
    asha_grace: int = setting(0, Number(ge=0, integer=True))
    asha_reduction: int = setting(3, Number(ge=2, le=1000, integer=True))
    trials_per_gpu: int = setting(1, Number(ge=1, le=1024, integer=True))
    cpus_per_trial: float = setting(1.0, Number(gt=0, le=4096))
    device: str = "auto"

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Sweep:
    """Everything a sweep folder holds before any trial runs."""

    out: Path
    settings: SweepSettings
    space: SearchSpace
    base: TrainConfig
    folds: list[Fold]


def save_sweep(sweep: Sweep, space_file: str | Path) -> None:
    out = sweep.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPACE, Path(space_file).read_text(encoding="utf-8"))
    save_toml(sweep.base, out / BASE_CONFIG)
    save_folds(sweep.folds, out / FOLDS)
    plan = planned_configurations(sweep)
    if plan is not None:
        atomic_write_text(out / CONFIGURATIONS, strict_json.dumps(plan, indent=1) + "\n")
    atomic_write_text(out / SETTINGS, strict_json.dumps(dataclasses.asdict(sweep.settings), indent=1) + "\n")  # last: marks a complete folder


def planned_configurations(sweep: Sweep) -> list[dict] | None:
    """The configurations of a grid or random search (None for optuna), from the space and the seed."""
    return sweep.space.configurations(sweep.settings.search, sweep.settings.samples, sweep.base.schedule.seed)


def load_configurations(sweep: Sweep) -> list[dict] | None:
    """``configurations.json`` of the sweep folder; a folder written before it existed: :func:`planned_configurations`.

    Raises:
        NeumoursError: the file is not a list of configurations nested like ``config.toml``.
    """
    path = sweep.out / CONFIGURATIONS
    if not path.is_file():
        return planned_configurations(sweep)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NeumoursError(f"{path}: cannot read the sweep's configurations ({exc})") from None
    if not isinstance(plan, list) or not all(isinstance(c, dict) and all(isinstance(v, dict) for v in c.values())
                                             for c in plan):
        raise NeumoursError(f"{path}: not a list of configurations ({{section: {{key: value}}}} each)")
    return plan


def load_sweep(out: str | Path) -> Sweep:
    """Read a sweep folder written by :func:`save_sweep` (``--resume``)."""
    out = Path(out)
    path = out / SETTINGS
    if not path.is_file():
        raise NeumoursError(f"{out}: not a sweep folder ({SETTINGS} is missing)")
    try:
        settings = SweepSettings(**json.loads(path.read_text(encoding="utf-8")))
        folds = load_folds(out / FOLDS)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise NeumoursError(f"{path}: cannot read the sweep's settings ({exc})") from None
    base = load_toml(out / BASE_CONFIG, TrainConfig())
    return Sweep(out, settings, load_space(out / SPACE, base), base, folds)
