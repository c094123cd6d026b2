"""The INR as a ``torch.nn.Module`` whose forward and backward are the project's Slang kernels.

    net = INRModule(INRConfig.tiny(), device)          # or INRModule.wrap(inr), INRModule.load(path, device)
    logits = net(coords, patches)                       # (N, 3), (N, 4, 3, 3, 3) -> (N, 4)
    loss_fn(logits).backward()                          # INR.backward_device; gradients land in p.grad
    torch.optim.AdamW(net.parameters()).step()          # writes the kernels' weight buffer in place

The parameters are the torch bridge's views of the flat weight buffer
(:class:`neumours.model.bridge.TorchBridge`), one ``nn.Parameter`` per tensor of
docs/method.md "Network" under the same names, so ``state_dict`` is a checkpoint's
tensors and ``load_state_dict`` writes the buffer. Gradients do not alias the
kernels' gradient buffer: each backward starts that buffer from zero and hands a
copy to autograd, which accumulates into ``.grad`` (gradient accumulation,
``torch.autograd.grad`` and several forwards before one backward all work).
A forward that needs a backward keeps its activations in a workspace of its own
(returned to a pool when autograd frees the graph); under ``torch.no_grad()`` or
with nothing requiring grad, nothing is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slangpy as spy
import torch

from neumours.device import empty_buffer, get_device
from neumours.device.buffers import ScratchBuffers
from neumours.errors import NeumoursError
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR, Workspace
from neumours.torch import exchange


class WorkspacePool:
    """Workspaces of forwards awaiting their backward, reused once autograd frees them.

    Each workspace comes with scratch buffers for the copies of its inputs and of the
    incoming logits gradient (:class:`~neumours.device.buffers.ScratchBuffers`). Freed
    workspaces stay allocated for the next forward of a similar size (creating device
    buffers is slow on CUDA); :meth:`clear` releases them.
    """

    def __init__(self, inr: INR):
        self.inr = inr
        self._free: list[tuple[Workspace, ScratchBuffers]] = []
        self.leased = 0

    def clear(self) -> None:
        """Release the workspaces no graph holds (e.g. after a forward over many more points than usual)."""
        self._free.clear()

    def take(self, count: int, input_grads: bool) -> "Lease":
        fits = [slot for slot in self._free if slot[0].capacity >= count]
        if fits:
            slot = min(fits, key=lambda s: s[0].capacity)
            self._free.remove(slot)
        else:
            slot = (self.inr.new_workspace(count), ScratchBuffers(self.inr.device))
        if input_grads:
            self.inr.with_input_grads(slot[0])
        self.leased += 1
        return Lease(self, *slot)


class Lease:
    """A workspace (and its scratch buffers) held by one autograd node; back to its pool when
    the node is freed."""

    def __init__(self, pool: WorkspacePool, workspace: Workspace, scratch: ScratchBuffers):
        self.pool, self.workspace, self.scratch = pool, workspace, scratch

    def __del__(self):
        self.pool.leased -= 1
        self.pool._free.append((self.workspace, self.scratch))


def weight_gradients(inr: INR, accumulate) -> torch.Tensor:
    """Run ``accumulate()`` (Slang backward kernels adding into the gradient buffer) from a zeroed
    buffer; returns a (total,) float32 copy of the result, on the parameters' torch device."""
    bridge = inr.bridge
    bridge.zero_grads()
    accumulate()
    bridge.pull_grads()
    return bridge.grads.detach().clone()


def param_grads(module: "INRModule", flat: torch.Tensor, needed) -> tuple:
    """Per-parameter views of a flat gradient, None where autograd does not need one."""
    views = module.inr.layout.views(flat)
    return tuple(views[name] if need else None for name, need in zip(module.names, needed))


class _INRFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module: "INRModule", coords: torch.Tensor, patches: torch.Tensor, *params: torch.Tensor):
        inr, dev, cfg = module.inr, module.inr.device, module.inr.config
        n = coords.shape[0]
        input_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if input_grads and inr.precision != "fp32":
            raise NeumoursError("input gradients (coords, patches requiring grad) need precision fp32, "
                                f"this INR runs {inr.precision}")
        module.push()
        lease = module.pool.take(max(n, 1), input_grads)
        c = exchange.to_buffer(dev, coords, scratch=lease.scratch, name="coords")
        p = exchange.to_buffer(dev, patches, scratch=lease.scratch, name="patches")
        exchange.before_kernels(dev)
        logits = empty_buffer(dev, n * cfg.num_classes)
        if n:
            inr.forward_device(c, p, n, logits, lease.workspace)
        ctx.state = (module, c, p, n, lease, input_grads, patches.shape)
        return exchange.from_buffer(dev, logits, (n, cfg.num_classes))

    @staticmethod
    @exchange.first_order
    def backward(ctx, grad_logits: torch.Tensor):
        module, c, p, n, lease, input_grads, patch_shape = ctx.state
        inr, dev = module.inr, module.inr.device
        g = exchange.to_buffer(dev, grad_logits.contiguous(), scratch=lease.scratch, name="grad_logits")
        exchange.before_kernels(dev)

        def accumulate():
            if n:
                inr.backward_device(c, p, n, g, lease.workspace, input_grads)

        flat = weight_gradients(inr, accumulate)
        grad_coords = grad_patches = None
        if input_grads:
            ws = lease.workspace
            grad_coords = exchange.from_buffer(dev, ws.grad_coords, (n, 3)).clone()
            grad_patches = exchange.from_buffer(dev, ws.grad_patches, (n, inr.config.patch_dim)).clone()
            grad_patches = grad_patches.view(patch_shape)
        return (None, grad_coords, grad_patches, *param_grads(module, flat, ctx.needs_input_grad[3:]))


class INRModule(torch.nn.Module):
    """The INR of docs/method.md as a torch module over the Slang kernels.

    Args:
        config: network sizes and precision (``"auto"``: bf16 tensor cores on CUDA, fp32 elsewhere);
            default the paper's network.
        device: slangpy device; default :func:`neumours.device.get_device`. Its tensors live
            in CUDA memory for the CUDA device and on the host for the others.
        seed: the initialisation's seed.
        inr: an existing :class:`~neumours.model.inr.INR` to wrap instead (weights shared).

    Attributes:
        inr: the kernels' network (its buffers are this module's parameters).
        names: parameter names in layout order (docs/method.md).
    """

    def __init__(self, config: INRConfig | None = None, device: spy.Device | None = None, seed: int = 0,
                 inr: INR | None = None):
        super().__init__()
        self.inr = inr if inr is not None else INR(config, device or get_device(), seed)
        self.config = self.inr.config
        self.pool = WorkspacePool(self.inr)
        self.names = list(self.inr.layout.names)
        for name, view in self.inr.bridge.named_parameters().items():
            param = torch.nn.Parameter(torch.empty(0, dtype=view.dtype, device=view.device))
            param.data = view  # the flat weight buffer itself (CUDA) or its host mirror
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, param)

    @classmethod
    def wrap(cls, inr: INR) -> "INRModule":
        """A module over an existing network (its weight buffer; nothing copied)."""
        return cls(inr=inr)

    @classmethod
    def load(cls, path: str | Path, device: spy.Device | None = None, precision: str | None = None) -> "INRModule":
        """A module with a checkpoint's config and weights (``precision`` overrides the stored one)."""
        import dataclasses

        from neumours.model.checkpoint import load_checkpoint

        state, config, _ = load_checkpoint(Path(path))
        if precision is not None:
            config = dataclasses.replace(config, precision=precision)
        module = cls(config, device)
        module.inr.load_state_dict(state)  # numpy arrays of the checkpoint, written into the parameters in place
        return module

    @property
    def device(self) -> spy.Device:
        return self.inr.device

    @property
    def torch_device(self) -> torch.device:
        return exchange.torch_device(self.inr.device)

    def ordered_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters in layout order (what the autograd functions take)."""
        named = dict(self.named_parameters())
        return [named[name] for name in self.names]

    def push(self) -> None:
        """Make the current weights the kernels' (host copy on non-CUDA devices, stream wait on CUDA)."""
        self.inr.bridge.push_params()

    def forward(self, coords: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Class logits of points.

        Args:
            coords: (N, 3) in [-1, 1]. patches: (N, 4, 3, 3, 3) or (N, 108) normalised intensities.

        Returns:
            (N, num_classes) float32 logits on :attr:`torch_device`; differentiable w.r.t. the
            parameters (and, at precision fp32, the inputs).
        """
        cfg, dev = self.config, self.inr.device
        coords = exchange.check("coords", coords, dev, (None, 3)).float()
        n = coords.shape[0]
        exchange.check("patches", patches, dev)
        p = cfg.patch_size
        if tuple(patches.shape) not in ((n, cfg.num_modalities, p, p, p), (n, cfg.patch_dim)):
            raise NeumoursError(f"patches: expected shape ({n}, {cfg.num_modalities}, {p}, {p}, {p}), "
                                f"got {tuple(patches.shape)}")
        patches = patches.float()
        params = self.ordered_parameters()
        if torch.is_grad_enabled() and (coords.requires_grad or patches.requires_grad
                                        or any(q.requires_grad for q in params)):
            return _INRFunction.apply(self, coords, patches, *params)
        return self._forward_only(coords, patches)

    def _forward_only(self, coords: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Logits with no state kept for a backward (the fused kernel where the INR has one, else the
        shared workspace)."""
        inr, dev, n = self.inr, self.inr.device, coords.shape[0]
        self.push()
        c, p = exchange.to_buffer(dev, coords), exchange.to_buffer(dev, patches)
        exchange.before_kernels(dev)
        logits = empty_buffer(dev, n * self.config.num_classes)
        if n:
            inr.infer_device(c, p, n, logits)
        return exchange.from_buffer(dev, logits, (n, self.config.num_classes))

    def at_voxels(self, volumes: CaseVolumes, positions: torch.Tensor | np.ndarray, case_index: int = 0) -> torch.Tensor:
        """Logits at voxel positions of one case: the coordinates and patches are made on the device.

        Args:
            volumes: normalised volumes on the device (:meth:`CaseVolumes.upload`).
            positions: (N, 3) voxel positions (integral: on the grid; otherwise trilinear patches).

        Returns:
            (N, num_classes) logits, differentiable w.r.t. the parameters.
        """
        dev, cfg = self.inr.device, self.config
        positions = torch.as_tensor(positions, dtype=torch.float32).reshape(-1, 3)
        n = positions.shape[0]
        pos = exchange.to_buffer(dev, positions.to(self.torch_device))
        ids = exchange.to_buffer(dev, torch.full((n,), int(case_index), dtype=torch.int32,
                                                 device=self.torch_device), np.uint32)
        coords, patches = empty_buffer(dev, n * 3), empty_buffer(dev, n * cfg.patch_dim)
        exchange.before_kernels(dev)
        if n:
            gather_inputs(cfg, volumes, pos, ids, n, coords, patches)
        return self(exchange.from_buffer(dev, coords, (n, 3)), exchange.from_buffer(dev, patches, (n, cfg.patch_dim)))

    def extra_repr(self) -> str:
        return f"{self.inr.layout.total} parameters, precision={self.inr.precision}"
