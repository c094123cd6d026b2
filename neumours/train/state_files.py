"""A training run's progress state as safetensors (tensors) + JSON (everything else): no pickle.

``--resume`` needs the torch optimisers' state dicts (tensors under integer
keys, tuples such as AdamW's ``betas``), the augmentation's numpy generator state
(128-bit integers), the best score and the metric rows. :func:`encode` splits
such a tree into plain JSON and a name -> tensor dict; :func:`decode` rebuilds
it exactly (same key types, tuples, dtypes and bits). Decoding creates only
dicts, lists, tuples, str, int, float, bool, None, torch tensors and numpy
scalars of listed dtypes, so a crafted state file can at worst be refused, never
run code (a pickle read without torch's ``weights_only`` restriction can).

JSON form: a dict whose keys are all str (none starting with ``__``) stays a
JSON object; any other dict is ``{"__items__": [[key, value], ...]}``; a tuple
is ``{"__tuple__": [...]}``; a tensor ``{"__tensor__": name}`` (the name in the
safetensors file); a numpy scalar ``{"__numpy__": dtype, "value": v}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: numpy scalar dtypes a state may hold (decoded back to the same dtype).
_NUMPY_SCALARS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                  "float32", "float64")
#: Deepest nesting :func:`decode` follows (a state is ~6 deep; a crafted file is refused, not recursed into).
MAX_DEPTH = 64


class StateFormatError(ValueError):
    """A state file that does not decode (message: what is wrong, for a one-line error)."""


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``tree`` into a JSON-ready structure and the tensors it refers to (``t0``, ``t1``, ...).

    Raises:
        TypeError: a value of a type the format does not hold (a bug: states hold only the types above).
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            return {"__numpy__": value.dtype.name, "value": value.item() if math.isfinite(float(value))
                    or value.dtype.kind != "f" else repr(float(value))}
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": name}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v) for v in value]}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v) for k, v in value.items()}
            return {"__items__": [[walk(k), walk(v)] for k, v in value.items()]}
        raise TypeError(f"a training state cannot hold a {type(value).__name__}")

    return walk(tree), tensors


def decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The tree :func:`encode` split into ``data`` (parsed JSON) and ``tensors``.

    Raises:
        StateFormatError: a structure :func:`encode` never writes (unknown marker, a
            tensor name not in ``tensors``, an unhashable key, nesting beyond MAX_DEPTH).
    """

    def walk(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise StateFormatError(f"nested deeper than {MAX_DEPTH} levels")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [walk(v, depth + 1) for v in value]
        if not isinstance(value, dict):
            raise StateFormatError(f"unexpected JSON value of type {type(value).__name__}")
        markers = [k for k in value if k.startswith("__")]
        if not markers:
            return {k: walk(v, depth + 1) for k, v in value.items()}
        marker = markers[0]
        body = value[marker]
        if marker == "__tensor__":
            if not isinstance(body, str) or body not in tensors:
                raise StateFormatError(f"names a tensor {str(body)[:40]!r} that the tensor file does not hold")
            return tensors[body]
        if marker == "__tuple__" and isinstance(body, list):
            return tuple(walk(v, depth + 1) for v in body)
        if marker == "__items__" and isinstance(body, list):
            out = {}
            for item in body:
                if not isinstance(item, list) or len(item) != 2:
                    raise StateFormatError("a dict entry is not a [key, value] pair")
                key = walk(item[0], depth + 1)
                try:
                    out[key] = walk(item[1], depth + 1)
                except TypeError:
                    raise StateFormatError(f"a dict key of type {type(key).__name__}") from None
            return out
        if marker == "__float__" and body in ("inf", "-inf", "nan"):
            return float(body)
        if marker == "__numpy__" and body in _NUMPY_SCALARS and "value" in value:
            number = value["value"]
            if isinstance(number, str) and number in ("inf", "-inf", "nan"):
                number = float(number)
            if not isinstance(number, (bool, int, float)):
                raise StateFormatError(f"a numpy {body} scalar holds a {type(number).__name__}")
            try:
                return np.dtype(body).type(number)
            except (OverflowError, ValueError) as exc:
                raise StateFormatError(f"a numpy {body} scalar: {exc}") from None
        raise StateFormatError(f"unknown entry {marker[:40]!r}")

    return walk(data, 0)


__all__ = ["MAX_DEPTH", "StateFormatError", "decode", "encode"]
