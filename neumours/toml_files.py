"""Reading and writing the project's small TOML files (training configs, search spaces, phantom ranges).

One reader so that a missing or malformed file gives the same one line everywhere, and one
literal writer so that every file we write reads back to the same values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from neumours.errors import NeumoursError
from neumours.input_files import read_input_bytes


def read_toml(path: str | Path, what: str) -> dict:
    """The parsed TOML file at ``path``.

    Args:
        what: what the file is, for the message (e.g. "config file").

    Raises:
        NeumoursError: the file is missing, not a readable regular file (a FIFO, a folder: see
            :mod:`neumours.input_files`), not UTF-8 or not valid TOML (one line naming it).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise NeumoursError(f"{path}: {what} not found")
    if path.is_dir():
        raise NeumoursError(f"{path}: is a folder, not a {what} (give the TOML file)")
    try:
        return tomllib.loads(read_input_bytes(path, what).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise NeumoursError(f"{path}: not a valid TOML file ({' '.join(str(exc).split())})") from None


def toml_value(value) -> str:
    """A TOML literal for a bool, number (numpy scalars included), string or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(float(value)) if isinstance(value, float) else repr(int(value))
