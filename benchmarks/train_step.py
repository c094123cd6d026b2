"""Steps/s of the full training step: this project (Slang kernels + torch optimiser through
the bridge) against the same loop written in torch with TorchINR (fp32 and bf16 autocast),
same GPU, same run.

A step: sample 4 x 4,096 points (foreground ratio 0.1) on the host, gather inputs,
forward, loss ((1 - l) CE_w + l (1 - soft Dice)), backward per micro-batch with gradient
accumulation, clip to norm 1, AdamW step.

    python benchmarks/train_step.py [--cases 8] [--shape 128 128 96] [--steps 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.reference import seg_loss_torch  # noqa: E402
from neumours.train.sampler import PointSampler  # noqa: E402
from neumours.train.trainer import Trainer  # noqa: E402


class TorchLoop:
    """The same training step in plain torch: padded volumes on the GPU, vectorised patch
    gather, TorchINR, autograd, AdamW."""

    def __init__(self, trainer: Trainer, bf16: bool):
        cfg = trainer.config
        self.cfg, self.bf16, self.pool = cfg, bf16, trainer.pool
        self.model = TorchINR(cfg.network).cuda()
        self.model.load_state_dict({k: v.cuda() for k, v in trainer.inr.state_dict().items()})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optimizer.lr,
                                           weight_decay=cfg.optimizer.weight_decay)
        self.sampler = PointSampler(cfg.sampler.foreground_ratio, seed=1)
        flat = torch.from_numpy(self.pool.volumes.to_numpy().view("float32")).cuda()
        padded, offsets, dims = [], [], []
        total = 0
        for i, c in enumerate(self.pool.cases):
            vol = flat[i * self.pool.slot_floats:][: 4 * c.label.size].reshape(4, *c.shape)
            vol = torch.nn.functional.pad(vol, (1, 1, 1, 1, 1, 1))
            padded.append(vol.reshape(-1))
            offsets.append(total)
            dims.append(vol.shape[1:])
            total += vol.numel()
        self.volumes = torch.cat(padded)
        self.offsets = torch.tensor(offsets, device="cuda")
        self.dims = torch.tensor(dims, device="cuda")                       # padded (X+2, Y+2, Z+2)
        self.shapes = torch.tensor([c.shape for c in self.pool.cases], device="cuda")
        grid = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(1, 1, 27, 3)
        self.taps = grid.cuda()

    def _inputs(self, positions, slots):
        pos = torch.from_numpy(positions).cuda().long()
        s = torch.from_numpy(slots.astype("int64")).cuda()
        dims = self.dims[s]                                                   # (n, 3)
        volume = dims.prod(1)
        p = pos[:, None, None, :] + self.taps                                 # padded index = voxel - 1 + tap + 1
        channel = torch.arange(4, device="cuda")[None, :, None]
        index = (self.offsets[s][:, None, None] + channel * volume[:, None, None]
                 + (p[..., 0] * dims[:, None, None, 1] + p[..., 1]) * dims[:, None, None, 2] + p[..., 2])
        patches = self.volumes[index].reshape(-1, 4, 3, 3, 3)
        coords = 2 * pos.float() / (self.shapes[s] - 1) - 1
        return coords, patches

    def step(self):
        cfg = self.cfg
        m, n = cfg.sampler.micro_batches, cfg.sampler.micro_batch
        self.optimizer.zero_grad(set_to_none=False)
        for _ in range(m):
            positions, slots, labels = self.sampler.sample(self.pool.cases, n)
            coords, patches = self._inputs(positions, slots)
            y = torch.from_numpy(labels.astype("int64")).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(coords, patches)
            loss = seg_loss_torch(logits.float(), y, cfg.loss.class_weights, cfg.loss.dice_weight,
                                  cfg.loss.dice_smooth)[0]
            (loss / m).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.clip_norm)
        self.optimizer.step()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 96])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--json", default="train_step.json")
    add_device_argument(parser, note="its torch peers need torch with CUDA")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    work = Path(tempfile.mkdtemp())
    write_dataset(work / "data", args.cases, shape=tuple(args.shape), seed=0, progress=False)
    trainers = {}
    for precision in ("bf16", "fp32"):
        config = preset("paper")
        config = dataclasses.replace(config, network=dataclasses.replace(config.network, precision=precision))
        trainers[f"slang {precision}"] = Trainer(work / "data", work / f"run_{precision}", config, device,
                                                 progress=False)
    trainer = trainers["slang bf16"]
    loops = {"torch fp32": TorchLoop(trainer, False), "torch bf16": TorchLoop(trainer, True)}

    def sync():
        device.wait_for_idle()
        torch.cuda.synchronize()

    def repeat(step):
        return lambda: [step() for _ in range(args.steps)]

    results = {"device": describe(device), "torch": torch.__version__, "steps_per_repeat": args.steps}
    for name, t in trainers.items():
        results[name] = time_it(repeat(t.train_step), sync, repeats=5, warmup=1)
    for name, loop in loops.items():
        results[name] = time_it(repeat(loop.step), sync, repeats=5, warmup=1)
    for t in trainers.values():
        t.close()
    rows = []
    for name in (*trainers, "torch fp32", "torch bf16"):
        per_step = results[name]["median_s"] / args.steps
        rows.append({"loop": name, "ms/step": f"{per_step * 1e3:.2f}", "steps/s": f"{1 / per_step:.1f}",
                     "vs torch fp32": f"{results['torch fp32']['median_s'] / results[name]['median_s']:.2f}x",
                     "vs torch bf16": f"{results['torch bf16']['median_s'] / results[name]['median_s']:.2f}x"})
    write_json(args.json, results)
    print(f"device: {results['device']}  torch {torch.__version__}; step = 4 x 4,096 points, AdamW")
    print_table(rows, ["loop", "ms/step", "steps/s", "vs torch fp32", "vs torch bf16"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
