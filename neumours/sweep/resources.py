"""How many GPUs a sweep may use, and what each trial asks Ray for.

Locally, the GPUs are the ones CUDA would show this process: every GPU of the
machine (``nvidia-smi -L``), narrowed by ``CUDA_VISIBLE_DEVICES`` when it is set
(read as CUDA reads it: a comma-separated list of indices or ``GPU-``/``MIG-``
UUIDs, ending at the first entry that is not a valid device). Ray is then
started with exactly that many, and hands each trial its own
``CUDA_VISIBLE_DEVICES``; on a cluster (``--address``) Ray's own count of the
cluster's GPUs is used instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

from neumours.errors import NeumoursError


def physical_gpus() -> int:
    """NVIDIA GPUs on this machine (``nvidia-smi -L`` lines); 0 without the driver's tool."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        listing = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def visible_gpus(physical: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` entries, or ``0 .. physical-1`` without it."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return [str(i) for i in range(physical)]
    visible: list[str] = []
    for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
        entry = entry.strip()
        if entry.startswith(("GPU-", "MIG-")):
            ok = len(visible) < physical
        else:
            ok = entry.isdigit() and int(entry) < physical
        if not ok or entry in visible:  # CUDA stops at the first entry it cannot use
            break
        visible.append(entry)
    return visible


def describe_visible(visible: list[str], physical: int, environ: Mapping[str, str] | None = None) -> str:
    """E.g. ``1 GPU (nvidia-smi lists 1; CUDA_VISIBLE_DEVICES=0)``."""
    environ = os.environ if environ is None else environ
    where = f"nvidia-smi lists {physical}" if physical else "nvidia-smi finds none"
    if "CUDA_VISIBLE_DEVICES" in environ:
        where += f"; CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r}"
    return f"{len(visible)} GPU{'' if len(visible) == 1 else 's'} ({where})"


@dataclass(frozen=True)
class Resources:
    """What a sweep runs on.

    Attributes:
        gpus: GPUs Ray may place trials on (0: CPU trials).
        cpus_per_trial: CPU cores each trial reserves.
        gpu_per_trial: the fraction of a GPU each trial reserves (``1 / trials_per_gpu``; 0 without GPUs).
    """

    gpus: int
    cpus_per_trial: float
    gpu_per_trial: float

    def per_trial(self) -> dict[str, float]:
        """``tune.with_resources``'s request."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpu_per_trial}


def plan_resources(requested: int | None, available: int, trials_per_gpu: int, cpus_per_trial: float,
                   found: str) -> Resources:
    """Resources for ``--gpus requested`` (None: all ``available``), ``--trials-per-gpu``, ``--cpus-per-trial``.

    Raises:
        NeumoursError: more GPUs asked for than ``available`` (``found``, e.g. the text of
            :func:`describe_visible`, says what was seen), or a count out of range.
    """
    if trials_per_gpu < 1:
        raise NeumoursError(f"--trials-per-gpu {trials_per_gpu}: must be at least 1")
    if cpus_per_trial <= 0:
        raise NeumoursError(f"--cpus-per-trial {cpus_per_trial}: must be positive")
    if requested is not None and requested < 0:
        raise NeumoursError(f"--gpus {requested}: must be 0 or more")
    gpus = available if requested is None else requested
    if gpus > available:
        raise NeumoursError(f"--gpus {requested}: found {found}")
    return Resources(gpus, cpus_per_trial, 1.0 / trials_per_gpu if gpus else 0.0)
