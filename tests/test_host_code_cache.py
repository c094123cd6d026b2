"""tests/host_code_cache.py, the suite's cache of the CPU device's host code: a build it has seen gives
the bytes the compiler gave, without running it; a changed source or flag is built anew; any other
call reaches the real compiler unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import HOST_CODE_CACHE
from host_code_cache import install, real_compiler

FRONTS = (HOST_CODE_CACHE / "bin").resolve()  # conftest's compiler fronts, first on PATH

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")

SOURCE = 'extern "C" int answer() { return %d; }\n'


def build(front, tmp_path, value: int, *flags: str):
    source = tmp_path / f"unknown-{os.urandom(4).hex()}.cpp"  # Slang's temporary names differ every time
    source.write_text(SOURCE % value)
    out = tmp_path / f"libslang-generated-{os.urandom(4).hex()}.so"
    done = subprocess.run([str(front), *flags, "-O2", "-o", str(out), "-shared", "-fPIC", str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_a_build_seen_before_is_copied_and_a_new_one_is_built(tmp_path, monkeypatch):
    # The "real" compiler: g++ behind a script that counts its runs.
    real = tmp_path / "real"
    real.mkdir()
    runs = tmp_path / "runs"
    system = real_compiler("g++", FRONTS)  # not conftest's front, which would find this script again
    (real / "g++").write_text(f'#!/bin/sh\necho run >> "{runs}"\nexec "{system}" "$@"\n')
    (real / "g++").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(real), os.environ["PATH"]]))
    cache = tmp_path / "cache"
    front = install(cache) / "g++"

    def count():
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    first = build(front, tmp_path, 42)
    assert count() == 1 and len(list((cache / "lib").iterdir())) == 1
    assert build(front, tmp_path, 42) == first and count() == 1  # copied: the same bytes, no build
    assert build(front, tmp_path, 43) != first and count() == 2  # another source: built
    build(front, tmp_path, 42, "-DANOTHER_FLAG=1")
    assert count() == 3 and len(list((cache / "lib").iterdir())) == 3  # another flag: built


def test_other_calls_reach_the_real_compiler(tmp_path):
    front = install(tmp_path / "cache") / "g++"
    source = tmp_path / "bad.cpp"
    source.write_text("int main() { return undefined_name; }\n")
    direct = subprocess.run([real_compiler("g++", FRONTS), "-fsyntax-only", str(source)], capture_output=True, text=True)
    fronted = subprocess.run([str(front), "-fsyntax-only", str(source)], capture_output=True, text=True)
    assert fronted.returncode == direct.returncode != 0 and "undefined_name" in fronted.stderr
    assert subprocess.run([str(front), "--version"], capture_output=True, text=True).stdout == \
        subprocess.run([real_compiler("g++", FRONTS), "--version"], capture_output=True, text=True).stdout


def test_a_library_that_is_not_slangs_is_always_built(tmp_path):
    """Only Slang's libraries are cached: another shared library (the CUDA-emulation probes of the tests
    include headers that a key of the source's bytes would miss) follows a changed header at once."""
    front = install(tmp_path / "cache") / "g++"
    (tmp_path / "value.h").write_text("#define VALUE 1\n")
    source = tmp_path / "probe.cpp"
    source.write_text('#include "value.h"\nextern "C" int answer() { return VALUE; }\n')
    out = tmp_path / "libprobe.so"
    command = [str(front), "-O2", "-shared", "-fPIC", "-I", str(tmp_path), str(source), "-o", str(out)]
    assert subprocess.run(command, capture_output=True).returncode == 0
    first = out.read_bytes()
    (tmp_path / "value.h").write_text("#define VALUE 2\n")
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert out.read_bytes() != first and not (tmp_path / "cache" / "lib").exists()
