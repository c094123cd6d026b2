"""Input files: one check that a path names a regular file this process can read.

Every reader of a user's file (NIfTI volumes, checkpoints, TOML files) opens it
here first, so that the same cases give the same one line everywhere: a FIFO,
socket or device would block or stream forever (a FIFO with no writer makes
``open()`` wait for ever), a folder is not a file, and an unreadable file says
"permission denied" rather than whatever a library makes of the failure.
The file is opened non-blocking and checked with ``fstat`` on the open
descriptor, so a FIFO is refused without waiting and the check holds for the
file that is actually read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from neumours.errors import NeumoursDataError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_input(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading in binary, refusing anything but a readable regular file.

    Args:
        what: what the file should be, for the message (e.g. "checkpoint").

    Returns:
        The open file (the caller closes it).

    Raises:
        NeumoursDataError: one line naming ``path``: does not exist, is a folder,
            a FIFO / socket / device, permission denied, or another OS error.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NeumoursDataError(path, f"{what} does not exist") from None
    except IsADirectoryError:
        raise NeumoursDataError(path, f"is a folder, expected a {what}") from None
    except PermissionError:
        raise NeumoursDataError(path, f"permission denied (cannot read this {what})") from None
    except OSError as exc:
        problem = "file name too long" if exc.errno == errno.ENAMETOOLONG else (exc.strerror or str(exc))
        raise NeumoursDataError(path, f"cannot read {what} ({problem})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NeumoursDataError(path, f"is a folder, expected a {what}")
        if not stat.S_ISREG(mode):
            raise NeumoursDataError(path, f"is {_kind(mode)}, not a regular file; a {what} must be a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_input(path: str | os.PathLike, what: str = "file") -> Path:
    """:func:`open_input` and close again: for readers that open the file themselves (safetensors)."""
    open_input(path, what).close()
    return Path(path)


def read_input_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The whole file, after :func:`open_input`'s checks."""
    with open_input(path, what) as f:
        try:
            return f.read()
        except OSError as exc:
            raise NeumoursDataError(path, f"cannot read {what} ({exc.strerror or exc})") from None


__all__ = ["check_input", "open_input", "read_input_bytes"]
