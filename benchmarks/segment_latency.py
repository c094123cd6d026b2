"""End-to-end segmentation latency for one case: four .nii.gz on disk -> denoised labels .nii.gz written.

Stages: load (read + inflate the four modalities), upload, normalise (brain
z-score), inference (INR over every voxel, chunked along axis 0), argmax,
denoise (on the device for Slang), download, write (torch: download, then
denoise with scipy on the host). Two pipelines in the same run, same case, same
weights, identical except for the device work:

* **Slang**: ``neumours.infer.segment.Segmenter`` (VolumeCache: ``grid_inputs`` +
  INR GEMM kernels + ``argmax_labels``; z-score by ``normalise_kernels.slang``).
* **torch**: ``TorchINR`` (fp32 with torch's defaults, i.e. TF32 convolutions, and
  bf16 autocast) on patches made by ``unfold`` of the padded volume, arg-max in
  torch, z-score in torch (float64 statistics).

Paper reference (Apple M4 Pro, MPS): 2.8 s per case, + 0.28 s denoising.
The case is a phantom written by ``neumours.data.phantom.write_dataset`` (its
label file removed, so only the four modalities are read) and the weights are
random (``INR(INRConfig.paper())``): latency does not depend on training. Files
are read from the page cache (written just before), so "load" is inflate +
parse, not disk.

    python benchmarks/segment_latency.py [--repeats 5] [--json segment_latency.json]
    python benchmarks/segment_latency.py --device cpu --shape 32 32 24 --config tiny --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.data import MODALITIES, load_case, save_label  # noqa: E402
from neumours.data.nifti import read_label_volume  # noqa: E402
from neumours.data.phantom import make_case, write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.infer.denoise import denoise  # noqa: E402
from neumours.infer.segment import STAGES, Segmenter, write_segmentation  # noqa: E402
from neumours.model.checkpoint import save_checkpoint  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402


def slang_pipeline(seg: Segmenter, case_dir: Path, out: Path, timings: bool):
    """One end-to-end run; returns (total seconds, stage seconds, raw labels)."""
    start = time.perf_counter()
    result = seg(case_dir, denoise=True, timings=timings)
    write_segmentation(result, out)
    total = time.perf_counter() - start
    return total, dict(result.timings), result.raw_labels


def torch_zscore(images: torch.Tensor) -> torch.Tensor:
    """neumours.data.normalise in torch: brain = any modality nonzero, float64 statistics."""
    mask = (images != 0).any(0)
    count = mask.sum().clamp(min=1).double()
    x = images.double() * mask
    mean = x.sum((1, 2, 3)) / count
    var = ((x * x).sum((1, 2, 3)) / count - mean**2).clamp(min=0)
    std = var.sqrt()
    scale = torch.where(std > 1e-6, 1.0 / std.clamp(min=1e-6), torch.ones_like(std))
    return (((images.double() - mean[:, None, None, None]) * scale[:, None, None, None]) * mask).float()


@torch.no_grad()
def torch_labels(model: TorchINR, volume: torch.Tensor, chunk_points: int, bf16: bool) -> torch.Tensor:
    """Arg-max labels (X, Y, Z) uint8 of TorchINR over every voxel; patches by unfold, slabs along axis 0."""
    _, X, Y, Z = volume.shape
    dev = volume.device
    padded = torch.nn.functional.pad(volume, (1, 1, 1, 1, 1, 1))
    axes = [torch.linspace(-1, 1, s, device=dev) for s in (X, Y, Z)]
    labels = torch.empty((X, Y, Z), dtype=torch.uint8, device=dev)
    slabs = max(1, chunk_points // (Y * Z))
    for x0 in range(0, X, slabs):
        x1 = min(X, x0 + slabs)
        patches = padded[:, x0:x1 + 2].unfold(1, 3, 1).unfold(2, 3, 1).unfold(3, 3, 1)
        patches = patches.permute(1, 2, 3, 0, 4, 5, 6).reshape(-1, 4, 3, 3, 3)
        gx, gy, gz = torch.meshgrid(axes[0][x0:x1], axes[1], axes[2], indexing="ij")
        coords = torch.stack([gx, gy, gz], -1).reshape(-1, 3)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(coords, patches)
        labels[x0:x1] = logits.argmax(1).to(torch.uint8).view(x1 - x0, Y, Z)
    return labels


def torch_pipeline(model: TorchINR, case_dir: Path, out: Path, chunk_points: int, bf16: bool, timings: bool):
    dev = next(model.parameters()).device

    def sync():
        if timings and dev.type == "cuda":
            torch.cuda.synchronize()

    stages, start = {}, time.perf_counter()
    t0 = start

    def mark(stage):
        nonlocal t0
        sync()
        now = time.perf_counter()
        stages[stage] = now - t0
        t0 = now

    case = load_case(case_dir)
    mark("load")
    images = torch.from_numpy(case.images).to(dev)
    mark("upload")
    volume = torch_zscore(images)
    mark("normalise")
    labels = torch_labels(model, volume, chunk_points, bf16)
    mark("inference")  # arg-max is fused into the chunk loop here
    raw = labels.cpu().numpy()
    mark("download")
    clean = denoise(raw, spacing=case.spacing)
    mark("denoise")
    save_label(clean, out, like=case)
    mark("write")
    return time.perf_counter() - start, stages, raw


def _slang_chunk(cfg: INRConfig, shape, chunk_points: int) -> int:
    """Points per chunk that VolumeCache will really use (whole slabs, buffer cap)."""
    from neumours.infer.cache import MAX_BUFFER_BYTES

    slab = shape[1] * shape[2]
    points = min(chunk_points, MAX_BUFFER_BYTES // (4 * max(cfg.hidden_width, cfg.patch_dim)))
    return slab * max(1, min(points // slab, shape[0]))


def median_stages(runs: list[dict]) -> dict:
    return {s: statistics.median(r[s] for r in runs) for s in STAGES if all(s in r for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--repeats", type=int, default=5)
    add_device_argument(parser, default="cuda")
    parser.add_argument("--config", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--chunks", type=int, nargs="*", default=[1 << 20, 1 << 21, 1 << 22],
                        help="INR points per chunk to compare (Slang and torch)")
    parser.add_argument("--json", default="segment_latency.json")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    tdev = torch.device("cuda" if args.device == "cuda" else "cpu")
    config = INRConfig.paper() if args.config == "paper" else INRConfig.tiny()
    work = Path(tempfile.mkdtemp(prefix="segment_latency_"))
    t0 = time.perf_counter()
    case_dir = write_dataset(work / "data", 1, shape=tuple(args.shape), seed=0, progress=False)[0]
    truth = None
    for seg_file in case_dir.glob("*-seg.nii.gz"):
        truth = read_label_volume(seg_file)[0]
        seg_file.unlink()
    print(f"phantom {tuple(args.shape)} written in {time.perf_counter() - t0:.1f} s: "
          f"{', '.join(sorted(p.name for p in case_dir.iterdir()))}")
    ckpt = save_checkpoint(work / "random.safetensors", INR(config, device, seed=0).state_dict(), config)

    results = {"device": describe(device), "torch": torch.__version__, "python": platform.python_version(),
               "shape": args.shape, "config": args.config, "modalities": list(MODALITIES), "runs": {}}
    t0 = time.perf_counter()
    seg = Segmenter(ckpt, device, chunk_points=args.chunks[0])   # precision auto: bf16 tensor cores on CUDA
    seg_fp32 = Segmenter(ckpt, device, chunk_points=args.chunks[0], precision="fp32")
    results["checkpoint_load_s"] = time.perf_counter() - t0
    cold, _, _ = slang_pipeline(seg, case_dir, work / "slang.nii.gz", timings=False)
    results["slang_cold_first_call_s"] = cold
    print(f"checkpoint load {results['checkpoint_load_s'] * 1e3:.0f} ms; first Slang call "
          f"(kernel compilation included) {cold:.2f} s")

    model = TorchINR(config).to(tdev)
    model.load_state_dict({k: torch.as_tensor(v).to(tdev) for k, v in seg.inr.state_dict().items()})
    model.eval()

    variants = []
    for chunk in args.chunks:
        variants.append((f"slang chunk={_slang_chunk(config, args.shape, chunk)}", "slang", chunk, {}))
    variants.append((f"slang host-normalise chunk={_slang_chunk(config, args.shape, args.chunks[0])}", "slang",
                     args.chunks[0],
                     {"device_normalise": False}))
    variants.append((f"slang fp32 chunk={_slang_chunk(config, args.shape, args.chunks[0])}", "slang", args.chunks[0],
                     {"segmenter": seg_fp32}))
    for chunk in args.chunks:
        variants.append((f"torch fp32 chunk={chunk}", "torch", chunk, {"bf16": False}))
    variants.append((f"torch bf16 chunk={args.chunks[0]}", "torch", args.chunks[0], {"bf16": True}))

    names = set()
    variants = [v for v in variants if not (v[0] in names or names.add(v[0]))]  # chunk caps can repeat a name
    labels = {}
    for name, kind, chunk, opts in variants:
        if kind == "slang":
            runner = opts.get("segmenter", seg)
            runner.chunk_points = chunk
            runner.device_normalise = opts.get("device_normalise", True)
            run = lambda timings: slang_pipeline(runner, case_dir, work / "slang.nii.gz", timings)  # noqa: E731
        else:
            run = lambda timings: torch_pipeline(model, case_dir, work / "torch.nii.gz", chunk,  # noqa: E731
                                                 opts["bf16"], timings)
        try:
            run(False)  # warm-up
            staged = [run(True) for _ in range(args.repeats)]
            plain = [run(False)[0] for _ in range(args.repeats)]
        except Exception as exc:  # report and go on with the other variants
            print(f"{name}: failed: {str(exc).strip().splitlines()[0]}")
            results["runs"][name] = {"error": str(exc)}
            continue
        labels[name] = staged[-1][2]
        results["runs"][name] = {"end_to_end_s": statistics.median(plain), "end_to_end_all_s": plain,
                                 "staged_total_s": statistics.median(s[0] for s in staged),
                                 "stages_s": median_stages([s[1] for s in staged])}
    seg.chunk_points, seg.device_normalise = args.chunks[0], True

    variants = [v for v in variants if "error" not in results["runs"][v[0]]]
    reference = labels[variants[0][0]]
    rows = []
    for name, _, _, _ in variants:
        r = results["runs"][name]
        agree = float((labels[name] == reference).mean())
        r["label_agreement_with_slang"] = agree
        row = {"pipeline": name, "end-to-end ms": f"{r['end_to_end_s'] * 1e3:.0f}"}
        row.update({s: f"{v * 1e3:.1f}" for s, v in r["stages_s"].items()})
        row["agree"] = f"{agree:.5f}"
        rows.append(row)
    print(f"\n{describe(device)}, {tuple(args.shape)} case, {args.config} network, medians of {args.repeats} "
          "(end-to-end: no stage synchronisation; stage columns: a separate synchronised run, ms)")
    print_table(rows, ["pipeline", "end-to-end ms"] + list(STAGES) + ["agree"])
    slang_best = min((results["runs"][n] for n, k, _, _ in variants if k == "slang"), key=lambda r: r["end_to_end_s"])
    torch_best = min((results["runs"][n] for n, k, _, _ in variants if k == "torch"), key=lambda r: r["end_to_end_s"])
    print(f"\npaper (M4 Pro): 2800 ms + 280 ms denoising = 3080 ms; best Slang {slang_best['end_to_end_s'] * 1e3:.0f} ms "
          f"({3.08 / slang_best['end_to_end_s']:.1f}x less), best torch {torch_best['end_to_end_s'] * 1e3:.0f} ms")
    counts = np.bincount(reference.reshape(-1), minlength=4)
    print(f"raw label histogram (random weights): {counts.tolist()}")
    results["label_histogram"] = counts.tolist()

    # Random weights give near-constant labels, which denoise in no time. Time it on a
    # realistic raw prediction too: the phantom's truth corrupted as in denoise_defaults.py,
    # on the path the Segmenter takes (the device, from the labels buffer to labels on the
    # host, replacing the "denoise" and "download" stages; or scipy on the host).
    from denoise_defaults import LEVELS, corrupt

    from neumours.device import upload
    from neumours.infer.denoise_device import denoise_on_device

    brain = make_case(tuple(args.shape), seed=0, index=0).images.any(0)
    noisy = corrupt(truth, brain, LEVELS["heavy"], np.random.default_rng(0))
    if seg.device_denoise:
        noisy_buffer = upload(device, noisy, np.uint32)
        realistic = lambda: denoise_on_device(device, noisy_buffer, noisy.shape, scratch=seg.scratch)  # noqa: E731
        replaced = ("denoise", "download")
    else:
        realistic = lambda: denoise(noisy)  # noqa: E731
        replaced = ("denoise",)
    realistic()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        realistic()
        times.append(time.perf_counter() - t0)
    results["denoise_realistic_s"] = statistics.median(times)
    results["denoise_realistic_on_device"] = seg.device_denoise
    slang = results["runs"][variants[0][0]]
    adjusted = (slang["end_to_end_s"] - sum(slang["stages_s"].get(s, 0.0) for s in replaced)
                + results["denoise_realistic_s"])
    results["slang_end_to_end_with_realistic_denoise_s"] = adjusted
    where = "on the device, with the download" if seg.device_denoise else "scipy on the host"
    print(f"denoise ({where}) on a realistic noisy prediction ({int((noisy > 0).sum())} tumour voxels): "
          f"{results['denoise_realistic_s'] * 1e3:.0f} ms -> Slang end-to-end with it: {adjusted * 1e3:.0f} ms")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
