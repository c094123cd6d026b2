"""A compile cache for the host code of slangpy's CPU device, for the test suite.

On the CPU device Slang turns every kernel into C++ and builds it with the system compiler
(``g++ ... -O3 -shared -o /tmp/libslang-generated-*.so /tmp/unknown-*.cpp``) in every new
process; slangpy keeps no cache of the result. The suite starts many processes (xdist workers,
kill -9 and resume subprocesses, Ray trials, the README walkthrough's commands), each building
the same kernels again, which is most of the time of a short CPU training run.

:func:`install` puts a front for each C++ compiler Slang may run (``g++``, ``clang++``, those on
PATH) in a folder it returns, to go first on PATH. Run as a script (``python host_code_cache.py
NAME CACHE_DIR ARGS...``), the front builds a shared library only when its key is new: the real
compiler (path, size, modification time), its arguments and the source's bytes (the output path
and the source's temporary name left out). Otherwise it copies the library built before, the same
bytes that compiler would write. Any other call (``g++ -v``, ``-fsyntax-only``, a build that is not
Slang's, such as the tests' CUDA-emulation probes, whose headers the key would miss) goes to the
real compiler unchanged. Entries are written under a temporary name and renamed, so processes that
build the same kernel at once each leave a whole file.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

#: The compilers Slang looks for to build CPU host code.
COMPILERS = ("g++", "clang++")
#: How the libraries Slang builds are named. Only those are cached: their generated source is the
#: whole input (a build of a source that includes other files, as the tests' own probes do, is keyed
#: by more than its source's bytes, so it always runs the compiler).
SLANG_OUTPUT = "libslang-generated-"
SOURCE_SUFFIXES = (".cpp", ".cc", ".cxx", ".c")


def real_compiler(name: str, skip: Path) -> str | None:
    """The first ``name`` on PATH outside the folder ``skip`` (where the fronts are)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and Path(folder).resolve() != skip:
            found = shutil.which(name, path=folder)
            if found:
                return found
    return None


def install(cache: Path) -> Path:
    """Write the fronts for the compilers on PATH into ``cache/bin`` (the built libraries go to
    ``cache/lib``); returns ``cache/bin``, for the front of PATH."""
    bin_dir = cache / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMPILERS:
        if real_compiler(name, bin_dir.resolve()) is None:
            continue
        script = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(Path(__file__).resolve()))} "
                  f"{name} {shlex.quote(str(cache.resolve()))} \"$@\"\n")
        front = bin_dir / name
        if not front.is_file() or front.read_text() != script:
            temporary = bin_dir / f".{name}.{os.getpid()}"
            temporary.write_text(script)
            temporary.chmod(0o755)
            os.replace(temporary, front)
    return bin_dir


def key(compiler: str, args: list[str], out: str, source: str) -> str:
    """The cache key of one build: the compiler, the arguments, the source's bytes."""
    h = hashlib.sha256()
    stat = os.stat(compiler)
    h.update(f"{compiler}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    for arg in args:
        if arg == out:
            h.update(b"\0<output>\0")
        elif arg == source:
            h.update(b"\0<source>\0" + Path(source).read_bytes())
        else:
            h.update(b"\0" + arg.encode())
    return h.hexdigest()


#: Counts fronts inside fronts, so that a compiler on PATH that runs ``g++`` again fails instead of looping.
DEPTH_ENV = "NEUMOURS_HOST_CODE_DEPTH"


def main(argv: list[str]) -> int:
    name, cache, args = argv[0], Path(argv[1]), argv[2:]
    depth = int(os.environ.get(DEPTH_ENV, "0")) + 1
    if depth > 3:
        print(f"{name}: {Path(__file__).name}: the compiler found on PATH runs this front again", file=sys.stderr)
        return 127
    os.environ[DEPTH_ENV] = str(depth)
    compiler = real_compiler(name, (cache / "bin").resolve())
    if compiler is None:
        print(f"{name}: not found on PATH", file=sys.stderr)
        return 127
    sources = [a for a in args if a.endswith(SOURCE_SUFFIXES) and Path(a).is_file()]
    out = args[args.index("-o") + 1] if "-o" in args[:-1] else ""
    if "-shared" not in args or len(sources) != 1 or not Path(out).name.startswith(SLANG_OUTPUT):
        os.execv(compiler, [compiler, *args])  # its own path: g++ finds cc1plus from it
    entry = cache / "lib" / (key(compiler, args, out, sources[0]) + ".so")
    if entry.is_file():
        shutil.copyfile(entry, out)
        return 0
    status = subprocess.call([compiler, *args])
    if status == 0:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            temporary = entry.with_name(f".{entry.name}.{os.getpid()}")
            shutil.copyfile(out, temporary)
            os.replace(temporary, entry)
        except OSError:
            pass  # a cache that cannot be written only costs the next build its time
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
