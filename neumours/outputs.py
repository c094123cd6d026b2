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

import errno
import os
from pathlib import Path

from neumours.errors import NeumoursError

#: File systems whose files are not data (writes there are refused up front).
_VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")

#: What an errno means to someone writing a file (the rest use the system's own words).
_WRITE_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.EEXIST: "part of the path exists as a file where a folder is needed",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ENOENT: "a folder on the path does not exist and cannot be created",
    errno.EIO: "input/output error on the device",
}


def write_error(path: str | os.PathLike, exc: OSError) -> NeumoursError:
    """The one-line error for an ``OSError`` raised while writing ``path`` (to be raised ``from None``).

    ENOSPC, EROFS, ENOTDIR, EEXIST and the like that only show up during the
    write (after :func:`check_output_file` passed: the disk filled up meanwhile,
    a file system went read-only) are reported the same way as the up-front checks.
    """
    problem = _WRITE_PROBLEMS.get(exc.errno) or exc.strerror or str(exc)
    return NeumoursError(f"{path}: cannot write ({problem})")


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
    try:
        stats = os.statvfs(existing)
    except OSError:
        stats = None
    if stats is not None and stats.f_flag & os.ST_RDONLY:  # before the permission check, which it also fails
        raise NeumoursError(f"{target}: {what} is on a read-only file system ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NeumoursError(f"{target}: {what} is not writable ({existing} does not allow writing)")
    if stats is not None and stats.f_bavail == 0:
        raise NeumoursError(f"{target}: no space left on the device holding {existing}")


def check_name_length(path: Path, what: str) -> None:
    """Refuse a path with a component longer than the file system allows (NAME_MAX, usually 255 bytes)
    or longer than PATH_MAX as a whole, which would otherwise fail in ``stat`` with a traceback."""
    existing = _first_existing_quietly(Path(os.path.abspath(path)))
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in Path(path).parts:
        if len(os.fsencode(part)) > name_max:
            raise NeumoursError(f"{path}: {what}: file name too long ({len(os.fsencode(part))} bytes in one name, "
                                f"the file system allows {name_max})")
    if len(os.fsencode(os.path.abspath(path))) >= path_max:
        raise NeumoursError(f"{path}: {what}: file name too long (the whole path may have {path_max - 1} bytes)")


def _first_existing_quietly(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists, without a stat of an over-long name."""
    for current in [path, *path.parents]:
        try:
            if current.exists():
                return current
        except OSError:
            continue
    return Path("/")


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file: its parent is (or can become) a writable folder.

    Raises:
        NeumoursError: ``path`` is an existing folder, or its parent cannot hold it (see module docstring).
    """
    path = Path(path)
    check_name_length(path, what)
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
    check_name_length(path, what)
    if path.exists() and not path.is_dir():
        raise NeumoursError(f"{path}: {what} is an existing file, not a folder")
    _check_folder(path, path, f"the {what}")
    return path
