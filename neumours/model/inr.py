"""The INR of docs/method.md run by Slang kernels, its parameters in one flat device buffer.

Forward for N points (all device-resident, no host round trip):

    H0[:, :S] = relu(gamma(coords) Ws^T + bs)     Fourier features made in-kernel
    H0[:, S:] = relu(patches Wm^T + bm)           (the valid 3x3x3 conv is a dot product)
    H{l+1}    = relu(H{l} W{l}^T + b{l})          l = 0 .. hidden_layers - 1
    logits    = H{L} Wh^T + bh

Backward walks the same layers: dW += delta^T H (split over points, reduced per
group before one atomic add per weight and group), delta_prev = (delta W) * [H > 0].
These layers and the products of both passes are described once
(:mod:`neumours.model.network`) and run by a backend (:mod:`neumours.model.backend`):
fp32 FMA products on every device (:mod:`neumours.model.fma`) or, with
``precision="bf16"`` on CUDA, tensor-core products (:mod:`neumours.model.tensor_core`),
on the same weights. Inference (:meth:`INR.infer_device`: logits only) runs the whole
forward as one fused kernel (:mod:`neumours.model.fused`) where the network allows it at
precision bf16, and the forward products elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.device import download, empty_buffer, get_device, upload
from neumours.errors import NeumoursError
from neumours.kernels.encoding import encode_backward
from neumours.model.backend import Backend, Tensors
from neumours.model.bridge import TorchBridge
from neumours.model.config import INRConfig
from neumours.model.fma import FMABackend
from neumours.model.network import Network
from neumours.model.params import ParamLayout, init_params


def resolve_precision(precision: str, device: spy.Device) -> str:
    """"fp32" or "bf16" for an INRConfig.precision on ``device`` ("auto": bf16 on CUDA, else fp32).

    The bf16 kernels drive the tensor cores through a CUDA C++ prelude (ldmatrix, ``mma.sync``)
    that only the CUDA backend compiles: Vulkan (SPIR-V), Metal and the CPU target run the fp32
    kernels, so "auto" is fp32 there, also on an NVIDIA card driven through Vulkan.

    Raises:
        NeumoursError: "bf16" on a device other than CUDA.
    """
    is_cuda = device.info.type == spy.DeviceType.cuda
    if precision == "auto":
        return "bf16" if is_cuda else "fp32"
    if precision == "bf16" and not is_cuda:
        kind = str(device.info.type).rsplit(".", 1)[-1]
        raise NeumoursError(f"precision bf16 needs a CUDA device (tensor cores), not {kind}: its kernels are CUDA "
                            "C++, which other backends cannot run; use --precision fp32")
    return precision


@dataclass
class Workspace:
    """Device buffers for a batch of up to ``capacity`` points.

    ``hidden[l]`` is H_l (capacity, hidden_width) for l = 0 .. hidden_layers;
    ``delta`` holds two (capacity, hidden_width) gradient buffers used in turn.
    Each holds capacity x hidden_width 32-bit values: float32 for precision fp32,
    bf16 (the first half) for bf16.
    """

    capacity: int
    hidden: list
    delta: list
    grad_gamma: spy.Buffer | None = None
    grad_coords: spy.Buffer | None = None
    grad_patches: spy.Buffer | None = None


class INR:
    """The network of docs/method.md as Slang kernels, with torch-shared parameters.

    Args:
        config: network sizes and precision; default the paper's (262,020 parameters).
        device: slangpy device; default :func:`neumours.device.get_device`.
        seed: seed of the torch-like default initialisation.

    The flat parameter and gradient buffers are ``self.bridge.params_buffer`` and
    ``self.bridge.grads_buffer``; ``self.bridge`` exposes them to torch optimisers.
    ``self.precision`` is the resolved precision, "fp32" or "bf16"; ``self.network``
    the layers and products (:class:`~neumours.model.network.Network`) that
    ``self.backend`` runs; ``self.fused`` the fused inference kernel's weights
    (:class:`~neumours.model.fused.FusedInference`) at precision bf16 where the network
    fits it, else None.

    Raises:
        NeumoursError: precision bf16 on a device without tensor cores (not CUDA).
    """

    def __init__(self, config: INRConfig | None = None, device: spy.Device | None = None, seed: int = 0):
        self.config = config or INRConfig.paper()
        self.device = device or get_device()
        self.precision = resolve_precision(self.config.precision, self.device)
        self.layout = ParamLayout(self.config)
        self.bridge = TorchBridge(self.device, self.layout, init_params(self.config, seed))
        self._workspace: Workspace | None = None
        self.network = Network(self.config)
        self.backend: Backend
        self.fused = None
        if self.precision == "bf16":
            from neumours.model.fused import FusedInference, fused_problem
            from neumours.model.tensor_core import TensorCoreBackend

            self.backend = TensorCoreBackend(self)
            if fused_problem(self.config) is None:
                self.fused = FusedInference(self)
                self.bridge.add_push_hook(self.fused.refresh)
        else:
            self.backend = FMABackend(self)
        self.bridge.add_push_hook(self.backend.refresh)

    # ------------------------------------------------------------------ parameters
    def num_parameters(self) -> int:
        """Number of scalars in the network (262,020 for the paper's config)."""
        return self.layout.total

    def state_dict(self):
        """Parameters as torch tensors named as in docs/method.md (copies)."""
        return self.bridge.state_dict()

    def load_state_dict(self, state) -> None:
        """Load parameters from torch tensors or numpy arrays with docs/method.md names and shapes."""
        self.bridge.load_state_dict(state)

    def zero_grad(self) -> None:
        self.bridge.zero_grads()

    # ------------------------------------------------------------------ workspace
    def workspace(self, count: int, input_grads: bool = False) -> Workspace:
        """Buffers for ``count`` points, grown on demand and reused between calls."""
        ws = self._workspace
        if ws is None or ws.capacity < count:
            ws = self._workspace = self.new_workspace(count)
        return self.with_input_grads(ws) if input_grads else ws

    def new_workspace(self, count: int, input_grads: bool = False) -> Workspace:
        """Buffers for ``count`` points that no other call reuses (a forward kept for a later backward)."""
        cfg = self.config
        hidden = [empty_buffer(self.device, count * cfg.hidden_width) for _ in range(cfg.hidden_layers + 1)]
        delta = [empty_buffer(self.device, count * cfg.hidden_width) for _ in range(2)]
        ws = Workspace(count, hidden, delta)
        return self.with_input_grads(ws) if input_grads else ws

    def with_input_grads(self, ws: Workspace) -> Workspace:
        """``ws`` with the buffers of dL/dcoords and dL/dpatches (added once)."""
        cfg = self.config
        if ws.grad_gamma is None:
            ws.grad_gamma = empty_buffer(self.device, ws.capacity * cfg.fourier_dim)
            ws.grad_coords = empty_buffer(self.device, ws.capacity * 3)
            ws.grad_patches = empty_buffer(self.device, ws.capacity * cfg.patch_dim)
        return ws

    @staticmethod
    def tensors(ws: Workspace, **buffers: spy.Buffer) -> Tensors:
        """What a backend's pass takes: the tensor names of :mod:`neumours.model.network` bound to ``ws``
        and the given buffers (the coordinates as ``gamma``)."""
        tensors = {f"hidden.{layer}": buffer for layer, buffer in enumerate(ws.hidden)}
        tensors.update({f"delta.{i}": buffer for i, buffer in enumerate(ws.delta)}, **buffers)
        if ws.grad_gamma is not None:
            tensors.update(grad_gamma=ws.grad_gamma, grad_patches=ws.grad_patches)
        return tensors

    # ------------------------------------------------------------------ device API
    def forward_device(self, coords: spy.Buffer, patches: spy.Buffer, count: int, logits: spy.Buffer,
                       workspace: Workspace | None = None) -> Workspace:
        """Logits for ``count`` points, every buffer on the device.

        Args:
            coords: (count, 3) float32 in [-1, 1]. patches: (count, patch_dim) float32.
            logits: output, (count, num_classes) float32.
            workspace: from :meth:`workspace`; keeps every H_l for :meth:`backward_device`.
        """
        ws = workspace or self.workspace(count)
        self.backend.forward(self.tensors(ws, gamma=coords, patches=patches, logits=logits), count)
        return ws

    def infer_device(self, coords: spy.Buffer, patches: spy.Buffer, count: int, logits: spy.Buffer,
                     workspace: Workspace | None = None) -> None:
        """Logits for ``count`` points when no backward follows: the fused kernel where there is one
        (``self.fused``; no workspace needed), else :meth:`forward_device` with ``workspace``
        (a forward-only one is enough: :func:`neumours.infer.points.forward_workspace`)."""
        if self.fused is not None:
            self.fused.forward(coords, patches, count, logits)
        else:
            self.forward_device(coords, patches, count, logits, workspace)

    def backward_device(self, coords: spy.Buffer, patches: spy.Buffer, count: int, grad_logits: spy.Buffer,
                        workspace: Workspace, input_grads: bool = False) -> None:
        """Accumulate dL/dparams into the gradient buffer, given dL/dlogits.

        Args:
            coords, patches: the inputs of the matching :meth:`forward_device` call.
            grad_logits: (count, num_classes) float32.
            workspace: the workspace that forward filled (its H_l are read).
            input_grads: also write dL/dcoords (count, 3) and dL/dpatches
                (count, patch_dim) into ``workspace.grad_coords`` / ``grad_patches``.

        The products are the network's (:meth:`neumours.model.network.Network.backward`):
        delta_below = (delta W) * [H > 0] also sums delta_below's columns into the
        bias gradient of the layer below, and the head's bias gradient rides on its
        weight-gradient product.
        """
        if input_grads and not self.backend.input_grads:
            raise ValueError(f"input gradients are computed at precision fp32 only, not {self.precision}")
        tensors = self.tensors(workspace, gamma=coords, patches=patches, grad_logits=grad_logits)
        self.backend.backward(tensors, count, input_grads)
        if input_grads:
            encode_backward(self.device, coords, workspace.grad_gamma, workspace.grad_coords, count,
                            self.config.num_freqs)

    # ------------------------------------------------------------------ host API
    def _host_inputs(self, coords: np.ndarray, patches: np.ndarray):
        cfg = self.config
        coords = np.asarray(coords, dtype=np.float32)
        patches = np.asarray(patches, dtype=np.float32)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must have shape (N, 3), got {coords.shape}")
        p = cfg.patch_size
        expected = (len(coords), cfg.num_modalities, p, p, p)
        if patches.shape != expected and patches.shape != (len(coords), cfg.patch_dim):
            raise ValueError(f"patches must have shape {expected}, got {patches.shape}")
        if not (np.isfinite(coords).all() and np.isfinite(patches).all()):
            raise ValueError("coords or patches contain NaN or Inf")
        return upload(self.device, coords), upload(self.device, patches.reshape(len(coords), -1)), len(coords)

    def forward(self, coords: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """Logits for points given on the host.

        Args:
            coords: (N, 3) in [-1, 1]. patches: (N, 4, 3, 3, 3) normalised intensities.

        Returns:
            (N, num_classes) float32 logits.
        """
        c, p, n = self._host_inputs(coords, patches)
        logits = empty_buffer(self.device, n * self.config.num_classes)
        if n:
            self.bridge.push_params()
            self.forward_device(c, p, n, logits)
        return download(logits, (n, self.config.num_classes))

    def backward(self, coords: np.ndarray, patches: np.ndarray, grad_logits: np.ndarray,
                 input_grads: bool = False) -> dict[str, np.ndarray]:
        """Gradients of a loss given dL/dlogits, for points given on the host.

        Gradients start from zero (unlike :meth:`backward_device`, which accumulates).

        Returns:
            ``{name: gradient}`` with docs/method.md names and shapes, plus ``"coords"``
            (N, 3) and ``"patches"`` (N, 4, 3, 3, 3) when ``input_grads``.
        """
        c, p, n = self._host_inputs(coords, patches)
        grad_logits = np.asarray(grad_logits, dtype=np.float32)
        if grad_logits.shape != (n, self.config.num_classes):
            raise ValueError(f"grad_logits must have shape {(n, self.config.num_classes)}, got {grad_logits.shape}")
        self.bridge.push_params()
        self.bridge.zero_grads()
        if n:
            ws = self.workspace(n, input_grads)
            self.forward_device(c, p, n, empty_buffer(self.device, n * self.config.num_classes), ws)
            self.backward_device(c, p, n, upload(self.device, grad_logits), ws, input_grads)
        flat = download(self.bridge.grads_buffer, (self.layout.total,))
        grads = {name: view.copy() for name, view in self.layout.views(flat).items()}
        if input_grads:
            cfg = self.config
            grads["coords"] = download(ws.grad_coords, (n, 3)) if n else np.zeros((0, 3), np.float32)
            shape = (n, cfg.num_modalities) + (cfg.patch_size,) * 3
            grads["patches"] = download(ws.grad_patches, shape) if n else np.zeros(shape, np.float32)
        return grads
