"""``neumours train`` that kills itself with SIGKILL at one chosen moment (driver of tests/test_crash_safety.py).

Usage: ``python tests/crashing_train.py MOMENT STEP -- TRAIN ARGS...``

MOMENT, with STEP the training step it refers to:

* ``step``: at the start of step STEP (before its optimiser update; with steps run in blocks, at
  the start of the block that holds step STEP);
* ``before:NAME`` / ``after:NAME``: just before / just after the rename (``os.replace``)
  whose target is named NAME, during the checkpoint commit of step STEP (NAME is a
  file such as ``state.json`` or ``checkpoint.json``, or a step folder ``step-00000004``).

Nothing of neumours is replaced: the real command runs and the real process is
killed (``kill -9``) at that moment, so what is on disk is exactly what a crash
there leaves. If the moment never comes the command ends normally and the test
sees exit status 0 instead of -9.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    moment, step = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    when, _, name = moment.partition(":")

    from neumours.cli.main import main as neumours_main
    from neumours.train import checkpoints
    from neumours.train.trainer import Trainer

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    committing: list[int] = []
    real_commit, real_replace, real_steps = checkpoints.commit, os.replace, Trainer.train_steps

    def commit(run_dir, at, *rest, **kwargs):
        committing.append(at)
        try:
            return real_commit(run_dir, at, *rest, **kwargs)
        finally:
            committing.pop()

    def replace(src, dst, *rest, **kwargs):
        hit = bool(committing) and committing[-1] == step and os.path.basename(os.fspath(dst)) == name
        if hit and when == "before":
            die()
        real_replace(src, dst, *rest, **kwargs)
        if hit and when == "after":
            die()

    def train_steps(self, count):
        if when == "step" and self.step < step <= self.step + count:
            die()
        return real_steps(self, count)

    checkpoints.commit, os.replace, Trainer.train_steps = commit, replace, train_steps
    return neumours_main(args)


if __name__ == "__main__":
    sys.exit(main())
