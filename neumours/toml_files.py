"""Reading and writing the project's small TOML files (training configs, search spaces, phantom ranges).

One reader so that a missing or malformed file gives the same one line everywhere, and one
literal writer so that every file we write reads back to the same values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from neumours.errors import NeumoursError


def read_toml(path: str | Path, what: str) -> dict:
    """The parsed TOML file at ``path``.

    Args:
        what: what the file is, for the message (e.g. "config file").

    Raises:
        NeumoursError: the file is missing, a folder, unreadable, not UTF-8 or not valid TOML (one
            line naming it).
    """
    path = Path(path)
    if path.is_dir():
        raise NeumoursError(f"{path}: is a folder, not a {what} (give the TOML file)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NeumoursError(f"{path}: {what} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise NeumoursError(f"{path}: not a valid TOML file ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise NeumoursError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def toml_value(value) -> str:
    """A TOML literal for a bool, number (numpy scalars included), string or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(float(value)) if isinstance(value, float) else repr(int(value))
