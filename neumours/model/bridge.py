"""The flat parameter and gradient buffers of a device, exposed to torch optimisers.

The Slang kernels read the INR weights from one flat float32 buffer and
accumulate gradients into another, both in :class:`ParamLayout` order. Training
steps with torch optimisers (AdamW, Muon): this module gives them per-tensor
``nn.Parameter`` objects whose storage *is* those flat vectors, so
``optimizer.step()`` updates the weights in place and no per-step repacking is
needed.

On CUDA the torch tensors are the device buffers themselves (``Buffer.to_torch``,
zero-copy). Elsewhere (the CPU device of tests and CI, Vulkan, Metal) they are
host tensors and :meth:`TorchBridge.push_params` / :meth:`TorchBridge.pull_grads`
copy explicitly. Typical step (the last three lines are
:func:`neumours.train.optim.apply_gradients`, which training and refinement call)::

    bridge.zero_grads()
    ...run the Slang forward/backward kernels (accumulate into bridge.grads_buffer)...
    bridge.pull_grads()
    torch.nn.utils.clip_grad_norm_(params, 1.0); muon.step(); adamw.step()
    bridge.push_params()
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import slangpy as spy
import torch

from neumours.device import download, upload
from neumours.model.params import ParamLayout


class TorchBridge:
    """Flat parameter and gradient buffers shared by Slang kernels and torch.

    Args:
        device: slangpy device the kernels run on.
        layout: where each named tensor sits in the flat vectors.
        init: (layout.total,) initial parameters (e.g. :func:`init_params`).

    Attributes:
        layout: the :class:`ParamLayout`.
        params_buffer: (total,) float32 device buffer the kernels read weights from.
        grads_buffer: (total,) float32 device buffer the kernels accumulate into.
        params: (total,) float32 torch tensor, the optimiser's view of the weights.
        grads: (total,) float32 torch tensor of the gradients.
        zero_copy: True on CUDA, where ``params``/``grads`` alias the buffers.
    """

    def __init__(self, device: spy.Device, layout: ParamLayout, init: np.ndarray):
        init = np.asarray(init)
        if init.shape != (layout.total,):
            raise ValueError(f"init must have shape ({layout.total},), got {init.shape}")
        self.device = device
        self.layout = layout
        n = layout.total
        self.params_buffer = upload(device, init)
        self.grads_buffer = upload(device, np.zeros(n, dtype=np.float32))
        self.zero_copy = device.info.type == spy.DeviceType.cuda
        if self.zero_copy:
            self.params = self.params_buffer.to_torch(spy.DataType.float32, [n])
            self.grads = self.grads_buffer.to_torch(spy.DataType.float32, [n])
        else:
            self.params = torch.from_numpy(np.array(init, dtype=np.float32))
            self.grads = torch.zeros(n, dtype=torch.float32)
        self._torch_params: dict[str, torch.nn.Parameter] | None = None
        self._grad_views = self.named_grads()
        self._push_hooks: list = []

    def add_push_hook(self, hook) -> None:
        """Call ``hook()`` after every :meth:`push_params` and :meth:`weights_changed` (e.g. to refresh a bf16
        copy of the weights by a kernel; a hook dispatches kernels only, no host transfer)."""
        self._push_hooks.append(hook)

    # -- per-tensor views -------------------------------------------------------------

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """name -> view of :attr:`params` shaped as in docs/method.md (no copies)."""
        return self.layout.views(self.params)

    def named_grads(self) -> dict[str, torch.Tensor]:
        """name -> view of :attr:`grads` shaped as in docs/method.md (no copies)."""
        return self.layout.views(self.grads)

    def torch_parameters(self) -> list[torch.nn.Parameter]:
        """One ``nn.Parameter`` per tensor, in layout order, sharing storage with the flat vectors.

        torch optimisers need leaf tensors with a ``.grad``; a view of another
        tensor is not a leaf, so each Parameter is created empty and then given
        the view as its ``.data`` (aliasing :attr:`params`) and the matching view
        of :attr:`grads` as its ``.grad``. Optimiser updates are in-place
        (``mul_``, ``add_``, ``addcdiv_``, foreach variants), so they land in the
        flat vector. The same objects are returned on every call, so several
        optimisers (Muon for 2-D weights, AdamW for the rest) can share them.

        Note: ``optimizer.zero_grad()`` sets ``.grad`` to None by default, which
        detaches it from :attr:`grads`; call :meth:`zero_grads` instead (it and
        :meth:`pull_grads` re-attach the views).

        Returns:
            Parameters in :attr:`ParamLayout.names` order.
        """
        return list(self.named_torch_parameters().values())

    def named_torch_parameters(self) -> dict[str, torch.nn.Parameter]:
        """name -> the Parameter of :meth:`torch_parameters` (to split optimiser groups by name/ndim)."""
        if self._torch_params is None:
            params = {}
            for name, view in self.named_parameters().items():
                p = torch.nn.Parameter(torch.empty(0, dtype=view.dtype, device=view.device))
                p.data = view
                params[name] = p
            self._torch_params = params
            self._attach_grads()
        return dict(self._torch_params)

    def _attach_grads(self) -> None:
        """(Re)bind each Parameter's ``.grad`` to its view of :attr:`grads`; always the same view objects."""
        if self._torch_params is None:
            return
        for name, view in self._grad_views.items():
            p = self._torch_params[name]
            if p.grad is not view:
                p.grad = view

    # -- host <-> device --------------------------------------------------------------

    def push_params(self) -> None:
        """Make the optimiser's weights visible to the Slang kernels.

        Non-CUDA devices: copy :attr:`params` into :attr:`params_buffer`. CUDA:
        nothing to copy, but torch's kernels run asynchronously on torch's stream
        while slangpy submits to its own queue, so wait for torch's stream to
        finish; otherwise a Slang kernel could read half-updated weights.
        """
        if self.zero_copy:
            torch.cuda.current_stream(self.params.device).synchronize()
        else:
            self.params_buffer.copy_from_numpy(self.params.numpy())
        self.weights_changed()

    def weights_changed(self) -> None:
        """Run the push hooks: :attr:`params_buffer` holds new weights (after :meth:`push_params`, or a
        kernel that stepped them on the device). The hooks only dispatch kernels, so this may be recorded."""
        for hook in self._push_hooks:
            hook()

    def pull_grads(self) -> None:
        """Make the gradients the Slang kernels accumulated visible to torch.

        Non-CUDA devices: copy :attr:`grads_buffer` into :attr:`grads` in place
        (the Parameters' ``.grad`` views stay valid). CUDA: nothing to copy, but
        wait for the device's submitted work so torch does not read gradients
        that are still being accumulated.
        """
        if self.zero_copy:
            self.device.wait_for_idle()
        else:
            self.grads.copy_(torch.from_numpy(download(self.grads_buffer, (self.layout.total,))))
        self._attach_grads()

    def pull_params(self) -> None:
        """Make weights the Slang kernels changed (an optimiser step on the device) visible to torch.

        Non-CUDA devices: copy :attr:`params_buffer` into :attr:`params` in place (Parameters and
        optimisers keep pointing at it). CUDA: nothing to copy; wait for the device's submitted work.
        """
        if self.zero_copy:
            self.device.wait_for_idle()
        else:
            with torch.no_grad():
                self.params.copy_(torch.from_numpy(download(self.params_buffer, (self.layout.total,))))

    def zero_grads(self) -> None:
        """Zero the device gradient buffer and :attr:`grads` (before a step's backward)."""
        self.grads.zero_()
        if self.zero_copy:
            torch.cuda.current_stream(self.grads.device).synchronize()
        else:
            self.grads_buffer.copy_from_numpy(np.zeros(self.layout.total, dtype=np.float32))
        self._attach_grads()

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """name -> clone of the current weights (docs/method.md names and shapes, :attr:`params`'s device)."""
        return {name: view.detach().clone() for name, view in self.named_parameters().items()}

    def snapshot(self) -> torch.Tensor:
        """(total,) float32 copy of the current weights, on :attr:`params`'s device (to take a change back
        bit for bit with :meth:`restore`, or to save)."""
        return self.params.detach().clone()

    def restore(self, flat: torch.Tensor) -> None:
        """Write a :meth:`snapshot` back into :attr:`params` in place (Parameters and optimisers keep
        pointing at it) and make it the kernels' weights."""
        with torch.no_grad():
            self.params.copy_(flat)
        self.push_params()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace all weights (torch tensors or numpy arrays, docs/method.md names and shapes).

        Writes :attr:`params` in place (Parameters and optimisers keep pointing
        at it) and updates the device buffer.

        Raises:
            NeumoursError: a name missing or unknown, or a shape mismatch.
        """
        flat = self.layout.pack(state)
        with torch.no_grad():
            self.params.copy_(torch.from_numpy(flat).to(self.params.device))
        self.push_params()

    def __repr__(self) -> str:
        kind = str(self.device.info.type).rsplit(".", 1)[-1]
        return f"TorchBridge({kind}, {self.layout.total} params, zero_copy={self.zero_copy})"
