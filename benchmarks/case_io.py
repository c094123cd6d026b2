"""A case's host-side I/O: reading its four ``.nii.gz`` modalities, and writing a label file.

Reading: the four modalities of one phantom case decoded one after another in one thread
(``read_image_volume`` per file, then ``np.stack``: what a plain loop does) against
:func:`neumours.data.load_case` (a thread per file, ISA-L inflating without the GIL, each
modality cast straight into its slice of the case's array). Writing: a realistic label
volume (the phantom's truth corrupted like raw INR output, ``denoise_defaults.corrupt``)
through :func:`neumours.data.save_label`, as a C-ordered array (what ``download_labels``
gave before: nibabel transposes it on the host) and as a Fortran-ordered one (what the
segmenter downloads now: reordered on the device), then ``write_nifti`` at every ISA-L
gzip level and zlib's levels 1 and 6 for the file sizes and times. Every written file
is read back with nibabel and compared voxel for voxel.

Files are read from the page cache (written just before), so the read is inflate +
decode, not the disk. No device is used: the numbers are the host's (say which machine,
and whether it was busy).

    python benchmarks/case_io.py [--shape 240 240 155] [--repeats 7] [--json case_io.json]
    python benchmarks/case_io.py --shape 32 32 24 --repeats 1 --json /tmp/x.json   # smoke test
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402
from denoise_defaults import LEVELS, corrupt  # noqa: E402

from neumours.atomic import atomic_write_bytes  # noqa: E402
from neumours.data import MODALITIES, load_case, save_label  # noqa: E402
from neumours.data.nifti import GZIP_LEVEL, read_image_volume, read_label_volume  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402


def median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median CPU seconds (the process's, every thread: the work done, which
    a busy machine disturbs less than the wall time) of ``repeats`` calls after one warm-up, and the
    last call's result."""
    result = fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu), result


def read_sequential(files: list[Path]) -> np.ndarray:
    return np.stack([read_image_volume(f)[0] for f in files])


def gzip_writer(level: int | str):
    """``write_nifti``'s steps with another compressor: nibabel's bytes, gzip, an atomic write."""
    from isal import igzip

    def write(img: nib.Nifti1Image, path: Path) -> None:
        blob = img.to_bytes()
        blob = gzip.compress(blob, int(level[4:])) if isinstance(level, str) else igzip.compress(blob, level)
        atomic_write_bytes(path, blob)
    return write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default="case_io.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="case_io_"))
    case_dir = write_dataset(work / "data", 1, shape=tuple(args.shape), seed=0, progress=False)[0]
    seg_file = next(case_dir.glob("*-seg.nii.gz"))
    truth = read_label_volume(seg_file)[0]
    seg_file.unlink()  # the segmenter reads four modalities
    files = [next(case_dir.glob(f"*-{m}.nii.gz")) for m in MODALITIES]
    results = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "nibabel": nib.__version__, "shape": args.shape, "repeats": args.repeats,
               "compressed_mb": sum(f.stat().st_size for f in files) / 1e6}

    seq_s, seq_cpu, seq = median_time(lambda: read_sequential(files), args.repeats)
    par_s, par_cpu, case = median_time(lambda: load_case(case_dir), args.repeats)
    if not np.array_equal(seq, case.images):
        raise SystemExit("load_case and the sequential reads disagree")
    results["read"] = {"sequential_s": seq_s, "parallel_s": par_s, "ratio": seq_s / par_s,
                       "sequential_cpu_s": seq_cpu, "parallel_cpu_s": par_cpu}
    rows = [{"step": "read 4 modalities, one thread", "ms": f"{seq_s * 1e3:.1f}", "ratio": "1.00",
             "CPU ms": f"{seq_cpu * 1e3:.1f}"},
            {"step": "read 4 modalities, load_case", "ms": f"{par_s * 1e3:.1f}", "ratio": f"{seq_s / par_s:.2f}",
             "CPU ms": f"{par_cpu * 1e3:.1f}"}]

    brain = case.images.any(0)
    labels = corrupt(truth, brain, LEVELS["heavy"], np.random.default_rng(0))
    c_order, f_order = np.ascontiguousarray(labels), np.asfortranarray(labels)
    out = work / "labels.nii.gz"
    write = {}
    for name, array in (("C-ordered labels (before)", c_order), ("Fortran-ordered labels (now)", f_order)):
        seconds, cpu, _ = median_time(lambda: save_label(array, out, like=case), args.repeats)
        back = np.asanyarray(nib.load(out).dataobj)
        if not np.array_equal(back, labels):
            raise SystemExit(f"{name}: the written labels differ from the array")
        write[name] = {"write_s": seconds, "cpu_s": cpu}
    base = write["C-ordered labels (before)"]["write_s"]
    for name, r in write.items():
        rows.append({"step": f"save_label, {name}", "ms": f"{r['write_s'] * 1e3:.1f}",
                     "ratio": f"{base / r['write_s']:.2f}", "CPU ms": f"{r['cpu_s'] * 1e3:.1f}"})
    results["save_label_s"] = write

    header = case.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(f_order, case.affine, header)
    levels = {}
    for level in (0, 1, 2, 3, "zlib1", "zlib6"):
        seconds, cpu, _ = median_time(lambda: gzip_writer(level)(img, out), args.repeats)
        back = np.asanyarray(nib.load(out).dataobj)
        if not np.array_equal(back, labels):
            raise SystemExit(f"gzip level {level}: the written labels differ")
        levels[str(level)] = {"write_s": seconds, "cpu_s": cpu, "bytes": out.stat().st_size}
    base = levels[str(GZIP_LEVEL)]["write_s"]
    for level, r in levels.items():
        label = f"ISA-L level {level}" if level.isdigit() else f"zlib level {level[4:]}"
        used = " (used)" if level == str(GZIP_LEVEL) else ""
        rows.append({"step": f"write, {label}{used}", "ms": f"{r['write_s'] * 1e3:.1f}",
                     "ratio": f"{base / r['write_s']:.2f}", "CPU ms": f"{r['cpu_s'] * 1e3:.1f}",
                     "kB": f"{r['bytes'] / 1e3:.0f}"})
    results["write_levels"] = levels

    print(f"{platform.node()}, {os.cpu_count()} CPUs, {tuple(args.shape)} phantom case "
          f"({results['compressed_mb']:.1f} MB compressed), medians of {args.repeats} (ms: wall; ratio: of wall "
          "times, > 1 is faster; CPU ms: every thread's)")
    print_table(rows, ["step", "ms", "ratio", "CPU ms", "kB"])
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
