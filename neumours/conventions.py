"""The conventions every part of Neumours shares, defined once (docs/method.md).

Modality order of every image array and patch, class order of every logit,
label and probability volume, and the length of the Fourier encoding. Slang
receives these numbers as compile-time constants from here (through the
network's :class:`~neumours.model.config.INRConfig` or the kernel wrappers of
:mod:`neumours.kernels`), never as literals of its own.
"""

from __future__ import annotations

#: Modality order: T1 native, T1 contrast-enhanced, T2, T2-FLAIR (BraTS 2023 names).
MODALITIES: tuple[str, str, str, str] = ("t1n", "t1c", "t2w", "t2f")
NUM_MODALITIES = len(MODALITIES)

#: Class index -> short name, in logit order: background, necrotic core,
#: peritumoral edema, enhancing tumour (label values 0..3).
CLASS_NAMES = ("background", "NCR", "ED", "ET")
NUM_CLASSES = len(CLASS_NAMES)
#: Column suffixes of per-class metrics (``dice_bg``, ``dice_NCR``, ...).
CLASS_KEYS = ("bg",) + CLASS_NAMES[1:]


def fourier_dim(num_freqs: int) -> int:
    """Length of gamma(p) for K = ``num_freqs``: the point, then sin and cos of 3 axes per frequency (3 + 6K)."""
    return 3 + 6 * int(num_freqs)
