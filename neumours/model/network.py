"""The INR as data: its dense layers, and the products that run them forward and backward.

:func:`dense_layers` describes the network of docs/method.md once, from an
:class:`~neumours.model.config.INRConfig`: which tensor each layer reads, which
weight it multiplies, where its output lands (the two heads side by side in H0)
and whether a ReLU follows. :class:`Network` derives from that list the two
schedules every backend runs (:mod:`neumours.model.backend`):

- forward: one product per layer, ``out[:, col:col + n] = act(input W^T + b)``;
- backward (the chain rule over the same list): per layer, the weight gradient
  ``dW += G^T input`` (G = dL/d pre-activation of its output), then the gradient
  of its input, ``(G W) * [input > 0]`` with the column sums of that product
  going to the bias gradients of the layers that wrote the input; a network
  input gets ``G W`` only when input gradients are asked for.

Tensors are named, not bound: ``gamma`` (the Fourier features, made in-kernel
from a (P, 3) coordinate buffer), ``patches``, ``hidden.l``, ``logits``,
``delta.0`` / ``delta.1`` (pre-activation gradients, used in turn),
``grad_logits``, ``grad_gamma``, ``grad_patches``; parameters by their
docs/method.md names. A backend binds the names to buffers and picks the
storage: activations (``ACTIVATION``) at its own precision, the rest float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from neumours.kernels.epilogue import ACCUMULATE, RELU_GRAD, STORE
from neumours.model.config import INRConfig

#: How a tensor is held. FOURIER: gamma(coords), computed where it is read; FLOAT: float32
#: (inputs, logits, input gradients); ACTIVATION: H and delta, at the backend's precision;
#: WEIGHT: a weight matrix (out, in) of the parameters; GRADIENT: its float32 gradient.
FOURIER, FLOAT, ACTIVATION, WEIGHT, GRADIENT = "fourier", "float", "activation", "weight", "gradient"
#: A product dimension that is the batch's point count, known only when it runs.
POINTS = "points"


@dataclass(frozen=True)
class View:
    """A matrix in a named tensor whose rows hold ``width`` values.

    As an operand X(row, k): ``tensor[row, column + k]``, or, ``transposed``,
    ``tensor[k, column + row]``; as an output, rows from ``column`` on.
    """

    kind: str
    tensor: str
    width: int
    column: int = 0
    transposed: bool = False

    def t(self) -> View:
        """The same storage read with rows and k swapped."""
        return replace(self, transposed=not self.transposed)


@dataclass(frozen=True)
class Dense:
    """One layer: ``output[:, output.column : + n] = act(input W^T + b)``, W = ``name.weight`` (n, k)."""

    name: str
    input: View
    output: View
    n: int
    k: int
    relu: bool


@dataclass(frozen=True)
class Product:
    """One matrix product ``out = A B^T`` (m x n, summing k) and its epilogue, as a backend dispatches it.

    Attributes:
        layer: the :class:`Dense` it belongs to. pass_: ``"forward"``, ``"weights"``
            (dW, dW += G^T input) or ``"inputs"`` (the gradient of the layer's input).
        m, n, k: sizes, or :data:`POINTS`.
        op: STORE, RELU_GRAD or ACCUMULATE (:mod:`neumours.kernels.epilogue`).
        bias: STORE: the bias parameter added. relu: STORE: ReLU after it.
        mask: RELU_GRAD: the activation whose positives pass the gradient.
        column_sums: RELU_GRAD: bias parameters that take C's column sums, side by
            side in column order; the first takes columns below ``column_split``.
        bias_grad: ACCUMULATE: the bias parameter whose gradient rides along.
        split_points: ACCUMULATE over points: the sum may be split over groups.
    """

    layer: str
    pass_: str
    a: View
    b: View
    out: View
    m: int | str
    n: int | str
    k: int | str
    op: int = STORE
    bias: str | None = None
    relu: bool = False
    mask: View | None = None
    column_sums: tuple[str, ...] = ()
    column_split: int = 0
    bias_grad: str | None = None

    def shape(self, count: int) -> tuple[int, int, int]:
        """(m, n, k) for a batch of ``count`` points."""
        m, n, k = self.m, self.n, self.k
        return (count if m == POINTS else m, count if n == POINTS else n, count if k == POINTS else k)

    @property
    def split_points(self) -> bool:
        """Whether the product sums over points into an accumulated output (its sum may be split over groups)."""
        return self.op == ACCUMULATE and self.k == POINTS


def dense_layers(config: INRConfig) -> tuple[Dense, ...]:
    """The network of docs/method.md "Network" as dense layers, in forward order."""
    F, P, H = config.fourier_dim, config.patch_dim, config.hidden_width
    S, M, C, L = config.spatial_width, config.modality_width, config.num_classes, config.hidden_layers

    def hidden(layer: int, column: int = 0) -> View:
        return View(ACTIVATION, f"hidden.{layer}", H, column)

    return (
        Dense("spatial", View(FOURIER, "gamma", F), hidden(0), S, F, relu=True),
        Dense("modality", View(FLOAT, "patches", P), hidden(0, S), M, P, relu=True),
        *(Dense(f"mlp.{layer}", hidden(layer), hidden(layer + 1), H, H, relu=True) for layer in range(L)),
        Dense("head", hidden(L), View(FLOAT, "logits", C), C, H, relu=False),
    )


def forward_products(layers: tuple[Dense, ...]) -> tuple[Product, ...]:
    """One STORE product per layer: ``output = act(input W^T + b)``."""
    return tuple(
        Product(d.name, "forward", d.input, View(WEIGHT, f"{d.name}.weight", d.k), d.output, POINTS, d.n, d.k,
                STORE, bias=f"{d.name}.bias", relu=d.relu)
        for d in layers)


def _gradient_name(tensor: str) -> str:
    """The float32 tensor that takes dL/d(network input ``tensor``)."""
    return f"grad_{tensor}"


def _check_hidden(source: View, k: int, writers: list[Dense]) -> None:
    """A hidden tensor the products can take the gradient of: read whole, written by one or two ReLU layers
    side by side (the column sums of its gradient split in two at most)."""
    if source.column != 0 or k != source.width:
        raise ValueError(f"{source.tensor}: a layer reads part of it; its gradient products read the whole")
    if not all(w.relu for w in writers):
        raise ValueError(f"{source.tensor} is written without a ReLU; its gradient is masked by its sign")
    columns = [w.output.column for w in writers]
    if len(writers) > 2 or columns != [sum(w.n for w in writers[:i]) for i in range(len(writers))] \
            or sum(w.n for w in writers) != source.width:
        raise ValueError(f"{source.tensor}: the column sums of its gradient need one or two writers side by side")


def backward_products(layers: tuple[Dense, ...], input_grads: bool = False) -> tuple[Product, ...]:
    """The chain rule over ``layers``, from the last: the products that add dL/dparams into the gradients.

    Layers that write one tensor (side by side) are taken together: first their
    weight gradients, then the gradients of their inputs. The pre-activation
    gradient of the last output is given (``grad_logits``); the others go to
    ``delta.0`` / ``delta.1`` in turn.

    Raises:
        ValueError: a structure these products cannot express: a tensor read by two
            layers (its gradient would be a sum), a hidden tensor written without a
            ReLU, read in part, or by more than two layers.
    """
    writers: dict[str, list[Dense]] = {}
    for d in layers:
        writers.setdefault(d.output.tensor, []).append(d)
    readers = [d.input.tensor for d in layers]
    if len(set(readers)) != len(readers):
        raise ValueError("a tensor read by two layers needs its gradients summed; the products cannot express it")
    last = layers[-1].output
    grad = {last.tensor: View(FLOAT, _gradient_name(last.tensor), last.width)}
    summed: set[str] = set()   # tensors whose gradient product also summed the writers' bias gradients
    products: list[Product] = []
    for tensor in reversed(list(writers)):
        group, g = writers[tensor], grad[tensor]
        for d in group:
            rows = replace(g, column=d.output.column, transposed=True)
            products.append(Product(d.name, "weights", rows, d.input.t(), View(GRADIENT, f"{d.name}.weight", d.k),
                                    d.n, d.k, POINTS, ACCUMULATE,
                                    bias_grad=None if tensor in summed else f"{d.name}.bias"))
        for d in group:
            g_rows = replace(g, column=d.output.column)
            weight = View(WEIGHT, f"{d.name}.weight", d.k, transposed=True)
            source = d.input
            if source.tensor in writers:
                below = writers[source.tensor]
                _check_hidden(source, d.k, below)
                grad[source.tensor] = View(ACTIVATION, f"delta.{(len(grad) - 1) % 2}", source.width)
                products.append(Product(d.name, "inputs", g_rows, weight, grad[source.tensor], POINTS, d.k, d.n,
                                        RELU_GRAD, mask=source, column_sums=tuple(f"{w.name}.bias" for w in below),
                                        column_split=below[0].n))
                summed.add(source.tensor)
            elif input_grads:
                out = View(FLOAT, _gradient_name(source.tensor), source.width)
                products.append(Product(d.name, "inputs", g_rows, weight, out, POINTS, d.k, d.n, STORE))
    return tuple(products)


class Network:
    """The INR of one config as dense layers and the schedules derived from them (built once per INR)."""

    def __init__(self, config: INRConfig):
        self.config = config
        self.layers = dense_layers(config)
        self.forward = forward_products(self.layers)
        self._backward = {flag: backward_products(self.layers, flag) for flag in (False, True)}

    def backward(self, input_grads: bool = False) -> tuple[Product, ...]:
        """The backward products; with ``input_grads`` also ``grad_gamma`` and ``grad_patches``."""
        return self._backward[bool(input_grads)]
