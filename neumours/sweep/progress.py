"""The sweep's terminal progress and the driver's record of how Tune ended each trial.

A Ray Tune callback (it runs in the driver): a progress bar over trials whose
postfix shows the running trials' steps and the best score so far, and one line
per trial as it finishes, fails or is stopped early. Tune's own table output
is switched off (``verbose=0``) because its column widths follow the trial
names, not the terminal.

It also writes ``SWEEP/trials/<id>/status.json`` when Tune ends a trial: the
only record of an ASHA stop (the trial is ended from outside) or of a trial
whose process died without writing its own ``error.txt``.

A trial's folder is named by its Tune id, or (a trial that ``--resume``
continues) by the folder its configuration names (:func:`~neumours.sweep.trainable.unpack`).
Tune pickles its callbacks into its experiment state; that state is never read
back (a resume starts a new Tune experiment), and output options are read from
:func:`configure` of the process that runs the sweep.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ray import tune
from tqdm import tqdm

from neumours import strict_json
from neumours.estimates import long_work_note
from neumours.atomic import atomic_write_text
from neumours.sweep.results import STATUS, r_score, read_trial
from neumours.sweep.trainable import TRIAL_ERROR, TRIAL_RESULT, trial_dir, unpack

_OUTPUT: dict = {"quiet": False, "ended": set()}


def configure(quiet: bool, ended: set[str] | None = None) -> None:
    """Output of this process's sweep: ``quiet`` (no bar, no lines), ``ended`` trials ended before a resume."""
    _OUTPUT.update(quiet=quiet, ended=set(ended or ()))


def trial_dirname(trial) -> str:
    """Tune's folder name of a trial (in Tune's own experiment folder): its Tune id."""
    return trial.trial_id


def _swept(trial) -> dict:
    return unpack(trial.config, trial.trial_id)[0]


def _name(trial) -> str:
    """The trial's folder under ``SWEEP/trials``: its Tune id, or the folder of the trial it continues."""
    return unpack(trial.config, trial.trial_id)[1]


def _error_line(folder: Path, trial) -> str:
    """The trial's own one-line error, else the last line of Tune's traceback."""
    if (folder / TRIAL_ERROR).is_file():
        return (folder / TRIAL_ERROR).read_text(encoding="utf-8").splitlines()[0]
    error = trial.get_error()
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1] if lines else "the trial's process ended without a result"


class SweepProgress(tune.Callback):
    """Args: ``out`` the sweep folder, ``total`` trials in the sweep, ``k`` folds, ``names`` swept keys."""

    def __init__(self, out: str | Path, total: int, k: int, names: list[str]):
        self.out, self.total, self.k, self.names = str(out), total, k, names
        self._bar = None
        self._steps: dict[str, int] = {}
        self._best: tuple[float, str] | None = None
        self._started: dict[str, float] = {}  # trial -> time.monotonic() at its start
        self._concurrent = 1  # most trials seen running at once
        self._announced = False

    def __getstate__(self):
        return {"out": self.out, "total": self.total, "k": self.k, "names": self.names}

    def __setstate__(self, state):
        self.__init__(**state)

    # ------------------------------------------------------------------ output
    def setup(self, **info):
        self._bar = tqdm(total=self.total, initial=len(_OUTPUT["ended"]), desc="sweep", unit="trial",
                         disable=_OUTPUT["quiet"], dynamic_ncols=True, file=sys.stderr)

    def _say(self, text: str) -> None:
        if not _OUTPUT["quiet"]:
            (self._bar.write if self._bar is not None else print)(text, file=sys.stderr)

    def _postfix(self) -> None:
        if self._bar is None:
            return
        # Trial numbers alone while the names share their experiment prefix (not so after a resume).
        short = len({t[:-5] for t in self._steps}) <= 1
        running = ", ".join(f"{t[-5:] if short else t}@{s}" for t, s in sorted(self._steps.items()))
        best = f"{self._best[0]:.4f} ({self._best[1]})" if self._best else "–"
        self._bar.set_postfix_str(f"running {running or '–'}; best {best}")

    def _describe(self, trial) -> str:
        flat = {f"{s}.{k}": v for s, keys in _swept(trial).items() if isinstance(keys, dict) for k, v in keys.items()}
        values = " ".join(f"{n}={flat.get(n):.4g}" if isinstance(flat.get(n), float) else f"{n}={flat.get(n)}"
                          for n in self.names)  # drawn floats: 4 digits on the terminal, all in results.csv
        return f"trial {_name(trial)} ({values})"

    # ------------------------------------------------------------------ Tune's events
    def on_trial_start(self, iteration, trials, trial, **info):
        self._steps[_name(trial)] = 0
        self._started[_name(trial)] = time.monotonic()
        self._concurrent = max(self._concurrent, len(self._steps))
        self._postfix()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._steps[_name(trial)] = int(result.get("step", 0))
        self._postfix()

    def _ended(self, trial, status: str, error: str = "") -> None:
        name = _name(trial)
        folder = trial_dir(self.out, name)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / STATUS, strict_json.dumps({"trial_id": name, "status": status,
                                                       "config": _swept(trial),
                                                              "error": error}, indent=1) + "\n")
        self._steps.pop(name, None)
        record = read_trial(folder, self.k)
        if record.scores and record.status == "finished" and \
                (self._best is None or record.scores["val_dice_mean"] > self._best[0]):
            self._best = (record.scores["val_dice_mean"], name)
        if self._bar is not None and name not in _OUTPUT["ended"]:  # not counted twice on a resume
            self._bar.update(1)
            _OUTPUT["ended"].add(name)
        self._postfix()
        self._announce(name, status)
        if status == "failed":
            self._say(f"failed    {self._describe(trial)}: {error}")
        else:
            score = f"Dice {r_score(record)} at step {record.step}" if record.scores else "no validation yet"
            self._say(f"{record.status:9s} {self._describe(trial)}: {score}")

    def _announce(self, name: str, status: str) -> None:
        """After the first trial that finishes: how long the trials still to run will take, when that is long."""
        started = self._started.get(name)
        if self._announced or status != "finished" or started is None:
            return
        self._announced = True
        trial_s = time.monotonic() - started
        left = self.total - len(_OUTPUT["ended"])
        line = long_work_note(f"the sweep ({left} more trial(s), {self._concurrent} at a time)",
                              trial_s * left / self._concurrent, f"measured: {trial_s:.0f} s for trial {name}",
                              "fewer --steps, --folds or trials in the space shorten it")
        if line is not None:
            self._say(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        finished = (trial_dir(self.out, _name(trial)) / TRIAL_RESULT).is_file()
        self._ended(trial, "finished" if finished else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "failed", _error_line(trial_dir(self.out, _name(trial)), trial))

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
