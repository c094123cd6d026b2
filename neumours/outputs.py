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
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------
# The output-safety rule: no output lands on an input, on another output, or in a folder of another owner
# ---------------------------------------------------------------------------

#: Marked folders: kind -> (marker file, files of which one must lie beside it; empty: the marker alone).
#: A run's ``config.toml`` alone could be any user's configuration file, so a run also needs one of its outputs
#: (or the lock file that ``train`` takes before its first write).
FOLDER_MARKERS = {
    "run": ("config.toml", ("checkpoint.json", "checkpoints", "last.safetensors", "last.state.pt", "metrics.csv",
                            ".neumours.lock")),
    "sweep": ("sweep.json", ()),
    "dataset": ("synth.toml", ()),
}


def folder_kind(folder: str | os.PathLike) -> str | None:
    """``"run"``, ``"sweep"`` or ``"dataset"`` when ``folder`` carries that kind's marker
    (:data:`FOLDER_MARKERS`), else None."""
    folder = Path(folder)
    for kind, (marker, beside) in FOLDER_MARKERS.items():
        if (folder / marker).is_file() and (not beside or any((folder / name).exists() for name in beside)):
            return kind
    return None


@dataclass(frozen=True)
class Output:
    """One thing a command writes, for :func:`check_outputs`.

    Attributes:
        path: the file or folder.
        what: how messages name it (``"--out"``, ``"--probs"``, ``"report file"``).
        folder: the command writes the whole folder (everything under it is the command's own, so an input
            inside it is refused).
        kind: the kind of marked folder (``"run"``, ``"sweep"``, ``"dataset"``) this folder output may already
            be (and be replaced whole as); None: it must not be a marked folder.
    """

    path: Path
    what: str
    folder: bool = False
    kind: str | None = None


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _stat(path: Path):
    try:
        return os.stat(path)
    except OSError:
        return None


def check_outputs(outputs, inputs=(), may_write_in=()) -> None:
    """The output-safety rule, checked before a command does any work (symlinks followed, ``..`` resolved).

    Refused, in one line naming both paths:

    * an output that is an input (the same path or the same file through a link), or a folder output that
      holds an input (it is the command's to fill or replace);
    * two outputs of the call that are one path;
    * an output inside a marked run, sweep or dataset folder (:func:`folder_kind`) that the command does not
      own: not one of its folder outputs of that kind and not in ``may_write_in``; a folder output that is a
      marked folder of another kind than its :attr:`Output.kind`.

    Args:
        outputs: :class:`Output` items (None entries are skipped).
        inputs: ``(description, path)`` pairs: every file the command reads (case files, checkpoint, config).
        may_write_in: folders the command may write into although it reads them (``plot``'s runs; the
            folders around them are not checked).

    Raises:
        NeumoursError: the first violation.
    """
    outputs = [o for o in outputs if o is not None and o.path is not None]
    real_out = [_real(o.path) for o in outputs]
    by_path, by_inode = {}, {}  # an input by its resolved path, and by (device, inode)
    for what, path in inputs:
        if path is None:
            continue
        real = _real(path)
        by_path.setdefault(real, (what, Path(path)))
        st = _stat(real)
        if st is not None:
            by_inode.setdefault((st.st_dev, st.st_ino), (what, Path(path)))
    seen: dict[Path, Output] = {}
    for out, real in zip(outputs, real_out):
        name = f"{out.path}: {out.what}"
        if out.folder:
            for inp, (what, path) in by_path.items():
                if _inside(inp, real):
                    raise NeumoursError(f"{name} holds input files ({path}: {what}); choose a separate folder")
        elif real in by_path:
            what, path = by_path[real]
            raise NeumoursError(f"{name} would overwrite the input {path} ({what}); choose another path")
        st = None if out.folder else _stat(real)
        if st is not None and (st.st_dev, st.st_ino) in by_inode:
            what, path = by_inode[(st.st_dev, st.st_ino)]
            raise NeumoursError(f"{name} is the same file as the input {path} ({what}); choose another path")
        other = seen.setdefault(real, out)
        if other is not out:
            raise NeumoursError(f"{out.path}: {out.what} and {other.what} ({other.path}) are the same path; "
                                "give each its own")
    owned = [real for out, real in zip(outputs, real_out) if out.folder]
    allowed = [_real(p) for p in may_write_in]
    for out, real in zip(outputs, real_out):
        if out.folder:
            kind = folder_kind(real)
            if kind is not None and kind != out.kind:
                wanted = f"a new folder or a {out.kind} folder" if out.kind else "a new folder"
                raise NeumoursError(f"{out.path}: {out.what} is a {kind} folder (it holds {FOLDER_MARKERS[kind][0]}); "
                                    f"give {wanted}")
        for folder in real.parents:
            if folder in allowed:  # e.g. a run that plot reads (also when it lies in a sweep)
                break
            kind = folder_kind(folder)
            if kind is None or any(_inside(folder, own) for own in owned):
                continue
            raise NeumoursError(f"{out.path}: {out.what} lies inside the {kind} folder {folder}, which this command "
                                "does not write; choose a path outside it")


def files_under(folder: str | os.PathLike | None, what: str) -> list[tuple[str, Path]]:
    """``(what, path)`` of every file under ``folder`` (``folder`` itself when it is not a folder), as inputs for
    :func:`check_outputs`."""
    if folder is None or not os.path.isdir(folder):
        return [] if folder is None else [(what, Path(folder))]
    return [(what, Path(root) / name) for root, _, names in os.walk(folder, followlinks=False) for name in names]
