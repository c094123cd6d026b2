"""The training loop: Slang forward/backward and loss, torch optimisers through the bridge.

A step draws ``micro_batches`` x ``micro_batch`` points, gathers their inputs on
the device, runs forward, loss and backward per micro-batch (gradients
accumulate in the device buffer), then clips and steps the torch optimisers,
which update the flat parameter buffer in place.

A run folder holds ``config.toml`` (resolved configuration), ``metrics.csv``,
``last.safetensors`` and ``best.safetensors`` (INR checkpoints),
``last.state.pt`` (optimiser, sampler and progress state for ``--resume``) and
``curves.png``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neumours.atomic import atomic_path, atomic_write_text
from neumours.data import list_cases, load_case, normalise, split_cases
from neumours.device import empty_buffer, get_device, recording
from neumours.errors import NeumoursDataError, NeumoursError
from neumours.model.checkpoint import load_checkpoint, save_checkpoint
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.conventions import CLASS_KEYS, CLASS_NAMES
from neumours.train.config import TrainConfig, load_toml, save_toml
from neumours.train.loss import DeviceLoss
from neumours.train.optim import build_optimizers, learning_rate, set_learning_rate
from neumours.train.pool import CasePool
from neumours.train.sampler import PointSampler
from neumours.train.validate import Validator

METRIC_COLUMNS = (["step", "loss", "ce"] + [f"dice_{k}" for k in CLASS_KEYS] + ["dice_mean", "lr", "grad_norm", "time_s"]
                  + [f"val_dice_{k}" for k in CLASS_KEYS] + ["val_dice_mean"])
CHECKPOINT_BEST = "best.safetensors"
CHECKPOINT_LAST = "last.safetensors"
STATE_LAST = "last.state.pt"


class Trainer:
    """Train the Slang INR on a folder of cases.

    Args:
        data: dataset root (any layout ``neumours.data.list_cases`` knows).
        run_dir: output folder.
        config: training configuration.
        device: slangpy device (default: auto).
        resume: continue the run in ``run_dir`` from its last checkpoint.
    """

    def __init__(self, data, run_dir, config: TrainConfig, device=None, resume: bool = False, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.config = config
        self.progress = progress
        self.device = device or get_device()
        refs = list_cases(data)
        if len(refs) < 2:
            raise NeumoursDataError(data, f"needs at least 2 cases for a train/validation split, found {len(refs)}")
        train_refs, val_refs = split_cases(refs, config.schedule.val_fraction, config.schedule.seed)
        if not train_refs:
            raise NeumoursDataError(data, "the training split is empty")
        self.train_ids = [r.case_id for r in train_refs]
        self.val_ids = [r.case_id for r in val_refs]
        net = config.network
        self.inr = INR(net, self.device, seed=config.schedule.seed)
        self.pool = CasePool(self.device, train_refs, net.num_modalities, config.sampler.pool_bytes,
                             config.schedule.seed)
        self.pool_volumes = CaseVolumes(self.device, self.pool.volumes, self.pool.case_table, [], net.num_modalities)
        val_cases = [load_case(r) for r in val_refs]
        self.validator = Validator(self.inr, [normalise(c.images) for c in val_cases],
                                   [c.label for c in val_cases])
        self.sampler = PointSampler(config.sampler.foreground_ratio, config.schedule.seed)
        self.loss = DeviceLoss(self.device, config.loss, config.sampler.micro_batches)
        self.optimizers = build_optimizers(self.inr.bridge, config.optimizer)
        n, m = config.sampler.micro_batch, config.sampler.micro_batches
        dev = self.device
        self._inputs = [(empty_buffer(dev, n * 3), empty_buffer(dev, n, np.uint32), empty_buffer(dev, n, np.uint32))
                        for _ in range(m)]
        self._coords, self._patches = empty_buffer(dev, n * 3), empty_buffer(dev, n * net.patch_dim)
        self._logits, self._grad_logits = empty_buffer(dev, n * net.num_classes), empty_buffer(dev, n * net.num_classes)
        self._workspace = self.inr.workspace(n)
        self.step = 0
        self.best = -1.0
        self.rows: list[dict] = []
        if resume:
            self._resume()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_toml(config, self.run_dir / "config.toml")

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimiser step; returns the row of metrics for it."""
        cfg = self.config
        n, m = cfg.sampler.micro_batch, cfg.sampler.micro_batches
        lr = learning_rate(self.step, cfg.schedule.steps, cfg.optimizer)
        set_learning_rate(self.optimizers, lr)
        self.inr.bridge.zero_grads()
        self.loss.reset()
        for mb in range(m):  # each micro-batch's points in its own buffers, all uploaded first
            positions, case_ids, labels = self._inputs[mb]
            p, c, y = self.sampler.sample(self.pool.cases, n)
            positions.copy_from_numpy(p)
            case_ids.copy_from_numpy(c)
            labels.copy_from_numpy(y)
        with recording(self.device):  # the step's ~80 kernels in one submission
            for mb in range(m):
                positions, case_ids, labels = self._inputs[mb]
                gather_inputs(cfg.network, self.pool_volumes, positions, case_ids, n, self._coords, self._patches)
                self.inr.forward_device(self._coords, self._patches, n, self._logits, self._workspace)
                self.loss.backward(self._logits, labels, n, self._grad_logits, mb, scale=1.0 / m)
                self.inr.backward_device(self._coords, self._patches, n, self._grad_logits, self._workspace)
        self.inr.bridge.pull_grads()
        params = self.inr.bridge.torch_parameters()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.clip_norm))
        for optimizer in self.optimizers:
            optimizer.step()
        self.inr.bridge.push_params()
        values = self.loss.values()
        self.step += 1
        if self.pool.cycling and self.step % cfg.sampler.refresh_every == 0:
            self.pool.refresh()
        row = {"step": self.step, "loss": values["loss"], "ce": values["ce"], "dice_mean": values["dice_mean"],
               "lr": lr, "grad_norm": grad_norm}
        row.update({f"dice_{k}": d for k, d in zip(CLASS_KEYS, values["dice"])})
        return row

    # ------------------------------------------------------------------ run
    def run(self, stop_after: int | None = None) -> dict:
        """Train until ``config.schedule.steps`` (or ``stop_after`` more steps, saving
        ``last`` as an interruption would). Ctrl-C also saves ``last`` and stops."""
        cfg = self.config.schedule
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        start_time = time.perf_counter() - (self.rows[-1]["time_s"] if self.rows else 0.0)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < end:
                row = self.train_step()
                row["time_s"] = time.perf_counter() - start_time
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    row.update(self._validate())
                if self.step % cfg.log_every == 0 or "val_dice_mean" in row or self.step == cfg.steps:
                    self.rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", dice=f"{row['dice_mean']:.3f}",
                                best=f"{max(self.best, 0):.3f}")
        except KeyboardInterrupt:
            bar.close()
            self._save_last()
            raise
        bar.close()
        self._save_last()
        return {"steps": self.step, "best_val_dice_mean": self.best, "run_dir": str(self.run_dir),
                "time_s": time.perf_counter() - start_time}

    def _validate(self) -> dict:
        scores = self.validator()
        row = {f"val_dice_{k}": float(s) for k, s in zip(CLASS_KEYS, scores)}
        row["val_dice_mean"] = float(np.mean(scores))
        if row["val_dice_mean"] > self.best:
            self.best = row["val_dice_mean"]
            self._save_checkpoint(CHECKPOINT_BEST, row["val_dice_mean"])
        self._save_last()
        return row

    # ------------------------------------------------------------------ files
    def _save_checkpoint(self, name: str, val_dice_mean: float | None) -> None:
        metadata = {"step": str(self.step), "optimizer": self.config.optimizer.name,
                    "val_dice_mean": "" if val_dice_mean is None else f"{val_dice_mean:.6f}",
                    "classes": ",".join(CLASS_NAMES)}
        save_checkpoint(self.run_dir / name, self.inr.state_dict(), self.config.network, metadata)

    def _save_last(self) -> None:
        self._save_checkpoint(CHECKPOINT_LAST, None)
        state = {"step": self.step, "best": self.best, "sampler": self.sampler.state(),
                 "optimizers": [o.state_dict() for o in self.optimizers], "rows": self.rows}
        with atomic_path(self.run_dir / STATE_LAST) as tmp:
            torch.save(state, tmp)
        self._write_metrics()

    def _write_metrics(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.run_dir / "metrics.csv", text.getvalue())

    def _resume(self) -> None:
        for name in ("config.toml", CHECKPOINT_LAST, STATE_LAST):
            if not (self.run_dir / name).is_file():
                raise NeumoursError(f"{self.run_dir}: cannot resume, {name} is missing")
        saved = load_toml(self.run_dir / "config.toml", TrainConfig())
        if saved.network.architecture() != self.config.network.architecture():
            raise NeumoursError(f"{self.run_dir}: cannot resume, the run's network differs from this configuration")
        state, _, _ = load_checkpoint(self.run_dir / CHECKPOINT_LAST, expected_config=self.config.network)
        self.inr.load_state_dict(state)
        try:
            progress = torch.load(self.run_dir / STATE_LAST, weights_only=False)
            for optimizer, saved_state in zip(self.optimizers, progress["optimizers"], strict=True):
                optimizer.load_state_dict(saved_state)
        except Exception as exc:  # a truncated or foreign state file
            raise NeumoursError(f"{self.run_dir / STATE_LAST}: cannot resume ({exc})") from None
        self.step, self.best, self.rows = progress["step"], progress["best"], progress["rows"]
        self.sampler.set_state(progress["sampler"])
        self.inr.bridge.named_torch_parameters()  # re-attach .grad views after load_state_dict

    def close(self) -> None:
        self.pool.close()


def train(data, out, config: TrainConfig, device=None, resume: bool = False, progress: bool = True,
          plot: bool = True) -> dict:
    """Train (or resume) a run; the Python call behind ``neumours train``."""
    trainer = Trainer(data, out, config, device, resume, progress)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if plot:
        from neumours.train.curves import plot_run

        plot_run(out)
    return summary
