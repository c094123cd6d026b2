"""Shared fixtures and settings of the suite.

- ``cpu_device`` / ``cuda_device``: the devices kernel tests run on (the CPU, or the kind
  ``NEUMOURS_DEVICE`` names: cuda, vulkan) and a CUDA device for ``gpu`` tests.
- ``rng``: a random generator with a fixed seed, so a run repeats the last one;
  ``NEUMOURS_TEST_SEED=random`` draws a new seed per test, ``NEUMOURS_TEST_SEED=N`` uses N.
  The seed is printed with every failure.
- ``phantom_dataset``, ``phantom_world``, ``viewer_fit``: a phantom dataset, a tiny run trained on
  it, and the viewer tests' phantoms with a fitted tiny checkpoint, each made once per run (xdist
  workers share them through a file lock) and read-only; ``module_dataset`` and ``module_world``
  are per-module copies that tests may change.
- Order: the modules of LONGEST_MODULES run first, so that xdist's two workers share them.
- ``integration`` marker: the modules and tests listed in INTEGRATION (real Ray clusters, the
  browser, kill -9 of real processes, full and read-only file systems, the README walkthrough,
  the examples); ``pytest -m "not integration"`` is the inner loop.
- ``NEUMOURS_SHADER_CACHE``: set to ``.pytest_cache/neumours-shaders/<xdist worker>`` unless
  already set, so that subprocesses and later runs reuse compiled shaders where the device caches
  them (CUDA; slangpy's CPU device compiles its host code again in every process regardless).
- The CPU device's host code is cached in ``.pytest_cache/neumours-host-code`` by a front for the
  C++ compiler put first on PATH (tests/host_code_cache.py): every process of the run, and later
  runs, build each kernel once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from host_code_cache import install as install_host_code_cache

#: The device kind kernel tests run on: ``NEUMOURS_DEVICE=vulkan pytest tests/test_inr.py`` runs
#: them on Vulkan (or cuda); default the CPU device, as in CI.
CHOSEN = os.environ.get("NEUMOURS_DEVICE", "").strip().lower()
KERNEL_DEVICE = CHOSEN or "cpu"

ROOT = Path(__file__).resolve().parents[1]

#: The CPU device's host code, built once for every process of a run and later runs (tests/host_code_cache.py).
HOST_CODE_CACHE = ROOT / ".pytest_cache" / "neumours-host-code"

def cpu_device_only(why: str):
    """Skip a test of a property that holds on slangpy's CPU device only, while the kernel tests run on
    another kind (NEUMOURS_DEVICE): ``why`` says which property."""
    return pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason=f"NEUMOURS_DEVICE={KERNEL_DEVICE}: {why}")


#: Whole training runs are equal bit for bit on the CPU device, which runs groups in turn; GPU kinds add
#: the weight gradients' split sums with float atomics, in any order.
BITWISE_RUNS = "training runs are bit-identical on the CPU device only (GPUs add gradient sums with float atomics)"
#: The time warnings these tests check are the CPU device's.
CPU_ESTIMATES = "it checks the CPU device's time estimates and warnings"

#: The seed of ``rng`` unless NEUMOURS_TEST_SEED says otherwise.
DEFAULT_SEED = 20231207

#: Test modules (file names) whose every test is an integration test, and why.
INTEGRATION_MODULES = {
    "test_crash_safety.py": "kill -9 of real training processes",
    "test_readme_walkthrough.py": "README's commands run as written",
    "test_sweep.py": "real Ray Tune sweeps",
    "test_viewer_browser.py": "Chromium driven by Playwright",
    "test_viewer_server.py": "the viewer's real HTTP and WebSocket server, refining a fitted INR",
    "test_full_and_readonly_disks.py": "full and read-only file systems (tmpfs)",
    "test_examples.py": "the example scripts run end to end",
    "test_generalisation_benchmark.py": "a benchmark script run end to end",
    "test_boundary_loss_benchmark.py": "a benchmark script run end to end",
    "test_codegen.py": "the Slang compiler and nvcc build the kernels for CUDA and Vulkan",
}
#: Single tests (module file name, test function name) that are integration tests in otherwise quick modules.
INTEGRATION_TESTS = {
    ("test_locks.py", "test_two_trains_started_together_leave_one_consistent_run"): "two real train processes",
    ("test_locks.py", "test_two_synths_started_together_leave_one_consistent_dataset"): "two real synth processes",
    ("test_output_safety.py", "test_kill_during_export_leaves_a_partial_folder_the_next_export_removes"): "kill -9",
    ("test_untrusted_files.py", "test_a_fifo_given_as_an_input_is_refused_not_waited_on"): "three CLI child processes",
}

#: The longest modules on 2 cores (the first four a minute or more each, the rest 10-25 s). They are queued
#: first, in this order, the rest after them as collected: `--dist loadfile` starts the sweeps and the
#: browser side by side, the walkthrough and the crash tests go to whichever worker gets through its first,
#: and the short modules fill in at the end. xdist's own order (the modules with the most tests first)
#: would start these last, leaving one worker alone with two of them.
LONGEST_MODULES = (
    "test_sweep.py",
    "test_viewer_browser.py",
    "test_readme_walkthrough.py",
    "test_crash_safety.py",
    "test_examples.py",
    "test_locks.py",
    "test_bad_outputs_and_geometry.py",
    "test_untrusted_files.py",
    "test_viewer_server.py",
)


def pytest_configure(config):
    seed_from_env()  # a bad NEUMOURS_TEST_SEED is one usage error, before any test
    if "--loadscope-reorder" not in config.invocation_params.args and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist queues the modules in our order (LONGEST_MODULES)
    # Before any test imports neumours.device, so that every device of this process and of its children uses it.
    # One folder per xdist worker (two processes never write one cache file at the same time); a folder the
    # user set is kept. Workers inherit the controller's environment, hence the flag saying it is ours.
    if "NEUMOURS_SHADER_CACHE" not in os.environ or os.environ.get("NEUMOURS_SHADER_CACHE_BY_CONFTEST"):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        os.environ["NEUMOURS_SHADER_CACHE"] = str(ROOT / ".pytest_cache" / "neumours-shaders" / worker)
        os.environ["NEUMOURS_SHADER_CACHE_BY_CONFTEST"] = "1"
    # The CPU device's host code: one cache for all workers, their subprocesses and later runs
    # (tests/host_code_cache.py); the controller puts its compiler fronts first on PATH, workers inherit it.
    fronts = str(install_host_code_cache(HOST_CODE_CACHE))
    if os.environ.get("PATH", "").split(os.pathsep)[0] != fronts:
        os.environ["PATH"] = os.pathsep.join(filter(None, [fronts, os.environ.get("PATH")]))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    for item in items:
        name = item.path.name
        if name in INTEGRATION_MODULES or (name, item.originalname) in INTEGRATION_TESTS:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cpu_device():
    """The kernel-test device: slangpy's CPU device (every kernel test runs on it at a small size), or
    the kind ``NEUMOURS_DEVICE`` names; a kind that is not available fails with its reason."""
    from neumours.device import get_device

    return get_device(KERNEL_DEVICE)


@pytest.fixture(autouse=True)
def _fp32_kernel_tests_on_cuda(request, monkeypatch):
    """Kernel tests check the fp32 kernels against float64 at fp32 tolerances: on CUDA, where precision
    "auto" means the bf16 tensor cores (tested at bf16 tolerances by the `gpu` tests), they pin it to fp32."""
    if KERNEL_DEVICE == "cuda" and "cpu_device" in request.fixturenames and "cuda_device" not in request.fixturenames:
        import neumours.model.inr as inr

        resolve = inr.resolve_precision
        monkeypatch.setattr(inr, "resolve_precision",
                            lambda precision, device: resolve("fp32" if precision == "auto" else precision, device))


@pytest.fixture(scope="session")
def cuda_device():
    """A CUDA device, or skip: `gpu` tests run on the GPU machine only (not while NEUMOURS_DEVICE names
    another kind, which every device request would then get)."""
    from neumours.device import get_device
    from neumours.errors import DeviceUnavailableError

    if CHOSEN not in ("", "cuda"):
        pytest.skip(f"NEUMOURS_DEVICE={CHOSEN}: the gpu tests need CUDA")
    try:
        return get_device("cuda")
    except DeviceUnavailableError as exc:
        pytest.skip(f"no CUDA device: {exc}")


def seed_from_env() -> int | None:
    """The seed NEUMOURS_TEST_SEED asks for: an integer, DEFAULT_SEED when unset, None for ``random``."""
    text = os.environ.get("NEUMOURS_TEST_SEED", "").strip().lower()
    if not text:
        return DEFAULT_SEED
    if text == "random":
        return None
    try:
        return int(text)
    except ValueError:
        raise pytest.UsageError(f"NEUMOURS_TEST_SEED={text!r}: an integer or 'random'") from None



@pytest.fixture
def rng(request):
    """A random generator per test, fixed-seeded by default; the seed is printed on failure."""
    seed = seed_from_env()
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed} (NEUMOURS_TEST_SEED={seed} repeats it)")
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(("seed", f"rng seed {seeds[0]}: NEUMOURS_TEST_SEED={seeds[0]} repeats this run"))
    return report


#: The shared phantom dataset: 3 cases of this shape and seed (a tiny run is trained on it once).
WORLD_SHAPE = (24, 24, 16)
WORLD_SEED = 11


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once for the whole run: under xdist the workers share
    the parent of their temporary folders, and a file lock lets the first one make it while the others wait."""
    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".complete").write_text("")
    return folder


def _case_folders(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """3 phantom cases (WORLD_SHAPE, seed WORLD_SEED), written once per run (shared by xdist workers).

    Read-only: a module that may change it takes :func:`module_dataset` or :func:`module_world`.
    Returns {"root", "data", "cases"}.
    """
    from neumours.data.phantom import write_dataset

    root = made_once(tmp_path_factory, "phantom_dataset", lambda folder: write_dataset(
        folder / "data", 3, shape=WORLD_SHAPE, seed=WORLD_SEED, progress=False))
    return {"root": root, "data": root / "data", "cases": _case_folders(root / "data")}


@pytest.fixture(scope="session")
def phantom_world(phantom_dataset, tmp_path_factory):
    """The phantom dataset and a run of the tiny preset trained 2 steps on it (validation at step 2).

    Made once per run (shared by xdist workers); read-only, like :func:`phantom_dataset`.
    Returns {"root", "data", "run", "cases"}.
    """
    from neumours.cli.main import main

    def train(folder: Path) -> None:
        assert main(["train", "--data", str(phantom_dataset["data"]), "--out", str(folder / "run"), "--preset",
                     "tiny", "--steps", "2", "--val-every", "2", "--device", "cpu"]) == 0

    return {**phantom_dataset, "run": made_once(tmp_path_factory, "phantom_run", train) / "run"}


@pytest.fixture(scope="session")
def viewer_fit(tmp_path_factory, cpu_device):
    """tests/viewer_support.py's two phantoms and a tiny INR fitted 60 steps to the first, made once per run
    (shared by xdist workers); read-only. Returns {"data", "cases", "checkpoint"}."""
    from viewer_support import fitted_checkpoint, write_phantoms

    def make(folder: Path) -> None:
        (folder / "data").mkdir()
        cases = write_phantoms(folder / "data")
        fitted_checkpoint(cases[0], folder / "tiny.safetensors", cpu_device, steps=60)

    root = made_once(tmp_path_factory, "viewer_fit", make)
    return {"data": root / "data", "cases": _case_folders(root / "data"), "checkpoint": root / "tiny.safetensors"}


def _copy_cases(dataset: dict, dest: Path) -> dict:
    shutil.copytree(dataset["data"], dest / "data")
    return {"root": dest, "data": dest / "data", "cases": [dest / "data" / case.name for case in dataset["cases"]]}


@pytest.fixture(scope="module")
def module_dataset(phantom_dataset, tmp_path_factory):
    """A copy of the phantom dataset for one module ({"root", "data", "cases"}), free to change."""
    return _copy_cases(phantom_dataset, tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def module_world(phantom_world, tmp_path_factory):
    """A copy of the phantom dataset and run for one module ({"root", "data", "run", "cases"}), free to
    change. The run's record of its data names the shared dataset; resuming checks case ids and
    headers, which the copy keeps."""
    world = _copy_cases(phantom_world, tmp_path_factory.mktemp("world"))
    shutil.copytree(phantom_world["run"], world["root"] / "run")
    return {**world, "run": world["root"] / "run"}
