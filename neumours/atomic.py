"""Atomic file writes: write to a temporary name in the target folder, then rename.

A reader (or a crashed run) never sees a half-written file: either the old file
or the complete new one is there. Used for NIfTI outputs, PNGs, checkpoints and
metrics.

Three details matter for results on shared machines and after crashes:

* Files are created with mode 0666 minus the user's umask (0644 with the usual
  umask 022), as ``open()`` would, not ``tempfile.mkstemp``'s 0600.
* The temporary name holds the writer's process id,
  ``.<name>.<pid>-<random>.tmp<suffix>`` (with ``<name>`` shortened to its
  start and a hash when the whole would pass the file system's name limit, so
  every name that is legal for the target is legal for its temporary); a temporary file whose process no
  longer runs is left over from a crash (``kill -9``, power loss) and is
  removed the next time anything writes that target (:func:`remove_stale_temporaries`).
* Any ``OSError`` while creating, writing or renaming (no space left,
  read-only file system, a file where a folder should be, ...) becomes one
  :class:`~neumours.errors.NeumoursError` line naming the target, and the
  temporary file is removed: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from neumours.outputs import write_error

#: Marks temporary names: ``.<target name>.<pid>-<hex>.tmp<suffix>``.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?P<suffix>.*)$")


#: File-name limit (bytes) where the folder cannot be asked (it does not exist yet): Linux's NAME_MAX.
_NAME_MAX = 255


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _NAME_MAX


def _target_part(name: str, room: int) -> str:
    """``name`` if it fits in ``room`` bytes, else its start, ``~`` and 8 hex digits of its SHA-256 (the
    same for the same name, so the temporaries of one target are still recognised as its own)."""
    if len(name.encode()) <= room:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    start = name.encode()[: max(1, room - 9)].decode(errors="ignore")
    return f"{start}~{digest}"


def temporary_name(target: Path, pid: int | None = None) -> Path:
    """A fresh temporary path beside ``target`` that keeps its full suffix (e.g. ``.nii.gz``) and fits the
    file system's name limit whenever ``target``'s name does."""
    suffix = "".join(target.suffixes)
    if len(suffix) > 16:  # a name with many dots ("a.b.c.d..."): its last suffix only
        suffix = target.suffix[:16]
    tail = f".{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}.tmp{suffix}"
    room = _name_max(target.parent) - 1 - len(tail.encode())
    return target.with_name(f".{_target_part(target.name, room)}{tail}")


def _shortened(folder, target: str, match: re.Match) -> str:
    """What :func:`temporary_name` made of ``target`` in the temporary name ``match`` matched."""
    tail_bytes = len(match.string.encode()) - len(match["target"].encode()) - 1
    return _target_part(target, _name_max(Path(folder)) - 1 - tail_bytes)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`temporary_name`'s."""
    return _TEMP_RE.match(name) is not None


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove temporary files in ``folder`` whose writing process is gone (a crash left them).

    Args:
        folder: the folder to clean (missing: nothing to do).
        target: only temporaries of this file name (default: every target).

    Returns:
        The removed paths. Temporaries of running processes (another writer at
        work right now) are kept; files that cannot be removed are skipped.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or (target is not None and match["target"] not in (target, _shortened(folder, target,
                                                                                                  match))):
            continue
        if _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with an OSError turned into one NeumoursError line naming ``path``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


@contextlib.contextmanager
def removed_if_unfinished(folder: str | os.PathLike) -> Iterator[Path]:
    """Remove ``folder`` again if the block fails and the folder was created in it and is empty.

    A write that fails on a full disk must not leave an empty output folder behind (``evaluate --out``).
    """
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds while empty
        raise


def create_file(path: Path) -> None:
    """Create ``path`` empty and exclusively, with mode 0666 minus the umask (as ``open(path, "x")``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the full suffix of ``path`` (e.g. ``.nii.gz``) so
    libraries that pick a format from the file name still do. The file exists
    (empty, mode 0666 minus the umask) when the block starts. On an exception
    the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` is re-raised as :class:`~neumours.errors.NeumoursError` naming ``path``.
    """
    target = Path(path)
    make_folder(target.parent)
    remove_stale_temporaries(target.parent, target.name)
    tmp = temporary_name(target)
    try:
        create_file(tmp)
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(target, exc) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_files(files: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one unit: every temporary file first, then the renames.

    A failure while writing (no space left, ...) leaves none of the targets
    changed and no temporary file behind. The renames themselves (same
    folder, microseconds apart) are not one atomic step: a crash between them
    can leave some targets new and others old, so readers that must know
    (checkpoints) also record hashes (see :mod:`neumours.train.checkpoints`).

    Returns:
        The target paths, in the order given.
    """
    targets = [Path(p) for p in files]
    done: list[tuple[Path, Path]] = []
    try:
        for target, data in zip(targets, files.values()):
            make_folder(target.parent)
            remove_stale_temporaries(target.parent, target.name)
            tmp = temporary_name(target)
            try:
                create_file(tmp)
                done.append((tmp, target))
                with open(tmp, "wb") as f:
                    f.write(data)
            except OSError as exc:
                raise write_error(target, exc) from None
        for tmp, target in done:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise write_error(target, exc) from None
    except BaseException:
        for tmp, _ in done:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return targets


__all__ = ["atomic_path", "atomic_write_files", "atomic_write_bytes", "atomic_write_text", "create_file", "is_temporary",
           "make_folder", "remove_stale_temporaries", "removed_if_unfinished", "temporary_name"]
