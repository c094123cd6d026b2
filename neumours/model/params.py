"""All INR weights in one flat float32 vector: its layout and its initialisation.

The Slang kernels, the torch optimisers (through :mod:`neumours.model.bridge`) and the
checkpoints share one vector. Tensors follow :meth:`INRConfig.param_shapes` order,
each row-major in torch's (out, in) convention, with no padding between them.
The Conv3d kernel (out, c, x, y, z) therefore reads as an (out, c * p^3) matrix
whose input index is ``c*27 + a*9 + b*3 + d`` (p = 3) for offsets a, b, d along
array axes 0, 1, 2 -- the order of a flattened (c, 3, 3, 3) patch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from neumours.errors import NeumoursError
from neumours.model.config import INRConfig


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu()
        # bfloat16 has no numpy dtype; float32 holds it (and half) exactly.
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


class ParamLayout:
    """Where each named tensor sits in the flat parameter (and gradient) vector.

    Args:
        config: the network sizes.

    Attributes:
        config: the :class:`INRConfig` this layout describes.
        names: tensor names in buffer order.
        total: number of float32 values in the flat vector.
    """

    def __init__(self, config: INRConfig):
        self.config = config
        self._entries: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in config.param_shapes().items():
            self._entries[name] = (offset, tuple(shape))
            offset += math.prod(shape)
        self.names: tuple[str, ...] = tuple(self._entries)
        self.total: int = offset

    def offset(self, name: str) -> int:
        """First element of ``name`` in the flat vector."""
        return self._entry(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``name`` (torch convention)."""
        return self._entry(name)[1]

    def size(self, name: str) -> int:
        """Number of elements of ``name``."""
        return math.prod(self.shape(name))

    def _entry(self, name: str) -> tuple[int, tuple[int, ...]]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; known: {', '.join(self.names)}") from None

    def views(self, flat):
        """Per-tensor views into ``flat`` (no copies): writes to a view change ``flat``.

        Args:
            flat: (total,) numpy array or torch tensor, contiguous.

        Returns:
            dict name -> view of the same kind as ``flat``, shaped as :meth:`shape`.
        """
        shape = tuple(flat.shape)
        if shape != (self.total,):
            raise ValueError(f"flat parameter vector must have shape ({self.total},), got {shape}")
        if _is_torch(flat):
            if not flat.is_contiguous():
                raise ValueError("flat parameter tensor must be contiguous to be viewed")
            return {n: flat[o : o + math.prod(s)].view(s) for n, (o, s) in self._entries.items()}
        if not isinstance(flat, np.ndarray) or not flat.flags.c_contiguous:
            raise ValueError("flat parameter vector must be a contiguous numpy array or torch tensor")
        # A slice of a contiguous vector is contiguous, so reshape returns a view.
        return {n: flat[o : o + math.prod(s)].reshape(s) for n, (o, s) in self._entries.items()}

    def pack(self, state: Mapping[str, Any]) -> np.ndarray:
        """Concatenate named tensors into a new flat float32 vector.

        Args:
            state: name -> numpy array or torch tensor, exactly :attr:`names`,
                each of exactly :meth:`shape` (e.g. ``TorchINR.state_dict()``).

        Returns:
            (total,) float32.

        Raises:
            NeumoursError: a name missing or unknown, or a shape that differs,
                naming the tensor (a checkpoint of another network, usually).
        """
        missing = [n for n in self.names if n not in state]
        extra = sorted(str(n) for n in state if n not in self._entries)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise NeumoursError(f"parameter tensors do not match the INR layout: {'; '.join(parts)}")
        flat = np.empty(self.total, dtype=np.float32)
        for name, (o, s) in self._entries.items():
            value = _to_numpy(state[name])
            if tuple(value.shape) != s:
                raise NeumoursError(f"parameter {name} has shape {tuple(value.shape)}, expected {s}")
            if not np.issubdtype(value.dtype, np.floating):
                raise NeumoursError(f"parameter {name} has dtype {value.dtype}, expected a float type")
            flat[o : o + math.prod(s)] = value.reshape(-1)
        return flat

    def __repr__(self) -> str:
        return f"ParamLayout({self.config}, total={self.total})"


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs per output of a weight: in_features (Linear) or c * p^3 (Conv3d)."""
    return math.prod(shape[1:])


def init_params(config: INRConfig, seed: int = 0) -> np.ndarray:
    """torch's default nn.Linear / nn.Conv3d initialisation, as one flat vector.

    Every weight and bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the fan-in of
    its layer (kaiming_uniform with a = sqrt(5) gives exactly that bound for
    weights). Drawn with ``numpy.random.default_rng(seed)`` tensor by tensor in
    layout order, so a seed gives the same network on every machine.

    Args:
        config: network sizes.
        seed: random seed.

    Returns:
        (ParamLayout(config).total,) float32.
    """
    layout = ParamLayout(config)
    rng = np.random.default_rng(seed)
    flat = np.empty(layout.total, dtype=np.float32)
    views = layout.views(flat)
    for name in layout.names:
        layer = name.rsplit(".", 1)[0]
        bound = 1.0 / math.sqrt(fan_in(layout.shape(f"{layer}.weight")))
        views[name][...] = rng.uniform(-bound, bound, size=layout.shape(name))
    return flat
