"""Steps/s of the whole training step (issue 25): the device-resident Slang step against the same
step written in torch, on one device in one run.

A step (docs/method.md): draw micro_batches x micro_batch points (the preset's batch: paper
4 x 4,096, tiny 2 x 256; foreground ratio of the preset), gather coordinates and patches,
forward, loss ((1 - l) CE_w + l (1 - soft Dice)), backward per micro-batch with gradient
accumulation, clip to norm 1, AdamW.

Loops timed (the CUDA-only ones are listed as not run elsewhere, with the reason):
- ``slang bf16`` / ``slang fp32``: ``Trainer.train_steps`` (device sampler, kernels, device
  AdamW) at ``block 1`` (one submission and one read-back per step) and ``block N``
  (``--block`` steps recorded into one command buffer, read back once). bf16 needs CUDA's
  tensor cores.
- ``torch fp32`` / ``torch bf16`` (autocast, CUDA only): the same step with ``TorchINR``,
  points drawn by torch's generator on torch's device from the same rule (slot uniform over the
  pool; the first round(ratio x n) points at tumour voxels of their slot, the rest uniform over
  the volume), patches gathered from padded volumes, ``seg_loss_torch``, autograd,
  ``clip_grad_norm_``, fused AdamW. Torch runs where the Slang loops run: on the CPU device
  torch on the CPU (with 1 intra-op thread or torch's default, whichever a 10-step probe finds
  faster: on a shared machine two threads can spin-wait a hundred times slower), on a GPU on CUDA.
- ``torch bf16 cuda graph`` (CUDA only): that bf16 step, optimiser included (AdamW fused and
  capturable), captured once in a CUDA graph and replayed: the strongest torch peer. If the
  capture fails the reason is printed and written to the JSON.

The issue's targets are printed beside the results; the CPU figure of before issue 25 is a
quoted baseline of another run, not a threshold.

GPU (paper preset, 8 phantoms of 128 x 128 x 96):

    python benchmarks/train_step.py --device cuda --json train_step.json

CPU device (tiny preset at the CPU demo's case size):

    python benchmarks/train_step.py --device cpu --preset tiny --cases 8 --shape 64 64 48 --steps 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import slangpy as spy
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, device_sync, print_table, time_it, write_json  # noqa: E402

from neumours.cli.data import shape_edge  # noqa: E402
from neumours.cli.options import int_range  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.errors import NeumoursError  # noqa: E402
from neumours.model.inr import resolve_precision  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.reference import seg_loss_torch  # noqa: E402
from neumours.train.sampler import foreground_count  # noqa: E402
from neumours.train.trainer import MAX_BLOCK_STEPS, Trainer  # noqa: E402

TORCH_PEERS = ("torch fp32", "torch bf16", "torch bf16 cuda graph")
#: The CPU step before issue 25's work, quoted (not measured by this script): f6013b3's message.
CPU_BEFORE = {"ms_per_step": 148.0, "preset": "tiny (2 x 256 points)", "machine": "the 2-core CPU device",
              "date": "2026-12-08", "commit": "d3d21d3 (f6013b3^)",
              "note": "quoted from commit f6013b3's message (148 -> 31 ms; 88cb8e1 then 11.6 ms), another run"}


class TorchLoop:
    """The training step in plain torch on ``torch_device``: the pool's volumes (padded) and labels,
    the tumour voxel lists and the draws all on that device, so a step never waits for the host.

    Args:
        trainer: the Slang trainer whose pool, configuration and initial weights are used.
        torch_device: "cuda" or "cpu".
        bf16: forward under ``torch.autocast(bfloat16)``.
        graph: capture the step (optimiser included) in a CUDA graph and time its replays.
    """

    def __init__(self, trainer: Trainer, torch_device: str, bf16: bool, graph: bool = False):
        cfg = trainer.config
        self.cfg, self.bf16, self.graph, self.device = cfg, bf16, graph, torch.device(torch_device)
        dev = self.device
        pool, net = trainer.pool, cfg.network
        self.model = TorchINR(net).to(dev)
        self.model.load_state_dict({k: v.to(dev) for k, v in trainer.inr.state_dict().items()})
        on_cuda = dev.type == "cuda"
        # fused: one kernel for every tensor (torch's fastest AdamW); capturable keeps its step count on the device.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
                                           weight_decay=cfg.optimizer.weight_decay, fused=True,
                                           capturable=graph and on_cuda)
        # Volumes: each slot's (C, X, Y, Z) padded by half a patch with zeros (the Slang gather's outside).
        half, c = net.patch_size // 2, net.num_modalities
        flat = torch.from_numpy(pool.volumes.to_numpy().view("float32"))
        padded, offsets, dims = [], [], []
        total = 0
        for i, case in enumerate(pool.cases):
            vol = flat[i * pool.slot_floats:][: c * case.label.size].reshape(c, *case.shape)
            vol = torch.nn.functional.pad(vol, (half,) * 6)
            padded.append(vol.reshape(-1))
            offsets.append(total)
            dims.append(vol.shape[1:])
            total += vol.numel()
        self.volumes = torch.cat(padded).to(dev)
        self.offsets = torch.tensor(offsets, device=dev)
        self.dims = torch.tensor(dims, device=dev)                             # padded (X + 2h, Y + 2h, Z + 2h)
        self.shapes = torch.tensor([case.shape for case in pool.cases], device=dev)
        self.sizes = self.shapes.prod(1)
        self.labels = torch.from_numpy(np.concatenate([case.label for case in pool.cases])).to(dev)
        self.label_offsets = torch.cumsum(self.sizes, 0) - self.sizes
        counts = torch.tensor([case.tumour.size for case in pool.cases], device=dev)
        self.tumour_counts, self.tumour_offsets = counts, torch.cumsum(counts, 0) - counts
        tumour = [torch.from_numpy(case.tumour) for case in pool.cases if case.tumour.size]
        self.tumour = (torch.cat(tumour) if tumour else torch.zeros(1, dtype=torch.int64)).to(dev)
        p = net.patch_size
        grid = torch.stack(torch.meshgrid(*[torch.arange(p)] * 3, indexing="ij"), -1).reshape(1, 1, p ** 3, 3)
        self.taps = grid.to(dev)
        self.channels = torch.arange(c, device=dev)[None, :, None]
        # A device tensor, so seg_loss_torch's as_tensor is a no-op (a host copy cannot be captured).
        self.class_weights = torch.tensor(cfg.loss.class_weights, dtype=torch.float32, device=dev)
        self.n, self.m = cfg.sampler.micro_batch, cfg.sampler.micro_batches
        self.n_fg = foreground_count(cfg.sampler.foreground_ratio, self.n)
        self.step = self._graph_step() if graph else self._step

    def _draw(self):
        """A micro-batch's voxel positions (n, 3) int64, slots (n,) and labels (n,) int64, drawn on the device."""
        n, dev = self.n, self.device
        slots = torch.randint(0, len(self.sizes), (n,), device=dev)
        u = torch.rand(n, device=dev, dtype=torch.float64)
        sizes = self.sizes[slots]
        flat = torch.minimum((u * sizes).long(), sizes - 1)
        counts = self.tumour_counts[slots[:self.n_fg]]
        has_tumour = counts > 0
        pick = self.tumour_offsets[slots[:self.n_fg]] + torch.minimum((u[:self.n_fg] * counts).long(),
                                                                      (counts - 1).clamp_min(0))
        pick = torch.where(has_tumour, pick, 0)  # a slot without tumour keeps its uniform voxel
        flat_fg = torch.where(has_tumour, self.tumour[pick], flat[:self.n_fg])
        flat = torch.cat([flat_fg, flat[self.n_fg:]])
        labels = self.labels[self.label_offsets[slots] + flat].long()
        shape = self.shapes[slots]
        yz = shape[:, 1] * shape[:, 2]
        positions = torch.stack([flat // yz, (flat // shape[:, 2]) % shape[:, 1], flat % shape[:, 2]], 1)
        return positions, slots, labels

    def _inputs(self, pos, s):
        """Coordinates (n, 3) in [-1, 1] and patches (n, C, p, p, p) of voxel positions ``pos`` of slots ``s``."""
        dims = self.dims[s]                                                   # (n, 3)
        volume = dims.prod(1)
        p = pos[:, None, None, :] + self.taps                                 # padded index = voxel - h + tap + h
        index = (self.offsets[s][:, None, None] + self.channels * volume[:, None, None]
                 + (p[..., 0] * dims[:, None, None, 1] + p[..., 1]) * dims[:, None, None, 2] + p[..., 2])
        k = self.cfg.network.patch_size
        patches = self.volumes[index].reshape(-1, self.cfg.network.num_modalities, k, k, k)
        coords = 2 * pos.float() / (self.shapes[s] - 1).clamp_min(1) - 1
        return coords, patches

    def _step(self) -> None:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=False)
        for _ in range(self.m):
            positions, slots, labels = self._draw()
            coords, patches = self._inputs(positions, slots)
            # Graph capture needs autocast's weight-cast cache off (the cache would outlive the capture).
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                                cache_enabled=not self.graph):
                logits = self.model(coords, patches)
            loss = seg_loss_torch(logits.float(), labels, self.class_weights, cfg.loss.dice_weight,
                                  cfg.loss.dice_smooth)[0]
            (loss / self.m).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.clip_norm)
        self.optimizer.step()

    def _graph_step(self):
        """Warm up on a side stream (lazy initialisation, optimiser state), capture one step, return its replay."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        return graph.replay


def torch_device_for(device: spy.Device) -> tuple[str | None, str]:
    """Where the torch peers run for the Slang ``device``: ("cpu" | "cuda" | None, why not when None)."""
    if device.info.type == spy.DeviceType.cpu:
        return "cpu", ""
    if torch.cuda.is_available():
        return "cuda", ""
    return None, "torch has no CUDA here, and a peer on the host CPU would not share the Slang loops' GPU"


def cuda_only(torch_device: str | None, what: str) -> str:
    """Why a CUDA-only torch loop is not run here ('' when it runs)."""
    if torch_device == "cuda":
        return ""
    return f"{what} (torch device here: {torch_device or 'none'})"


def fastest_threads(step, steps: int = 10) -> dict[int, float]:
    """Set torch's intra-op threads to whichever of 1 and torch's default runs ``step`` faster (``steps``-step
    probe each; on a shared CPU two threads can spin-wait a hundred times slower); returns threads -> ms/step."""
    probe = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        probe[threads] = (time.perf_counter() - start) / steps * 1e3
    torch.set_num_threads(min(probe, key=probe.get))
    return probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper",
                        help="network and batch of neumours.train.config.preset (default paper)")
    parser.add_argument("--cases", type=int_range(2, 10_000), default=8, help="phantom cases (one is validation)")
    parser.add_argument("--shape", type=shape_edge, nargs=3, default=[128, 128, 96], metavar=("X", "Y", "Z"))
    parser.add_argument("--steps", type=int_range(1, 1_000_000), default=128, help="timed steps per repeat")
    parser.add_argument("--block", type=int_range(2, MAX_BLOCK_STEPS), default=MAX_BLOCK_STEPS,
                        help=f"steps per submission of the blocked Slang loops (2..{MAX_BLOCK_STEPS})")
    parser.add_argument("--repeats", type=int_range(1, 1000), default=5, help="timed repeats (median reported)")
    parser.add_argument("--json", default="train_step.json")
    add_device_argument(parser, note="the torch peers run on the CPU with the CPU device, else on torch's CUDA")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    torch_device, no_torch = torch_device_for(device)
    sync = device_sync(device)
    base = preset(args.preset)
    m, n = base.sampler.micro_batches, base.sampler.micro_batch
    results = {"device": describe(device), "torch": torch.__version__, "torch_device": torch_device,
               "torch_threads": torch.get_num_threads(), "preset": args.preset, "points": f"{m} x {n}",
               "cases": args.cases, "shape": args.shape, "steps_per_repeat": args.steps, "block": args.block,
               "repeats": args.repeats, "loops": {}}
    loops = results["loops"]
    threads = torch.get_num_threads()

    def timed(name: str, step_many) -> None:
        """Time ``step_many()`` (``--steps`` steps) and record the loop's figures."""
        t = time_it(step_many, sync, repeats=args.repeats, warmup=1)
        per_step = t["median_s"] / args.steps
        loops[name] = {"run": True, "ms_per_step": per_step * 1e3, "steps_per_s": 1 / per_step, "timing": t}

    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        work = Path(tmp)
        write_dataset(work / "data", args.cases, shape=tuple(args.shape), seed=0, progress=False)
        trainers = {}
        for precision in ("bf16", "fp32"):
            try:
                resolve_precision(precision, device)
            except NeumoursError as exc:
                for size in (1, args.block):
                    loops[f"slang {precision} block {size}"] = {"run": False, "reason": str(exc)}
                continue
            config = dataclasses.replace(base, network=dataclasses.replace(base.network, precision=precision))
            trainers[precision] = Trainer(work / "data", work / f"run_{precision}", config, device, progress=False)
        try:
            for precision, trainer in trainers.items():
                for size in (1, args.block):
                    calls = [size] * (args.steps // size) + ([args.steps % size] if args.steps % size else [])
                    timed(f"slang {precision} block {size}",
                          lambda t=trainer, c=calls: [t.train_steps(k) for k in c])
            first = next(iter(trainers.values()), None)
            peers = {"torch fp32": (False, False, ""),
                     "torch bf16": (True, False, cuda_only(torch_device, "bf16 autocast is timed on CUDA only, "
                                                           "beside the Slang bf16 kernels (which need CUDA)")),
                     "torch bf16 cuda graph": (True, True, cuda_only(torch_device, "CUDA graphs need torch on CUDA"))}
            for name, (bf16, graph, reason) in peers.items():
                reason = no_torch or reason or ("" if first is not None else "no Slang loop ran (its pool is used)")
                if reason:
                    loops[name] = {"run": False, "reason": reason}
                    continue
                try:
                    loop = TorchLoop(first, torch_device, bf16, graph)
                except Exception as exc:  # a step that cannot be captured: say what and why
                    if not graph:
                        raise
                    what = " ".join(str(exc).split())[:600]
                    loops[name] = {"run": False, "reason": f"the capture failed: {type(exc).__name__}: {what}"}
                    continue
                if torch_device == "cpu":
                    results["torch_thread_probe_ms"] = fastest_threads(loop.step)
                    results["torch_threads"] = torch.get_num_threads()
                timed(name, lambda step=loop.step: [step() for _ in range(args.steps)])
        finally:
            torch.set_num_threads(threads)
            for trainer in trainers.values():
                trainer.close()
    ratios(loops)
    results["targets"] = targets(loops, args, device)
    results["cpu_before"] = CPU_BEFORE
    write_json(args.json, results)
    report(results, args)
    return 0


def ratios(loops: dict) -> None:
    """Each loop's speed over each torch peer that ran (``vs``: peer -> ratio of steps/s)."""
    for loop in loops.values():
        if loop["run"]:
            loop["vs"] = {peer: loop["steps_per_s"] / loops[peer]["steps_per_s"] for peer in TORCH_PEERS
                          if loops.get(peer, {}).get("run")}


def targets(loops: dict, args, device: spy.Device) -> list[dict]:
    """The issue's targets with this run's figures (None: the loops they need did not run)."""
    bf16 = loops.get(f"slang bf16 block {args.block}", {})
    rows = [("slang bf16 steps/s (paper preset, an H100)", ">= 800", 800.0, bf16.get("steps_per_s")),
            ("slang bf16 vs torch bf16", ">= 8x", 8.0, bf16.get("vs", {}).get("torch bf16")),
            ("slang bf16 vs torch bf16 cuda graph", ">= 3x", 3.0, bf16.get("vs", {}).get("torch bf16 cuda graph"))]
    out = [{"target": what, "goal": goal, "value": value, "met": None if value is None else value >= floor}
           for what, goal, floor, value in rows]
    if args.preset != "paper":
        for row in out:
            row["met"] = None  # the targets are for the paper network
    cpu = device.info.type == spy.DeviceType.cpu and args.preset == "tiny"
    for size in (1, args.block):
        fp32 = loops.get(f"slang fp32 block {size}", {})
        out.append({"target": f"CPU device, tiny step (block {size}) vs before issue 25, quoted "
                              f"{CPU_BEFORE['ms_per_step']:.0f} ms/step", "goal": ">= 3x",
                    "value": CPU_BEFORE["ms_per_step"] / fp32["ms_per_step"] if cpu and fp32.get("run") else None,
                    "met": None})
    return out


def probe_text(results: dict) -> str:
    probe = results.get("torch_thread_probe_ms")
    if not probe:
        return ""
    return ", the faster of " + " and ".join(f"{k}: {v:.1f} ms/step" for k, v in probe.items())


def report(results: dict, args) -> None:
    loops = results["loops"]
    peers = [p for p in TORCH_PEERS if loops.get(p, {}).get("run")]
    rows = []
    for name, loop in loops.items():
        if not loop["run"]:
            continue
        row = {"loop": name, "ms/step": f"{loop['ms_per_step']:.2f}", "steps/s": f"{loop['steps_per_s']:.1f}"}
        row.update({f"vs {p}": f"{loop['vs'][p]:.2f}x" for p in peers})
        rows.append(row)
    threads = results["torch_threads"]
    print(f"device: {results['device']}; torch {results['torch']} on {results['torch_device']} "
          f"({threads} thread{'' if threads == 1 else 's'}{probe_text(results)}); preset {results['preset']}, "
          f"step = {results['points']} points, AdamW; {args.cases} phantoms of {' x '.join(map(str, args.shape))}; "
          f"median of {args.repeats} x {args.steps} steps")
    print_table(rows, ["loop", "ms/step", "steps/s", *[f"vs {p}" for p in peers]])
    for name, loop in loops.items():
        if not loop["run"]:
            print(f"not run: {name}: {loop['reason']}")
    print("issue 25 targets (benchmarks, not tests):")
    for t in results["targets"]:
        value = "n/a here" if t["value"] is None else f"{t['value']:.2f}"
        met = "" if t["met"] is None else ("  met" if t["met"] else "  not met")
        print(f"  {t['target']}: {t['goal']}; this run: {value}{met}")
    b = CPU_BEFORE
    print(f"  quoted baseline (not a threshold): {b['ms_per_step']:.0f} ms/step, {b['preset']}, {b['machine']}, "
          f"{b['date']} at {b['commit']}; {b['note']}")


if __name__ == "__main__":
    sys.exit(main())
