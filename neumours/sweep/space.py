"""The search space of a sweep: ``SPACE.toml`` parsed, checked against the training configuration.

``SPACE.toml`` uses the sections and keys of a run's ``config.toml``; every key
holds one of::

    [optimizer]
    lr = { loguniform = [3e-4, 3e-3] }    # log-uniform in [lo, hi]
    name = { choice = ["adamw", "muon"] } # one of the values, drawn
    [network]
    num_freqs = { grid = [32, 64, 128] }  # every value, crossed with the other grid keys
    [sampler]
    foreground_ratio = { uniform = [0.05, 0.3] }

Unknown sections or keys, malformed entries and values outside what their key allows
(``neumours.schema``: a string learning rate, ``uniform = [0, inf]``, a negative seed) are
errors before anything runs; so is a grid combination, or a corner of the ranges, that
breaks a rule between keys (``lr_final <= lr``). A trial that sets ``[optimizer] lr``
without ``lr_final`` scales ``lr_final`` with it (the base's ratio lr_final / lr), so
sweeping the learning rate keeps the schedule's shape and never makes it rise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neumours import strict_json
from neumours.errors import NeumoursError
from neumours.schema import SettingError, check_of, check_table
from neumours.toml_files import read_toml
from neumours.train.config import TrainConfig

KINDS = ("grid", "choice", "uniform", "loguniform")
SEARCHES = ("grid", "random", "optuna")


@dataclass(frozen=True)
class Dimension:
    """One swept key: ``section.key`` and how its values are chosen.

    ``values`` for grid/choice (TOML arrays become tuples, as in ``config.toml``),
    ``(lo, hi)`` for uniform/loguniform; ``integer`` when the key is an int
    field (then uniform/loguniform draw integers in [lo, hi]).
    """

    section: str
    key: str
    kind: str
    values: tuple
    integer: bool = False

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


@dataclass(frozen=True)
class SearchSpace:
    """The swept keys of a sweep, in file order."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def check_search(self, search: str) -> None:
        """``grid`` crosses lists only: a choice or a range needs ``random`` or ``optuna``."""
        if search not in SEARCHES:
            raise NeumoursError(f"--search {search!r}: choose one of {', '.join(SEARCHES)}")
        if search == "grid":
            drawn = [f"{d.name} ({d.kind})" for d in self.dimensions if d.kind != "grid"]
            if drawn:
                raise NeumoursError(f"--search grid enumerates {{ grid = [...] }} keys only; "
                                    f"{', '.join(drawn)} need --search random or optuna")

    def num_trials(self, search: str, samples: int) -> int:
        """Trials the sweep runs: the grid's size, or ``samples`` drawn configurations."""
        if search == "grid":
            return math.prod(len(d.values) for d in self.dimensions)
        return samples

    def tune_space(self, search: str) -> dict[str, dict[str, Any]]:
        """Ray Tune's ``param_space``, nested like ``config.toml``.

        ``grid``: ``tune.grid_search`` per key (Tune crosses them). ``random`` and
        ``optuna``: a grid list is drawn like a choice.
        """
        from ray import tune

        space: dict[str, dict[str, Any]] = {}
        for d in self.dimensions:
            if search == "grid":
                domain = tune.grid_search(list(d.values))
            elif d.kind in ("grid", "choice"):
                domain = tune.choice(list(d.values))
            elif d.integer:
                lo, hi = d.values
                domain = (tune.randint if d.kind == "uniform" else tune.lograndint)(int(lo), int(hi) + 1)
            else:
                domain = (tune.uniform if d.kind == "uniform" else tune.loguniform)(*d.values)
            space.setdefault(d.section, {})[d.key] = domain
        return space


    def configurations(self, search: str, samples: int, seed: int) -> list[dict[str, dict[str, Any]]] | None:
        """Every configuration the sweep runs, nested like ``config.toml``; None for ``optuna`` (proposed as it goes).

        ``grid``: every combination (the first key varies slowest). ``random``: ``samples`` draws from a
        generator seeded by ``seed`` (a grid list drawn like a choice; integer keys draw integers), so the
        same settings give the same configurations: a resumed sweep knows which it has not run yet.
        """
        if search == "grid":
            combinations = itertools.product(*[[(d, v) for v in d.values] for d in self.dimensions])
            return [_nested(combination) for combination in combinations]
        if search != "random":
            return None
        rng = np.random.default_rng(seed)
        return [_nested([(d, _draw(d, rng)) for d in self.dimensions]) for _ in range(samples)]


def _draw(d: Dimension, rng) -> Any:
    """One value of ``d``, drawn (as Tune's choice, uniform, loguniform, randint and lograndint would)."""
    if d.kind in ("grid", "choice"):
        return d.values[int(rng.integers(len(d.values)))]
    lo, hi = d.values
    if d.integer:
        if d.kind == "uniform":
            return int(rng.integers(int(lo), int(hi) + 1))
        return min(int(math.exp(rng.uniform(math.log(lo), math.log(int(hi) + 1)))), int(hi))
    if d.kind == "uniform":
        return float(rng.uniform(lo, hi))
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _nested(pairs) -> dict[str, dict[str, Any]]:
    """``{section: {key: value}}`` of (dimension, value) pairs, JSON-shaped (tuples become lists)."""
    nested: dict[str, dict[str, Any]] = {}
    for d, v in pairs:
        nested.setdefault(d.section, {})[d.key] = list(v) if isinstance(v, tuple) else v
    return nested


def config_key(config: dict) -> str:
    """A configuration as one comparable string: the same for a trial's ``trial.json`` and the plan's entry."""
    return strict_json.dumps(config, sort_keys=True)


def flat_values(config: dict[str, dict[str, Any]], space: SearchSpace) -> dict[str, Any]:
    """``{"optimizer.lr": 0.001, ...}`` of a trial's nested configuration, in space order."""
    return {d.name: config.get(d.section, {}).get(d.key) for d in space.dimensions}


#: Grid combinations (and range corners) checked against the cross-key rules before a sweep runs.
MAX_CHECKED_COMBINATIONS = 4096


def apply(base: TrainConfig, config: dict[str, dict[str, Any]], source: str = "trial") -> TrainConfig:
    """``base`` with a trial's swept values (nested like ``config.toml``).

    A trial that sets ``[optimizer] lr`` but not ``lr_final`` gets ``lr_final = lr * base.lr_final / base.lr``:
    the schedule keeps the base's shape (and never rises) whatever learning rate is swept.
    """
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict) and "lr" in optimizer and "lr_final" not in optimizer:
        lr = optimizer["lr"]
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr):
            ratio = base.optimizer.lr_final / base.optimizer.lr
            config = {**config, "optimizer": {**optimizer, "lr_final": lr * ratio}}
    return TrainConfig.from_dict(config, base, source=source)


def _entry(section: str, key: str, spec: Any, default: Any, source: str, owner) -> Dimension:
    where = f"{source}: [{section}] {key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise NeumoursError(f"{where}: expected one of {{ grid = [...] }}, {{ choice = [...] }}, "
                            f"{{ uniform = [lo, hi] }} or {{ loguniform = [lo, hi] }}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise NeumoursError(f"{where}: {kind} needs a non-empty list")
    values = tuple(tuple(v) if isinstance(v, list) else v for v in values)
    integer = isinstance(default, int) and not isinstance(default, bool)
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise NeumoursError(f"{where}: {kind} needs two numbers [lo, hi]")
        lo, hi = values
        if not lo < hi:
            raise NeumoursError(f"{where}: {kind} needs lo < hi, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise NeumoursError(f"{where}: loguniform needs lo > 0, got {lo}")
        if not isinstance(default, (int, float)) or isinstance(default, bool):
            raise NeumoursError(f"{where}: {kind} ranges need a numeric key (its value is {default!r})")
    elif len(set(map(repr, values))) != len(values):
        raise NeumoursError(f"{where}: {kind} lists a value twice")
    check = check_of(owner, key)
    if check is not None:
        names = ("lo", "hi") if kind in ("uniform", "loguniform") else [f"value {i + 1}" for i in range(len(values))]
        try:
            values = tuple(check.coerce(v, f"{kind} {name}") for v, name in zip(values, names))
        except SettingError as exc:
            raise NeumoursError(f"{where}: {exc}") from None
    return Dimension(section, key, kind, values, integer)


def _check_combinations(dimensions: list[Dimension], base: TrainConfig, source: str) -> None:
    """Every grid combination, with each range at its two ends, must make a valid configuration:
    the rules between keys (``lr_final <= lr``, one class weight per class, ...) hold before a
    trial runs. Beyond :data:`MAX_CHECKED_COMBINATIONS` only each value on its own is applied."""
    options = [[(d, v) for v in d.values] for d in dimensions]
    if math.prod(len(o) for o in options) > MAX_CHECKED_COMBINATIONS:
        combinations = [[choice] for o in options for choice in o]
    else:
        combinations = itertools.product(*options)
    for combination in combinations:
        nested: dict[str, dict[str, Any]] = {}
        for d, v in combination:
            nested.setdefault(d.section, {})[d.key] = v
        try:
            apply(base, nested, source="")
        except SettingError as exc:
            shown = ", ".join(f"{d.name} = {v!r}" for d, v in combination)
            problem = str(exc).removeprefix(": ")
            raise NeumoursError(f"{source}: the combination {shown} is not a valid configuration: {problem}") from None


def parse_space(data: dict, source: str = "space", base: TrainConfig | None = None) -> SearchSpace:
    """A :class:`SearchSpace` from the parsed TOML; every section and key must be a training setting,
    every value one its key allows, and (with ``base``, the configuration the trials start from)
    every grid combination and range corner a valid configuration."""
    defaults = TrainConfig()
    check_table(TrainConfig, data, source)
    dimensions = []
    for section, entries in data.items():
        owner = getattr(defaults, section)
        check_table(type(owner), entries, source, section)
        for key, spec in entries.items():
            dimensions.append(_entry(section, key, spec, getattr(owner, key), source, type(owner)))
    if not dimensions:
        raise NeumoursError(f"{source}: no swept keys (e.g. [optimizer] lr = {{ grid = [1e-3, 3e-3] }})")
    if base is not None:
        _check_combinations(dimensions, base, source)
    return SearchSpace(tuple(dimensions))


def load_space(path: str | Path, base: TrainConfig | None = None) -> SearchSpace:
    """Read and check ``SPACE.toml`` (against ``base``, the trials' starting configuration, when given)."""
    return parse_space(read_toml(path, "search space file"), source=str(path), base=base)
