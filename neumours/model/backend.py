"""How an INR's :class:`~neumours.model.network.Network` runs: the backend interface, and its layer-by-layer base.

As tiny-cuda-nn's ``Network``: a backend runs a whole forward or backward pass
over buffers bound to the description's tensor names, so a backend that fuses
every layer into one kernel fits the same seam as those that dispatch one
product per layer. :class:`LayerBackend` is the latter: it walks the network's
products and dispatches each as one matrix product; its subclasses only say how
a :class:`~neumours.model.network.View` becomes a kernel operand
(:class:`neumours.model.fma.FMABackend`: fp32, every device;
:class:`neumours.model.tensor_core.TensorCoreBackend`: bf16, CUDA). The
epilogue of every product and the split of weight-gradient sums are resolved
here, once for both.
"""

from __future__ import annotations

from typing import Callable, Mapping

import slangpy as spy

from neumours.device import DeviceFacts, device_facts
from neumours.kernels.epilogue import Bias, ColumnSums, Epilogue, Mask
from neumours.model.network import Product

#: Buffers bound to the tensor names of :mod:`neumours.model.network` (parameters come from the INR's bridge).
Tensors = Mapping[str, spy.Buffer]


class Backend:
    """Runs one INR's network on its device.

    Attributes:
        precision: "fp32" or "bf16": how activations (H, delta) are stored.
        input_grads: whether :meth:`backward` can give dL/d(inputs).
    """

    precision = "fp32"
    input_grads = True

    def refresh(self) -> None:
        """The master weights changed (called after every push of the parameters)."""

    def forward(self, tensors: Tensors, count: int) -> None:
        """``logits`` (and every ``hidden.l``) for ``count`` points."""
        raise NotImplementedError

    def backward(self, tensors: Tensors, count: int, input_grads: bool = False) -> None:
        """Add dL/dparams into the gradient buffer given ``grad_logits`` (and ``grad_gamma``,
        ``grad_patches`` when ``input_grads``), reading the ``hidden.l`` forward left."""
        raise NotImplementedError


def split_k(facts: DeviceFacts, blocks: int, group_threads: int, resident_threads: int, points: int,
            min_points: int) -> int:
    """How many groups share the point sum of a weight gradient.

    About one wave: ``resident_threads`` per multiprocessor in groups of
    ``group_threads``, spread over the product's ``blocks`` output blocks, each
    group still summing at least ``min_points`` points (more splits mean more
    atomic adds, measured slower). One on a device that runs groups in turn.
    """
    if not facts.concurrent:
        return 1
    target_groups = facts.multiprocessors * resident_threads // group_threads
    return int(max(1, min(-(-target_groups // blocks), points // min_points)))


class LayerBackend(Backend):
    """One matrix-product dispatch per :class:`~neumours.model.network.Product`.

    Args:
        inr: the :class:`neumours.model.inr.INR` (its network, parameter layout, bridge and device).

    Each product is prepared once (:meth:`prepare`): weights, offsets, the fixed
    parts of its epilogue and its split bound are resolved when the backend is
    made, so a pass binds only the tensors and the point count, as the
    hand-written passes did. Subclasses set ``RESIDENT_THREADS`` and
    ``MIN_POINTS_PER_SPLIT`` (of :func:`split_k`) and implement
    :meth:`split_blocks` and :meth:`prepare`.
    """

    RESIDENT_THREADS: int
    MIN_POINTS_PER_SPLIT: int

    def __init__(self, inr):
        self.inr = inr
        self.network = inr.network
        self.facts = device_facts(inr.device)
        self._forward = [self.prepare(product) for product in self.network.forward]
        self._backward = {flag: [self.prepare(product) for product in self.network.backward(flag)]
                          for flag in (False, True)}

    def forward(self, tensors: Tensors, count: int) -> None:
        for run in self._forward:
            run(tensors, count)

    def backward(self, tensors: Tensors, count: int, input_grads: bool = False) -> None:
        for run in self._backward[bool(input_grads)]:
            run(tensors, count)

    def epilogue(self, product: Product) -> Callable[[Tensors], Epilogue]:
        """The product's epilogue on this INR's buffers (biases and their gradients in the flat vectors);
        only a RELU_GRAD mask (an activation) is bound per call."""
        offset, bridge = self.inr.layout.offset, self.inr.bridge
        sums = product.column_sums
        fixed = dict(
            bias=Bias(bridge.params_buffer, offset(product.bias)) if product.bias else None,
            relu=product.relu,
            column_sums=ColumnSums(bridge.grads_buffer, product.column_split, offset(sums[0]), offset(sums[-1]))
            if sums else None,
            bias_grad=offset(product.bias_grad) if product.bias_grad else None,
        )
        if product.mask is None:
            epilogue = Epilogue(product.op, **fixed)
            return lambda tensors: epilogue
        op, name, ld, column = product.op, product.mask.tensor, product.mask.width, product.mask.column
        return lambda tensors: Epilogue(op, mask=Mask(tensors[name], ld, column), **fixed)

    def splits(self, product: Product) -> Callable[[int], int]:
        """Groups sharing the product's k sum, given the point count: 1 unless it accumulates over points."""
        if not product.split_points:
            return lambda count: 1
        m, n, _ = product.shape(0)
        blocks, threads = self.split_blocks(m, n)
        facts, resident, least = self.facts, self.RESIDENT_THREADS, self.MIN_POINTS_PER_SPLIT
        return lambda count: split_k(facts, blocks, threads, resident, count, least)

    def split_blocks(self, m: int, n: int) -> tuple[int, int]:
        """(output blocks, threads per group) of an m x n weight-gradient product, as the split estimate counts them."""
        raise NotImplementedError

    def prepare(self, product: Product) -> Callable[[Tensors, int], None]:
        """A function that runs ``product`` as one kernel for bound tensors and a point count."""
        raise NotImplementedError
