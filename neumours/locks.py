"""Exclusive locks on the folders a command writes (a run, a sweep, a dataset being synthesised).

Two ``neumours train --out RUN`` started together would otherwise both write
RUN and leave a ``config.toml`` of one run beside the checkpoint of the other.
So a writer takes the folder's lock before its first write and keeps it until
it ends; a second writer is refused at once, with the process id holding it.

The lock is ``fcntl.flock`` on ``FOLDER/.neumours.lock``: the kernel releases
it when the process ends in any way (``kill -9`` included), so a lock file left
by a dead process is simply taken again (nothing to clean up by hand). The
holder's pid is written inside the file only to name it in the message. The
file is removed when the lock is given back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from neumours.errors import NeumoursError
from neumours.outputs import write_error

#: The lock file inside a locked folder (hidden: case listings skip it).
LOCK_NAME = ".neumours.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing), as a context manager.

    Args:
        folder: the folder to lock.
        what: how messages name it ("run folder", "dataset folder", ...).

    A folder the lock created and that is empty again when the lock is released
    (the command failed before writing) is removed.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False
        self._mtimes: tuple = (None, None)

    def acquire(self) -> "FolderLock":
        """Take the lock.

        Raises:
            NeumoursError: another process holds it (naming its pid), or the folder
                or lock file cannot be created (one line naming it).
        """
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.folder, exc) from None
        while True:
            before = _mtime(self.folder)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                self._remove_if_created()
                raise write_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise write_error(self.path, exc) from None
                who = "another process" if holder is None else f"process {holder}"
                if holder is not None and not _alive(holder):
                    who += " (no longer running; a process it started still holds the lock)"
                raise NeumoursError(f"{self.folder}: the {self.what} is being written by {who}; wait for it to end "
                                    f"or choose another folder (lock: {self.path})") from None
            # The file may have been removed (a writer releasing a folder it created) between open and flock:
            # then the lock is on a file nobody else will open; take it again on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        # The folder's modification time before the lock file came, and just after: if nothing else changes
        # in the folder, release puts the first back (a command refused after the lock leaves no trace).
        self._mtimes = (before, _mtime(self.folder))
        return self

    def release(self) -> None:
        """Give the lock back (and remove a folder it created that stayed empty)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        now = _mtime(self.folder)
        untouched = None not in (now, self._mtimes[1]) and now[1] == self._mtimes[1][1]
        with contextlib.suppress(OSError):
            # Removed while still held: a writer that opened this file meanwhile sees, once it has the lock,
            # that the path no longer names its file, and takes the lock again on a fresh one (acquire).
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                self.path.unlink()
                if untouched and self._mtimes[0] is not None:
                    os.utime(self.folder, ns=self._mtimes[0])
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only while empty: the command failed before writing anything
        os.close(fd)  # closing releases the flock

    def moved_to(self, folder: str | os.PathLike) -> None:
        """The locked folder was renamed to ``folder`` (a dataset built aside taking its place): keep track."""
        self.folder, self.path, self._created = Path(folder), Path(folder) / LOCK_NAME, False

    def _remove_if_created(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _mtime(folder: Path) -> tuple[int, int] | None:
    """(access, modification) times of ``folder`` in ns, or None."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_atime_ns, st.st_mtime_ns


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def lock_folder(folder: str | os.PathLike, what: str = "folder") -> FolderLock:
    """``with lock_folder(RUN, "run folder"):`` holds ``RUN``'s lock for the block (see :class:`FolderLock`)."""
    return FolderLock(folder, what)


__all__ = ["LOCK_NAME", "FolderLock", "lock_folder"]
