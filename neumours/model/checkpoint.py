"""INR checkpoints: safetensors files with docs/method.md tensor names and the config inside.

A checkpoint holds float32 tensors named as in docs/method.md ("spatial.weight", ...,
"head.bias"), so ``TorchINR().load_state_dict`` or any safetensors reader can use
it, plus string metadata: ``format`` ("neumours-inr/1"), ``config`` (JSON of
:meth:`INRConfig.to_dict`) and whatever the caller adds (case, step, Dice...).
Files are written atomically; every problem when reading is one
:class:`NeumoursError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from neumours import strict_json
from neumours.atomic import atomic_write_bytes
from neumours.conventions import CLASS_NAMES, MODALITIES, NUM_CLASSES, NUM_MODALITIES
from neumours.errors import NeumoursError
from neumours.input_files import check_input
from neumours.model.config import INRConfig
from neumours.model.params import ParamLayout

#: Value of the ``format`` metadata key; bump the number on an incompatible change.
CHECKPOINT_FORMAT = "neumours-inr/1"
_RESERVED = ("format", "config")
_FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _flat_or_pack(layout: ParamLayout, state: Any) -> np.ndarray:
    if not isinstance(state, Mapping) and tuple(getattr(state, "shape", ())) == (layout.total,):
        return layout.pack(layout.views(state))
    return layout.pack(state)


def checkpoint_bytes(state: Mapping[str, Any], config: INRConfig, metadata: Mapping[str, str] | None = None,
                     path: str | os.PathLike = "checkpoint") -> bytes:
    """The bytes :func:`save_checkpoint` writes (for writing them together with other files).

    Raises:
        NeumoursError / ValueError: as :func:`save_checkpoint` (``path`` only names the file in messages).
    """
    layout = ParamLayout(config)
    flat = _flat_or_pack(layout, state)
    views = layout.views(flat)
    for name, value in views.items():
        if not np.all(np.isfinite(value)):
            raise NeumoursError(f"{path}: refusing to save a checkpoint whose tensor {name} holds NaN or Inf")
    meta = {"format": CHECKPOINT_FORMAT, "config": strict_json.dumps(config.architecture().to_dict(), sort_keys=True)}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"checkpoint metadata must map str to str, got {key!r}: {value!r}")
        if key in _RESERVED:
            raise ValueError(f"checkpoint metadata key {key!r} is reserved")
        meta[key] = value
    return safetensors.numpy.save({n: np.ascontiguousarray(v) for n, v in views.items()}, metadata=meta)


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, Any],
    config: INRConfig,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the INR's weights and config to ``path`` (safetensors, atomically).

    Args:
        path: target file, normally ``*.safetensors``; parent folders are created.
        state: name -> numpy array or torch tensor with docs/method.md names and shapes
            (``TorchINR.state_dict()``, ``TorchBridge.state_dict()``), or the flat
            (total,) parameter vector of :class:`ParamLayout`.
        config: the network sizes, stored so the loader can rebuild the network.
        metadata: extra str -> str entries (``format`` and ``config`` are reserved).

    Returns:
        ``path`` as a Path.

    Raises:
        NeumoursError: tensors that do not fit ``config``, or NaN/Inf weights
            (such a file could never be loaded, so it is not written).
        ValueError: metadata that is not str -> str or uses a reserved key.
    """
    path = Path(path)
    atomic_write_bytes(path, checkpoint_bytes(state, config, metadata, path))
    return path


def _config_diff(found: INRConfig, expected: INRConfig) -> str:
    a, b = found.architecture().to_dict(), expected.architecture().to_dict()
    return "; ".join(f"checkpoint has {k}={a[k]}, expected {b[k]}" for k in a if a[k] != b[k])


def _names(names: list[str], shown: int = 6) -> str:
    """Up to ``shown`` names and a count of the rest (a hostile file may hold thousands)."""
    text = ", ".join(n[:80] for n in names[:shown])
    return text + (f" and {len(names) - shown:,} more" if len(names) > shown else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_checkpoint(
    path: str | os.PathLike, expected_config: INRConfig | None = None
) -> tuple[dict[str, np.ndarray], INRConfig, dict[str, str]]:
    """Read a checkpoint written by :func:`save_checkpoint` and check it fully.

    Args:
        path: the ``.safetensors`` file.
        expected_config: when given, the stored architecture must equal its
            architecture (e.g. the network a training run was built for; precision
            does not matter).

    Returns:
        ``(state, config, metadata)``: name -> float32 array in layout order,
        the stored :class:`INRConfig`, and the caller's metadata (without the
        reserved ``format`` and ``config`` keys).

    Raises:
        NeumoursError: one line naming the file: missing, not a safetensors file
            (or truncated), not a Neumours INR checkpoint, a config other than
            ``expected_config`` (naming each differing field), tensors that do not
            fit the stored config, or NaN/Inf weights.
    """
    path = Path(path)
    if not path.exists():
        raise NeumoursError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise NeumoursError(f"{path}: checkpoint path is not a file")
    check_input(path, "checkpoint")  # a FIFO would block safetensors' open; an unreadable file: permission denied
    try:
        handle = safe_open(str(path), framework="numpy")
    except Exception as exc:  # SafetensorError, OSError: truncated, garbage, unreadable
        reason = _one_line(exc).removeprefix("Error while deserializing header: ")
        raise NeumoursError(f"{path}: not a readable safetensors file, or truncated ({reason})") from None
    with handle as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            found = f"format {meta['format']!r}" if "format" in meta else "no neumours metadata"
            raise NeumoursError(
                f"{path}: not a Neumours INR checkpoint ({found}; expected format {CHECKPOINT_FORMAT!r})"
            )
        try:
            config = INRConfig.from_dict(json.loads(meta.get("config", "")))
        except (ValueError, TypeError, RecursionError, NeumoursError) as exc:  # JSONDecodeError is a ValueError
            raise NeumoursError(f"{path}: invalid config in checkpoint metadata ({_one_line(exc)})") from None
        if expected_config is not None and config != expected_config.architecture():
            raise NeumoursError(f"{path}: configuration differs: {_config_diff(config, expected_config)}")
        layout = ParamLayout(config)
        names = set(f.keys())
        missing = [n for n in layout.names if n not in names]
        extra = sorted(names - set(layout.names))
        if missing or extra:
            parts = ([f"missing {_names(missing)}"] if missing else []) + (
                [f"unexpected {_names(extra)}"] if extra else []
            )
            raise NeumoursError(f"{path}: tensors do not match its own config ({'; '.join(parts)})")
        state: dict[str, np.ndarray] = {}
        for name in layout.names:
            tensor = f.get_slice(name)
            shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
            if shape != layout.shape(name):
                raise NeumoursError(
                    f"{path}: tensor {name} has shape {shape}, but its config needs {layout.shape(name)}"
                )
            if dtype not in _FLOAT_DTYPES:
                raise NeumoursError(f"{path}: tensor {name} has dtype {dtype}, expected F32")
            value = np.array(f.get_tensor(name), dtype=np.float32)
            if not np.all(np.isfinite(value)):
                bad = int(np.count_nonzero(~np.isfinite(value)))
                raise NeumoursError(f"{path}: tensor {name} holds {bad} NaN/Inf value(s) of {math.prod(shape)}")
            state[name] = value
    user = {k: v for k, v in meta.items() if k not in _RESERVED}
    return state, config, user


def check_fits_data(config: INRConfig, checkpoint: str | os.PathLike, data: str | os.PathLike,
                    shape: tuple[int, ...] | None = None, modalities: int = NUM_MODALITIES) -> None:
    """Refuse, before any inference, a checkpoint whose network cannot segment ``data``.

    One check for every command that runs a checkpoint over cases (segment,
    evaluate, render, refine, view): the network must read as many modalities
    as the cases have (:data:`MODALITIES`), give one logit per label class
    (:data:`CLASS_NAMES`: the labels written are 0..3), and its patch must fit
    inside the case.

    Args:
        config: the checkpoint's network (from :func:`load_checkpoint`).
        checkpoint, data: named in the message (a case, a case file or a dataset folder).
        shape: the case's (X, Y, Z) when known (the patch size is checked against it).
        modalities: channels of the cases.

    Raises:
        NeumoursError: one line naming both paths and every mismatch.
    """
    problems = []
    if config.num_modalities != modalities:
        problems.append(f"its network reads {config.num_modalities} modalities, the cases have {modalities}"
                        + (f" ({', '.join(MODALITIES)})" if modalities == NUM_MODALITIES else ""))
    if config.num_classes != NUM_CLASSES:
        problems.append(f"its network gives {config.num_classes} classes, the labels have {NUM_CLASSES} "
                        f"({', '.join(CLASS_NAMES)})")
    if shape is not None and config.patch_size > min(shape):
        problems.append(f"its {config.patch_size}-voxel patch is larger than the case's smallest edge "
                        f"({'x'.join(map(str, shape))})")
    if problems:
        raise NeumoursError(f"{checkpoint}: does not fit {data}: {'; '.join(problems)}")
