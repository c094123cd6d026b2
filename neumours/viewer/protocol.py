"""The viewer's WebSocket protocol: message checks, binary framing and volume crops.

Text messages are JSON objects with a ``type`` (:data:`CLIENT_TYPES`); every
field is checked here (type, range), so the session sees only valid requests and
a bad message becomes one ``{"type": "error", "message": ...}`` reply.

Binary messages, both ways, are ``[u32 little-endian header length][JSON header][payload]``.
Volume data travels as crops (as nnInteractive and MONAI Label do): the header gives
``origin`` (x0, y0, z0) and ``shape`` (nx, ny, nz) of a box of the case, the payload
is nx * ny * nz uint8 values in C order (x slowest), never per-voxel JSON lists.

- client -> server ``strokes``: the slice-painting state inside a box, values
  :data:`PAINT_NONE` (unpainted or erased), 1..3 (NCR, ED, ET pens) or
  :data:`PAINT_BACKGROUND` (the background pen); it replaces the box's previous state
  (with ``"replace": true`` the box is the whole pending paint: the rest is cleared).
- client -> server ``mask``: a 3-D-view stroke mask crop (``origin``, ``shape`` as
  (x0, y0) and (w, h) of an image of ``width`` x ``height`` for ``camera``; values
  ``neumours.refine.masks`` NOT_TUMOUR, TUMOUR, DONT_CARE).
- server -> client ``frame``: a JPEG of the 3-D view; ``labels``: the changed crop of
  the INR's label volume after a refinement or undo; ``pending_paint`` and
  ``pending_mask``: the open case's pending corrections (as ``strokes`` and ``mask``
  are framed) for the page to redraw, after a case opens or Undo refine gives them back.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from neumours.conventions import MODALITIES, NUM_CLASSES

#: Largest text message (JSON control messages are small).
MAX_TEXT_BYTES = 64 * 1024
#: Largest binary header.
MAX_HEADER_BYTES = 16 * 1024
#: Largest rendered frame side (pixels) and mask side.
MAX_FRAME_SIDE = 4096
#: Slice painting values: unpainted, and the background pen (drawing value of class 0).
PAINT_NONE, PAINT_BACKGROUND = 0, NUM_CLASSES
#: Overlay sources of both views.
OVERLAYS = ("inr", "denoised", "ground_truth", "probabilities", "none")
#: Message types a client may send.
CLIENT_TYPES = ("hello", "open", "settings", "render", "strokes", "mask", "clear", "refine", "cancel", "undo",
                "save", "probe", "ping")
#: Binary message types the server sends.
SERVER_BINARY_TYPES = ("frame", "labels", "pending_paint", "pending_mask")
_HEADER = struct.Struct("<I")


class ProtocolError(ValueError):
    """A malformed or out-of-range message; its text goes back to the client."""


def pack(header: dict, payload: bytes = b"") -> bytes:
    """A binary message: header length, JSON header, payload."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(head)) + head + bytes(payload)


def unpack(data: bytes, types: tuple[str, ...] = CLIENT_TYPES) -> tuple[dict, memoryview]:
    """(header, payload) of a binary message whose type is one of ``types`` (a client's, by default).

    Raises:
        ProtocolError: too short, a header too long or not a JSON object with a type.
    """
    if len(data) < _HEADER.size:
        raise ProtocolError("binary message shorter than its header length")
    (n,) = _HEADER.unpack_from(data)
    if n > MAX_HEADER_BYTES or _HEADER.size + n > len(data):
        raise ProtocolError(f"binary header of {n} bytes does not fit the message")
    header = _json_object(bytes(data[_HEADER.size:_HEADER.size + n]), types)
    return header, memoryview(data)[_HEADER.size + n:]


def _json_object(raw: bytes | str, types: tuple[str, ...] = CLIENT_TYPES) -> dict:
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = message.get("type")
    if kind not in types:
        raise ProtocolError(f"unknown message type {kind!r} (expected one of {', '.join(types)})")
    return message


def parse_text(raw: str) -> dict:
    """A text message as a checked dict.

    Raises:
        ProtocolError: too long, not JSON, not an object, or an unknown type.
    """
    if len(raw) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text message of {len(raw)} bytes exceeds {MAX_TEXT_BYTES}")
    return _json_object(raw)


def number(message: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    """A finite number in [lo, hi] from ``message[key]`` (``default`` when absent)."""
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{key} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{key} must be in [{lo}, {hi}], got {value}")
    return float(value)


def integer(message: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


@dataclass(frozen=True)
class View:
    """An orbit camera and image size, as the 3-D view sends them.

    ``zoom`` scales the distance that fits the volume's box (2 = twice as close);
    ``target`` is the orbit centre in box space (panning moves it).
    """

    azimuth: float
    elevation: float
    zoom: float
    target: tuple[float, float, float]
    width: int
    height: int
    fov: float = 30.0


def parse_view(message: dict) -> View:
    """The ``camera`` object and ``width`` / ``height`` of a render or mask message."""
    cam = message.get("camera")
    if not isinstance(cam, dict):
        raise ProtocolError("camera must be an object")
    target = cam.get("target", [0.0, 0.0, 0.0])
    if not isinstance(target, list) or len(target) != 3:
        raise ProtocolError("camera.target must be three numbers")
    target = tuple(number({"target": t}, "target", -4.0, 4.0) for t in target)
    return View(number(cam, "azimuth", -1e6, 1e6), number(cam, "elevation", -89.9, 89.9),
                number(cam, "zoom", 0.1, 20.0, 1.0), target,  # type: ignore[arg-type]
                integer(message, "width", 8, MAX_FRAME_SIDE), integer(message, "height", 8, MAX_FRAME_SIDE),
                number(cam, "fov", 5.0, 120.0, 30.0))


def parse_crop(header: dict, payload: memoryview, bounds: tuple[int, ...], allowed: tuple[int, ...]) -> tuple[
        tuple[int, ...], np.ndarray]:
    """The origin and uint8 values of a crop inside an array of shape ``bounds``.

    Args:
        header: with ``origin`` and ``shape`` (as many entries as ``bounds``).
        allowed: the values the crop may hold.

    Raises:
        ProtocolError: a box outside ``bounds``, a payload of the wrong length or a value not in ``allowed``.
    """
    origin, shape = header.get("origin"), header.get("shape")
    dims = len(bounds)
    if not (isinstance(origin, list) and isinstance(shape, list) and len(origin) == dims and len(shape) == dims):
        raise ProtocolError(f"origin and shape must be {dims} integers each")
    for o, s, b in zip(origin, shape, bounds):
        if isinstance(o, bool) or isinstance(s, bool) or not isinstance(o, int) or not isinstance(s, int):
            raise ProtocolError("origin and shape must be integers")
        if o < 0 or s < 1 or o + s > b:
            raise ProtocolError(f"crop origin {origin} shape {shape} lies outside {list(bounds)}")
    if len(payload) != int(np.prod(shape)):
        raise ProtocolError(f"crop payload has {len(payload)} bytes, expected {int(np.prod(shape))}")
    values = np.frombuffer(payload, np.uint8).reshape(shape)
    bad = ~np.isin(values, allowed)
    if bad.any():
        raise ProtocolError(f"crop holds value {int(values[bad][0])}; allowed: {list(allowed)}")
    return tuple(origin), values.copy()


def changed_crop(before: np.ndarray, after: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """The smallest box where two label volumes differ: (origin, ``after``'s values there), or None."""
    diff = before != after
    if not diff.any():
        return None
    lo = [int(np.flatnonzero(diff.any(axis=tuple(a for a in range(3) if a != ax)))[0]) for ax in range(3)]
    hi = [int(np.flatnonzero(diff.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) + 1 for ax in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return tuple(lo), np.ascontiguousarray(after[box], np.uint8)  # type: ignore[return-value]


def parse_modalities(message: dict) -> dict[str, tuple[bool, float]]:
    """``{"t1n": {"enabled": true, "weight": 0.25}, ...}`` -> name -> (enabled, weight)."""
    mods = message.get("modalities", {})
    if not isinstance(mods, dict) or set(mods) - set(MODALITIES):
        raise ProtocolError(f"modalities must map some of {', '.join(MODALITIES)} to settings")
    out = {}
    for name, value in mods.items():
        if not isinstance(value, dict) or not isinstance(value.get("enabled", True), bool):
            raise ProtocolError(f"modalities.{name} must be {{enabled: bool, weight: number}}")
        out[name] = (value.get("enabled", True), number(value, "weight", 0.0, 4.0, 0.25))
    return out
