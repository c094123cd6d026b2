"""AdamW with gradient clipping on the device, over the bridge's flat buffers (issue 25's device-resident step).

:class:`DeviceAdamW` does what :func:`neumours.train.optim.apply_gradients` does for the optimiser
``adamw`` (clip the total gradient norm, ``torch.optim.AdamW.step``), as Slang kernels
(``slang/optim_kernels.slang``): no download, upload or torch work per step, so a block of steps
can be recorded into one command buffer (:func:`neumours.device.recording`). A step whose gradient
norm or loss sums are not finite changes nothing (weights, moments, step count) and is reported
by :meth:`DeviceAdamW.read` with its step index. Muon stays in torch: this class serves ``adamw`` only.

Guarantees (tests/test_device_optim.py): on the CPU device the update is bit for bit torch 2.13's
single-tensor AdamW with an exactly rounded square root (torch's CPU ``sqrt`` of more than 8 values
goes through MKL, whose AVX-512 kernel can be 1 ulp off; docs/method.md); the gradient norm is
summed in a fixed order, so it is the same in every run on a device; the state converts to and
from ``torch.optim.AdamW.state_dict()`` of :func:`neumours.train.optim.build_optimizers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy
import torch

from neumours.device import download, empty_buffer, upload, upload_into
from neumours.errors import NeumoursError
from neumours.kernels import optim as kernels
from neumours.model.bridge import TorchBridge
from neumours.train.optim import build_optimizers

#: torch.optim.AdamW's default eps (build_optimizers does not set one).
EPS = 1e-8


@dataclass(frozen=True)
class StepReport:
    """What :meth:`DeviceAdamW.read` found.

    Attributes:
        norms: (len(log_slots),) float32 gradient norms before clipping, one per slot asked for.
        skipped: steps skipped (non-finite gradient norm or loss) since the previous read.
        first_skipped, last_skipped: training-step indices of the first and last of them (None: none).
        steps: Adam's step count (steps taken, skipped ones not counted).
        total_skipped: steps skipped since this optimiser was made or loaded.
    """

    norms: np.ndarray
    skipped: int
    first_skipped: int | None
    last_skipped: int | None
    steps: int
    total_skipped: int


class DeviceAdamW:
    """torch.optim.AdamW (+ clip_grad_norm_) over ``bridge``'s parameters, stepped by kernels.

    Args:
        bridge: the flat parameter/gradient buffers (params_buffer is updated in place; call
            :meth:`TorchBridge.pull_params` before torch reads :attr:`TorchBridge.params`).
        config: an OptimizerConfig with ``name == "adamw"`` (lr is given per step, betas,
            weight_decay and clip_norm are used as they are).
        log_slots: norms kept on the device between reads (step(..., log_slot=k) writes slot k).
    """

    def __init__(self, bridge: TorchBridge, config, log_slots: int = 1):
        if config.name != "adamw":
            raise NeumoursError(f"DeviceAdamW steps the optimizer adamw only, not {config.name!r} (Muon stays in torch)")
        if log_slots < 1:
            raise ValueError(f"log_slots must be at least 1, got {log_slots}")
        self.bridge = bridge
        self.config = config
        self.device = bridge.device
        self.count = bridge.layout.total
        self.log_slots = int(log_slots)
        self.betas = (float(config.betas[0]), float(config.betas[1]))
        self.exp_avg = upload(self.device, np.zeros(self.count, np.float32))
        self.exp_avg_sq = upload(self.device, np.zeros(self.count, np.float32))
        self.partials = empty_buffer(self.device, kernels.PARTIALS)
        self.state = upload(self.device, self._fresh_state(0), np.uint32)

    def _fresh_state(self, steps: int) -> np.ndarray:
        state = np.zeros(kernels.STATE_WORDS + self.log_slots, np.uint32)
        state[kernels.S_STEP] = steps
        state[kernels.S_FIRST_SKIPPED] = state[kernels.S_LAST_SKIPPED] = kernels.NONE
        return state

    # -- per step: dispatches only ---------------------------------------------------------

    def zero_grads(self) -> None:
        """Zero the device gradient buffer by a kernel (recordable, unlike :meth:`TorchBridge.zero_grads`)."""
        kernels.fill(self.device, self.bridge.grads_buffer, self.count, 0.0)

    def step(self, lr: float, step_index: int, loss_stats: tuple[spy.Buffer, int, int] | None = None,
             log_slot: int = 0) -> None:
        """One optimiser step over the gradients in ``bridge.grads_buffer``: three dispatches, nothing read back.

        Args:
            lr: this step's learning rate (the host's schedule, :func:`neumours.train.optim.learning_rate`).
            step_index: the training step, reported if this step is skipped.
            loss_stats: (buffer, offset, count): the step's float32 loss sums; any non-finite one skips
                the step (None: only the gradient norm is checked).
            log_slot: where the gradient norm is kept for :meth:`read` (< log_slots).
        """
        if not 0 <= log_slot < self.log_slots:
            raise ValueError(f"log_slot must be in [0, {self.log_slots}), got {log_slot}")
        lr = float(lr)
        stats, offset, count = loss_stats if loss_stats is not None else (None, 0, 0)
        kernels.grad_partials(self.device, self.bridge.grads_buffer, self.count, self.partials)
        kernels.finish_step(self.device, self.partials, self.state, log_slot, step_index, self.config.clip_norm,
                            lr, self.betas, stats, offset, count)
        beta1, beta2 = self.betas
        # The Python scalars torch's AdamW hands its float32 kernels (computed in double, cast once).
        kernels.adamw_step(self.device, self.bridge.params_buffer, self.bridge.grads_buffer, self.exp_avg,
                           self.exp_avg_sq, self.state, self.count, decay=1 - lr * self.config.weight_decay,
                           weight1=1 - beta1, beta2=beta2, weight2=1 - beta2, eps=EPS)
        self.bridge.weights_changed()   # e.g. the tensor-core backend's bf16 copy of the weights

    # -- between blocks ----------------------------------------------------------------------

    def read(self, log_slots=None) -> StepReport:
        """The logged norms and the skip report, in one download; then clears the skip report.

        Args:
            log_slots: slot indices to return (default all). Call outside a recording block.
        """
        slots = range(self.log_slots) if log_slots is None else [int(k) for k in log_slots]
        words = download(self.state, (kernels.STATE_WORDS + self.log_slots,), np.uint32)
        norms = words[kernels.STATE_WORDS:].view(np.float32)[list(slots)].copy()
        skipped = int(words[kernels.S_SKIPPED])
        first, last = int(words[kernels.S_FIRST_SKIPPED]), int(words[kernels.S_LAST_SKIPPED])
        if skipped:
            kernels.clear_skips(self.device, self.state)
        return StepReport(norms=norms, skipped=skipped, first_skipped=first if skipped else None,
                          last_skipped=last if skipped else None, steps=int(words[kernels.S_STEP]),
                          total_skipped=int(words[kernels.S_TOTAL_SKIPPED]))

    def _torch_optimizer(self) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
        (optimizer,) = build_optimizers(self.bridge, self.config)
        return optimizer, optimizer.param_groups[0]["params"]

    def state_dict(self) -> dict:
        """The optimiser state as ``torch.optim.AdamW.state_dict()`` of :func:`build_optimizers` gives it.

        Parameters in build_optimizers' order (the layout's); ``step`` the device's step count; the
        group's lr is the config's (the schedule sets each step's). Empty state before the first step,
        as torch's.
        """
        optimizer, parameters = self._torch_optimizer()
        steps = int(download(self.state, (kernels.STATE_WORDS,), np.uint32)[kernels.S_STEP])
        if steps:
            layout = self.bridge.layout
            m = torch.from_numpy(download(self.exp_avg, (self.count,)))
            v = torch.from_numpy(download(self.exp_avg_sq, (self.count,)))
            m_views, v_views = layout.views(m), layout.views(v)
            for name, p in zip(layout.names, parameters):
                optimizer.state[p] = {"step": torch.tensor(float(steps), dtype=torch.float32),
                                      "exp_avg": m_views[name].clone().to(p.device),
                                      "exp_avg_sq": v_views[name].clone().to(p.device)}
        return optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a ``torch.optim.AdamW.state_dict()`` (of build_optimizers over this bridge) onto the device.

        Raises:
            NeumoursError: the state is not AdamW's over these parameters (torch's own check), was saved
                with other betas, weight decay, eps (or amsgrad, maximize), or its tensors disagree in step count.
        """
        optimizer, parameters = self._torch_optimizer()
        try:
            optimizer.load_state_dict(state_dict)
        except (ValueError, KeyError, RuntimeError) as error:
            raise NeumoursError(f"optimizer state does not fit this network: {error}") from None
        group = optimizer.param_groups[0]
        wanted = {"betas": self.betas, "weight_decay": float(self.config.weight_decay), "eps": EPS,
                  "amsgrad": False, "maximize": False}
        differ = [f"{key} {group.get(key)!r} (here {value!r})" for key, value in wanted.items()
                  if (tuple(group.get(key)) if key == "betas" else group.get(key)) != value]
        if differ:
            raise NeumoursError(f"optimizer state: saved with other settings: {', '.join(differ)}")
        states = [optimizer.state.get(p) for p in parameters]
        layout = self.bridge.layout
        m = np.zeros(self.count, np.float32)
        v = np.zeros(self.count, np.float32)
        steps = set()
        for name, p, state in zip(layout.names, parameters, states):
            if not state:
                steps.add(0)
                continue
            steps.add(int(float(state["step"])))
            start = layout.offset(name)
            m[start:start + p.numel()] = state["exp_avg"].detach().cpu().reshape(-1).numpy()
            v[start:start + p.numel()] = state["exp_avg_sq"].detach().cpu().reshape(-1).numpy()
        if len(steps) != 1:
            raise NeumoursError(f"optimizer state: the parameters are at different steps {sorted(steps)}")
        upload_into(self.device, self.exp_avg, m)
        upload_into(self.device, self.exp_avg_sq, v)
        upload_into(self.device, self.state, self._fresh_state(steps.pop()), np.uint32)
