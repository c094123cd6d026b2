"""The training loop: sampling, forward/backward, loss and the optimiser step as device kernels.

A step draws ``micro_batches`` x ``micro_batch`` points on the device
(:class:`DeviceSampler`), gathers their inputs, runs forward, loss and backward
per micro-batch (gradients accumulate in the device buffer), then clips and
steps AdamW on the device (:class:`DeviceAdamW`). Steps run in blocks recorded
into one command buffer, up to the next log, validation or pool-refresh step:
the host reads the loss and gradient norm once per block. Muon steps through
torch's optimisers (the bridge), one step per submission.

A run folder holds ``config.toml`` (resolved configuration), ``metrics.csv``,
``last.safetensors`` and ``best.safetensors`` (INR checkpoints), ``curves.png``,
and the checkpoint that ``--resume`` continues from: ``checkpoint.json`` and
``checkpoints/step-*/`` (weights, optimiser/sampler/pool state and the metric
rows of one step, committed as one unit: :mod:`neumours.train.checkpoints`).
A checkpoint is committed at every validation step (after its row is
recorded) and at the end; ``kill -9`` at any moment leaves a run that resumes
from the last commit (killed before the first one, it starts again from step
0), and the resumed run's weights are bit-identical to an uninterrupted
run's (on the CPU device; see docs/reliability.md). Ctrl-C stops after the
current step and commits a checkpoint there.
"""

from __future__ import annotations

import csv
import io
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import slangpy as spy
from tqdm import tqdm

from neumours.atomic import make_folder
from neumours.data import check_cases, list_cases, load_case, normalise, split_cases
from neumours.device import empty_buffer, get_device, recording, upload_into
from neumours.errors import NeumoursDataError, NeumoursError
from neumours.locks import FolderLock
from neumours.model.checkpoint import load_checkpoint, save_checkpoint
from neumours.train import checkpoints
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.conventions import CLASS_KEYS, CLASS_NAMES
from neumours.kernels.augment import augment_inputs, slot_stride
from neumours.train.augment import Augmenter
from neumours.train.config import TrainConfig, load_toml, save_toml
from neumours.train.loss import DeviceLoss
from neumours.train.optim import apply_gradients, build_optimizers, learning_rate, set_learning_rate
from neumours.train.pool import CasePool
from neumours.train.device_optim import DeviceAdamW
from neumours.train.device_sampler import DeviceSampler
from neumours.train.estimate import announce_estimate
from neumours.train.validate import CPU_VOXEL_BUDGET, Validator

METRIC_COLUMNS = (["step", "loss", "ce"] + [f"dice_{k}" for k in CLASS_KEYS] + ["dice_mean", "lr", "grad_norm", "time_s"]
                  + [f"val_dice_{k}" for k in CLASS_KEYS] + ["val_dice_mean", "val_cases"])
CHECKPOINT_BEST = checkpoints.BEST
#: Most optimiser steps recorded into one command buffer (a block also ends at every log,
#: validation and pool-refresh step, where the host reads or changes something).
MAX_BLOCK_STEPS = 64
CHECKPOINT_LAST = checkpoints.LAST


class Trainer:
    """Train the Slang INR on a folder of cases.

    Args:
        data: dataset root (any layout ``neumours.data.list_cases`` knows).
        run_dir: output folder.
        config: training configuration.
        device: slangpy device (default: auto).
        resume: continue the run in ``run_dir`` from its last checkpoint.
        overwrite: replace a run already in ``run_dir`` (its files are deleted once
            every check has passed); without it such a folder is refused.
        force_geometry: see :func:`neumours.data.load_case`.
        keep_going: leave out cases whose headers fail :func:`neumours.data.check_case`
            (before the split; listed in :attr:`failures`) instead of refusing the dataset.
        cases: ``(train, val)`` CaseRefs to use instead of splitting ``data`` by
            ``[schedule] val_fraction`` (a cross-validation fold; ``data`` then only
            names the dataset in messages).
        new_data: with ``resume``: continue on data other than the run's (case ids,
            validation split or headers differ; refused without it), with a new best.
    """

    def __init__(self, data, run_dir, config: TrainConfig, device=None, resume: bool = False, progress: bool = True,
                 *, overwrite: bool = False, force_geometry: bool = False, keep_going: bool = False,
                 cases: tuple[list, list] | None = None, new_data: bool = False):
        self.run_dir = Path(run_dir)
        self.config = config
        self.progress = progress
        if not resume and not overwrite and checkpoints.is_run(self.run_dir):
            raise NeumoursError(f"{self.run_dir}: already holds a training run; continue it with --resume "
                                f"{self.run_dir}, choose a new --out folder, or add --overwrite to replace it")
        resumed = None
        if resume:
            checkpoints.recover(self.run_dir)
            # A run stopped before its first checkpoint holds only config.toml: it starts again from step 0
            # (runs are deterministic in their seed, so that is the run it would have been).
            if not checkpoints.never_committed(self.run_dir):
                resumed = checkpoints.load(self.run_dir)  # verified before anything is built
        self.device = device or get_device()
        if cases is None:
            refs, failures = check_cases(list_cases(data), force_geometry=force_geometry, need_label=True,
                                         keep_going=keep_going)
            self.failures = [(f.case_id, f.error) for f in failures]
            if len(refs) < 2:
                raise NeumoursDataError(data, f"needs at least 2 cases for a train/validation split, found {len(refs)}")
            train_refs, val_refs = split_cases(refs, config.schedule.val_fraction, config.schedule.seed)
        else:
            self.failures = []
            train_refs, val_refs = (list(c) for c in cases)
        if not train_refs:
            raise NeumoursDataError(data, "the training split is empty")
        self.train_ids = [r.case_id for r in train_refs]
        self.val_ids = [r.case_id for r in val_refs]
        self.data_record = checkpoints.data_record(data, train_refs, val_refs)
        self.new_data = bool(new_data)
        if resumed is not None and not new_data:  # before anything is loaded: the run's own data or a refusal
            checkpoints.check_same_data(self.run_dir, resumed.state.get("data"), self.data_record)
        net = config.network
        self.inr = INR(net, self.device, seed=config.schedule.seed)
        refreshes = resumed.state.get("pool", {}).get("refreshes", 0) if resumed is not None else 0
        # The boundary loss (off by default) needs each case's signed distances, gathered with the labels.
        self.boundary = config.loss.boundary_weight > 0
        self.pool = CasePool(self.device, train_refs, net.num_modalities, config.sampler.pool_bytes,
                             config.schedule.seed, refreshes=refreshes, force_geometry=force_geometry,
                             sdm_classes=net.num_classes if self.boundary else 0)
        self.pool_volumes = CaseVolumes(self.device, self.pool.volumes, self.pool.case_table, [], net.num_modalities)
        val_cases = [load_case(r, force_geometry=force_geometry) for r in val_refs]
        # On the CPU device validation is sized for the run (validate.py); elsewhere every voxel counts.
        budget = CPU_VOXEL_BUDGET if self.device.info.type == spy.DeviceType.cpu else None
        self.validator = Validator(self.inr, [normalise(c.images) for c in val_cases],
                                   [c.label for c in val_cases], max_voxels=budget)
        # Points are drawn on the device from (seed, step, micro-batch): no generator state to save.
        self.sampler = DeviceSampler(self.device, config.sampler.foreground_ratio, config.schedule.seed,
                                     slot_voxels=self.pool.slot_floats // net.num_modalities)
        self._update_sampler()
        # AdamW steps on the device, so blocks of steps run without the host; Muon steps in torch.
        self.device_optimizer = DeviceAdamW(self.inr.bridge, config.optimizer, MAX_BLOCK_STEPS) \
            if config.optimizer.name == "adamw" else None
        self.optimizers = [] if self.device_optimizer is not None else build_optimizers(self.inr.bridge,
                                                                                           config.optimizer)
        block = MAX_BLOCK_STEPS if self.device_optimizer is not None else 1
        self.loss = DeviceLoss(self.device, config.loss, block * config.sampler.micro_batches)
        n, m = config.sampler.micro_batch, config.sampler.micro_batches
        dev = self.device
        self._inputs = [(empty_buffer(dev, n * 3), empty_buffer(dev, n, np.uint32), empty_buffer(dev, n, np.uint32))
                        for _ in range(m)]
        self._coords, self._patches = empty_buffer(dev, n * 3), empty_buffer(dev, n * net.patch_dim)
        self._logits, self._grad_logits = empty_buffer(dev, n * net.num_classes), empty_buffer(dev, n * net.num_classes)
        self._workspace = self.inr.workspace(n)
        self._phi = [empty_buffer(dev, n * net.num_classes) for _ in range(m)] if self.boundary else None
        # Augmentation (off by default): its own generator, tables and output buffers; with
        # it off nothing here is drawn or dispatched, so the run is the one without it.
        self.augmenter = Augmenter(config.augment, net.num_modalities, config.schedule.seed) \
            if config.augment.flags else None
        if self.augmenter is not None:
            rows = self.pool.capacity * slot_stride(net.num_modalities)
            self._tables = [empty_buffer(dev, rows) for _ in range(block * m)]
            self._aug_coords, self._aug_patches = empty_buffer(dev, n * 3), empty_buffer(dev, n * net.patch_dim)
        self.step = 0
        self.best = -1.0
        self.best_step: int | None = None
        self.committed_step: int | None = None
        self.rows: list[dict] = []
        self._stop_requested = False
        if resumed is not None:
            self._resume(resumed)
        elif not resume:
            if overwrite:
                checkpoints.remove_run(self.run_dir)
            make_folder(self.run_dir)
            save_toml(config, self.run_dir / "config.toml")

    # ------------------------------------------------------------------ steps
    def train_step(self) -> dict:
        """One optimiser step; returns the row of metrics for it."""
        return self.train_steps(1)

    def train_steps(self, count: int) -> dict:
        """``count`` optimiser steps; returns the row of metrics of the last one.

        With the device optimiser (``adamw``) the steps are recorded into command buffers of up
        to :data:`MAX_BLOCK_STEPS` steps each, and nothing is read back until a block has run:
        sampling, forward, loss, backward, clipping and the AdamW update of every step are kernels
        (:class:`DeviceAdamW`, :class:`DeviceSampler`).
        A step whose loss or gradient is not finite changes nothing and is reported here; when the
        block's last step is still not finite the run stops (it diverged), as it did before. Blocks
        also end at pool refreshes. Muon steps in torch, one step per submission.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        row: dict = {}
        end = self.step + int(count)
        while self.step < end:
            row = self._torch_step() if self.device_optimizer is None \
                else self._device_block(self._block_length(end, reads=False))
        return row

    def _device_block(self, count: int) -> dict:
        """``count`` (<= MAX_BLOCK_STEPS) steps recorded into one submission; the row of the last."""
        cfg = self.config
        m, first = cfg.sampler.micro_batches, self.step
        lrs = [learning_rate(first + i, cfg.schedule.steps, cfg.optimizer) for i in range(count)]
        optimizer, stride = self.device_optimizer, self.loss.stride
        self.loss.reset()
        self._upload_augment_tables(count)
        with recording(self.device):  # every step of the block in one submission
            for i in range(count):
                optimizer.zero_grads()
                self._record_step(first + i, i)
                optimizer.step(lrs[i], first + i, loss_stats=(self.loss.stats, i * m * stride, m * stride), log_slot=i)
        report = optimizer.read(range(count))
        values = self.loss.values(m, first=(count - 1) * m)
        self.inr.bridge.pull_params()  # torch's view of the weights (checkpoints, callers) follows the device
        self.step += count
        if report.skipped:
            self._report_skipped(report, values)
        self._refresh_pool(first)
        return self._row(values, lrs[-1], float(report.norms[-1]))

    def _torch_step(self) -> dict:
        """One step with torch's optimisers (Muon): the kernels, then pull, clip, step, push."""
        cfg = self.config
        lr = learning_rate(self.step, cfg.schedule.steps, cfg.optimizer)
        set_learning_rate(self.optimizers, lr)
        self.inr.bridge.zero_grads()
        self.loss.reset()
        self._upload_augment_tables(1)
        with recording(self.device):  # the step's ~80 kernels in one submission
            self._record_step(self.step, 0)
        values = self.loss.values(cfg.sampler.micro_batches)
        if not np.isfinite(values["loss"]):  # a diverged run: stop before the optimiser spreads NaN into the weights
            raise NeumoursError(f"{self.run_dir}: step {self.step + 1}: the loss is not finite ({values['loss']}); "
                                "the run diverged (try a lower [optimizer] lr)")
        grad_norm = float(apply_gradients(self.inr.bridge, self.optimizers, cfg.optimizer.clip_norm))
        first = self.step
        self.step += 1
        self._refresh_pool(first)
        return self._row(values, lr, grad_norm)

    def _upload_augment_tables(self, steps: int) -> None:
        """The augmentation's draws of ``steps`` steps, uploaded before they are recorded (augmentation on)."""
        if self.augmenter is None:
            return
        ranges = [c.value_range for c in self.pool.cases]
        for table in self._tables[:steps * self.config.sampler.micro_batches]:
            upload_into(self.device, table, self.augmenter.table(ranges))

    def _record_step(self, step: int, index: int) -> None:
        """Dispatch step ``step``'s micro-batches (the ``index``-th step of its block): draw, gather,
        (augment), forward, loss into the block's slots, backward (gradients accumulate)."""
        cfg = self.config
        n, m = cfg.sampler.micro_batch, cfg.sampler.micro_batches
        for mb in range(m):
            positions, case_ids, labels = self._inputs[mb]
            phi = self._phi[mb] if self.boundary else None
            self.sampler.sample(step, mb, n, positions, case_ids, labels, phi=phi)
            gather_inputs(cfg.network, self.pool_volumes, positions, case_ids, n, self._coords, self._patches)
            coords, patches = self._coords, self._patches
            if self.augmenter is not None:
                coords, patches = self._aug_coords, self._aug_patches
                augment_inputs(self.device, self._coords, self._patches, case_ids, self._tables[index * m + mb],
                               self.pool.size, coords, patches, n, self.augmenter.flags,
                               step * m + mb + (cfg.schedule.seed << 20), cfg.network.num_modalities,
                               cfg.network.patch_size)
            self.inr.forward_device(coords, patches, n, self._logits, self._workspace)
            self.loss.backward(self._logits, labels, n, self._grad_logits, index * m + mb, scale=1.0 / m, phi=phi)
            self.inr.backward_device(coords, patches, n, self._grad_logits, self._workspace)

    def _report_skipped(self, report, values: dict) -> None:
        """Steps the device optimiser skipped (non-finite loss or gradient): a warning when the run
        recovered, the divergence error when the block's last step was still not finite."""
        first, last = report.first_skipped + 1, report.last_skipped + 1
        steps = f"step {first}" if report.skipped == 1 else f"{report.skipped} steps from {first} to {last}"
        if last == self.step:
            what = f"the loss is not finite ({values['loss']})" if not np.isfinite(values["loss"]) \
                else "the loss's gradient is not finite"
            raise NeumoursError(f"{self.run_dir}: step {last}: {what}; the run diverged (try a lower [optimizer] lr; "
                                f"{steps} skipped, weights unchanged by them)")
        print(f"neumours: warning: {self.run_dir}: {steps}: the loss or its gradient was not finite; "
              "the weights were left as they were", file=sys.stderr)

    def _refresh_pool(self, first: int) -> None:
        """Swap a case into the pool at every ``refresh_every``-th step passed since step ``first``."""
        every = self.config.sampler.refresh_every
        if self.pool.cycling and self.step // every > first // every and self.pool.refresh():
            self._update_sampler()

    def _row(self, values: dict, lr: float, grad_norm: float) -> dict:
        row = {"step": self.step, "loss": values["loss"], "ce": values["ce"], "dice_mean": values["dice_mean"],
               "lr": lr, "grad_norm": grad_norm}
        row.update({f"dice_{k}": d for k, d in zip(CLASS_KEYS, values["dice"])})
        return row

    def _update_sampler(self) -> None:
        """Give the device sampler the pool's cases (at the start and after a case was swapped in)."""
        self.sampler.update(self.pool.cases, self.pool.distances if self.boundary else None)

    # ------------------------------------------------------------------ run
    def run(self, stop_after: int | None = None) -> dict:
        """Train until ``config.schedule.steps`` (or ``stop_after`` more steps), committing a
        checkpoint at every validation and at the end. Ctrl-C (SIGINT) stops after the
        current step, commits a checkpoint there and raises KeyboardInterrupt."""
        cfg = self.config.schedule
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        start_time = time.perf_counter() - (self.rows[-1]["time_s"] if self.rows else 0.0)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        previous_handler = self._defer_sigint()
        try:
            blocks = 0
            while self.step < end and not self._stop_requested:
                block_start, block = time.perf_counter(), self._block_length(end)
                row = self.train_steps(block)
                row["time_s"] = time.perf_counter() - start_time
                blocks += 1
                if blocks == 2 and self.progress:  # the first block compiles the kernels: time the second
                    announce_estimate(self, end - self.step, (time.perf_counter() - block_start) / block, bar)
                validated = self.step % cfg.val_every == 0 or self.step == cfg.steps
                if validated:
                    bar.set_description("validating")
                    bar.refresh()
                    row.update(self._validate())
                    bar.set_description("train")
                if self.step % cfg.log_every == 0 or validated:
                    self.rows.append(row)
                if validated:  # the validation row is part of the checkpoint of its step
                    self._save_last()
                bar.update(block)
                bar.set_postfix(loss=f"{row['loss']:.4f}", dice=f"{row['dice_mean']:.3f}",
                                best=f"{max(self.best, 0):.3f}")
            self._save_last()
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        if self._stop_requested:
            self._stop_requested = False
            raise KeyboardInterrupt
        return {"steps": self.step, "best_val_dice_mean": self.best, "run_dir": str(self.run_dir),
                "time_s": time.perf_counter() - start_time, "validation": self.validator.describe()}

    def _block_length(self, end: int, reads: bool = True) -> int:
        """Steps to run in one submission: up to the next pool-refresh step (a case is swapped in
        there), ``end`` or :data:`MAX_BLOCK_STEPS`, and with ``reads`` the next log or validation
        step (the run reads something there)."""
        cfg = self.config
        every = ([cfg.schedule.log_every, cfg.schedule.val_every] if reads else []) \
            + ([cfg.sampler.refresh_every] if self.pool.cycling else [])
        stop = min([end, self.step + MAX_BLOCK_STEPS] + [(self.step // e + 1) * e for e in every])
        return max(1, stop - self.step)

    def _defer_sigint(self):
        """Make Ctrl-C end the loop at a step boundary (the optimiser state is never half-updated)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum, frame) -> None:
            self._stop_requested = True

        try:
            return signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not in the main interpreter
            return None

    def _validate(self) -> dict:
        scores = self.validator()
        row = {f"val_dice_{k}": float(s) for k, s in zip(CLASS_KEYS, scores)}
        row["val_dice_mean"] = float(np.mean(scores))
        row["val_cases"] = self.validator.cases
        if row["val_dice_mean"] > self.best:
            self.best, self.best_step = row["val_dice_mean"], self.step
        return row

    # ------------------------------------------------------------------ files
    def _metadata(self, val_dice_mean: float | None) -> dict:
        return {"step": str(self.step), "optimizer": self.config.optimizer.name,
                "val_dice_mean": "" if val_dice_mean is None else f"{val_dice_mean:.6f}",
                "classes": ",".join(CLASS_NAMES)}

    def _save_last(self) -> None:
        """Commit the checkpoint of the current step (once per step)."""
        if self.committed_step == self.step:
            return
        best_here = self.best_step == self.step
        metadata = self._metadata(self.best if best_here else None)
        state = {"step": self.step, "best": self.best, "best_step": self.best_step,
                 "sampler": {"generator": "philox4x32-10", "seed": self.sampler.seed},
                 "pool": self.pool.state(),
                 "augment": None if self.augmenter is None else self.augmenter.state(),
                 "optimizers": [o.state_dict() for o in self._optimizers()],
                 "rows": self.rows, "data": self.data_record}
        best = {"step": self.best_step, "val_dice_mean": self.best} if self.best_step is not None else None
        checkpoints.commit(self.run_dir, self.step,
                           lambda path: save_checkpoint(path, self.inr.state_dict(), self.config.network, metadata),
                           state, self._metrics_csv(), best)
        self.committed_step = self.step

    def _optimizers(self) -> list:
        """What steps the weights: the device AdamW, or torch's optimisers (Muon and AdamW); each has
        torch's ``state_dict`` / ``load_state_dict``, so checkpoints hold torch optimiser states."""
        return [self.device_optimizer] if self.device_optimizer is not None else self.optimizers

    def _metrics_csv(self) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return text.getvalue()

    def _resume(self, checkpoint: checkpoints.Checkpoint) -> None:
        if not (self.run_dir / "config.toml").is_file():
            raise NeumoursError(f"{self.run_dir}: cannot resume, config.toml is missing")
        saved = load_toml(self.run_dir / "config.toml", TrainConfig())
        if saved.network.architecture() != self.config.network.architecture():
            raise NeumoursError(f"{self.run_dir}: cannot resume, the run's network differs from this configuration")
        state, _, _ = load_checkpoint(checkpoint.weights, expected_config=self.config.network)
        self.inr.load_state_dict(state)
        progress = checkpoint.state
        try:
            for optimizer, saved_state in zip(self._optimizers(), progress["optimizers"], strict=True):
                optimizer.load_state_dict(saved_state)
        except Exception as exc:  # a foreign state file
            raise NeumoursError(f"{self.run_dir}: cannot resume, the optimiser state does not fit ({exc})") from None
        self.step, self.best, self.rows = progress["step"], progress["best"], progress["rows"]
        self.best_step = progress.get("best_step")
        if self.new_data:  # validation Dice on other data does not compare with the run's best so far
            self.best, self.best_step = -1.0, None
        self.committed_step = self.step if checkpoint.manifest is not None else None
        # The device sampler has no state: the points of a step follow from (seed, step, micro-batch).
        try:  # numpy checks the augmentation's generator state (a foreign or edited one: one line)
            if self.augmenter is not None and progress.get("augment") is not None:
                self.augmenter.set_state(progress["augment"])
        except (ValueError, TypeError, KeyError) as exc:
            raise NeumoursError(f"{self.run_dir}: cannot resume, the augmentation state does not fit ({exc})") from None
        self.inr.bridge.named_torch_parameters()  # re-attach .grad views after load_state_dict

    def close(self) -> None:
        self.pool.close()


def train(data, out, config: TrainConfig, device=None, resume: bool = False, progress: bool = True,
          plot: bool = True, *, overwrite: bool = False, force_geometry: bool = False, keep_going: bool = False,
          new_data: bool = False) -> dict:
    """Train (or resume) a run; the Python call behind ``neumours train``.

    ``overwrite``, ``force_geometry``, ``keep_going``, ``new_data``: see :class:`Trainer`. The
    summary's ``failures`` lists (case id, error) of cases left out by ``keep_going``.
    The run folder is locked (:mod:`neumours.locks`) from before the first write to
    the end: a second ``train`` of the same folder is refused at once.
    """
    with FolderLock(out, "run folder"):
        trainer = Trainer(data, out, config, device, resume, progress, overwrite=overwrite,
                          force_geometry=force_geometry, keep_going=keep_going, new_data=new_data)
        try:
            summary = trainer.run()
        finally:
            trainer.close()
        summary["failures"] = trainer.failures
        if plot:
            from neumours.train.curves import plot_run

            plot_run(out)
    return summary
