"""Checks of output paths, made by every command before any work starts.

A command that computes for minutes and then finds its output folder
unwritable wastes the user's time and can leave half its results behind. So
each command checks its outputs first: the parent of an output file (or an
output folder itself) must be a writable folder or be creatable as one.
Anything else (a regular file where a folder is needed, a read-only or
virtual file system such as ``/proc``, a full disk) is one
:class:`~neumours.errors.NeumoursError` line naming the path. Nothing is
created by the check itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from neumours.errors import NeumoursError

#: File systems whose files are not data (writes there are refused up front).
_VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_folder(target: Path, folder: Path, what: str) -> None:
    """Raise unless ``folder`` is (or can become) a writable folder on a real, non-full file system."""
    resolved = Path(os.path.abspath(folder))
    if any(str(resolved) == root or str(resolved).startswith(root + "/") for root in _VIRTUAL_ROOTS):
        raise NeumoursError(f"{target}: {what} lies on a virtual file system ({resolved.parts[1]}), not a data folder")
    existing = _first_existing(resolved)
    if not existing.is_dir():
        raise NeumoursError(f"{target}: {what} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NeumoursError(f"{target}: {what} is not writable ({existing} does not allow writing)")
    try:
        stats = os.statvfs(existing)
    except OSError:
        return
    if stats.f_flag & os.ST_RDONLY:
        raise NeumoursError(f"{target}: {what} is on a read-only file system ({existing})")
    if stats.f_bavail == 0:
        raise NeumoursError(f"{target}: no space left on the device holding {existing}")


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file: its parent is (or can become) a writable folder.

    Raises:
        NeumoursError: ``path`` is an existing folder, or its parent cannot hold it (see module docstring).
    """
    path = Path(path)
    if path.is_dir():
        raise NeumoursError(f"{path}: {what} is an existing folder, expected a file name")
    _check_folder(path, path.parent if str(path.parent) else Path("."), f"the folder of the {what}")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` is (or can become) a writable folder.

    Raises:
        NeumoursError: ``path`` is an existing file, or cannot be created or written (see module docstring).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NeumoursError(f"{path}: {what} is an existing file, not a folder")
    _check_folder(path, path, f"the {what}")
    return path
