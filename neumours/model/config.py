"""The INR's sizes, defined once: every kernel, layout and checkpoint reads them here.

docs/method.md "Network": gamma(p) (3 + 6K) -> spatial Linear, the (4, 3, 3, 3) modality
patch -> Conv3d (valid padding, so one output voxel), the two ReLU'd halves
concatenated (spatial first) -> ``hidden_layers`` x (Linear, ReLU) -> Linear to
the class logits. Slang receives these numbers as compile-time constants only.

``precision`` is not part of the architecture: it picks the kernels that run
the same weights (fp32 everywhere, or bf16 tensor cores on CUDA), so checkpoints
store the architecture only and any checkpoint runs at any precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from neumours.conventions import NUM_CLASSES, NUM_MODALITIES, fourier_dim
from neumours.errors import NeumoursError


#: Values of INRConfig.precision.
PRECISIONS = ("auto", "fp32", "bf16")
#: Largest value of each size: far beyond any network the kernels are meant for (the paper's: 64, 128,
#: 128, 256, 3, 4, 4, 3), small enough that a config read from a file cannot ask for absurd sizes.
MAX_SIZES = {"num_freqs": 1024, "spatial_width": 4096, "modality_width": 4096, "hidden_width": 8192,
             "hidden_layers": 64, "num_classes": 256, "num_modalities": 64, "patch_size": 15}


@dataclass(frozen=True)
class INRConfig:
    """Sizes of the INR. The defaults are the paper's network (262,020 parameters).

    Attributes:
        num_freqs: K, Fourier frequencies per axis (features: 3 + 6K).
        spatial_width: outputs of the spatial head (Linear over gamma(p)).
        modality_width: outputs of the modality head (Conv3d over the patch).
        hidden_width: width of the hidden layers; equals spatial + modality width,
            because the first hidden layer reads the concatenation directly.
        hidden_layers: number of hidden Linear(hidden, hidden) + ReLU layers.
        num_classes: logits out (bg, NCR, ED, ET).
        num_modalities: channels of the patch (t1n, t1c, t2w, t2f).
        patch_size: edge of the cubic patch and of the conv kernel (odd).
        precision: ``"fp32"`` (FMA kernels, every device), ``"bf16"`` (tensor-core
            products with fp32 accumulation and fp32 master weights, CUDA only) or
            ``"auto"`` (bf16 on CUDA, fp32 elsewhere).
    """

    num_freqs: int = 64
    spatial_width: int = 128
    modality_width: int = 128
    hidden_width: int = 256
    hidden_layers: int = 3
    num_classes: int = NUM_CLASSES
    num_modalities: int = NUM_MODALITIES
    patch_size: int = 3
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"INRConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for field in dataclasses.fields(self):
            if field.name == "precision":
                continue
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"INRConfig.{field.name} must be an int, got {value!r}")
            if not 1 <= value <= MAX_SIZES[field.name]:
                raise ValueError(f"INRConfig.{field.name} must be at least 1 and at most {MAX_SIZES[field.name]}, "
                                 f"got {value}")
        if self.patch_size % 2 != 1:
            raise ValueError(f"INRConfig.patch_size must be odd (centred on the voxel), got {self.patch_size}")
        if self.concat_width != self.hidden_width:
            raise ValueError(
                "INRConfig: spatial_width + modality_width must equal hidden_width, because the first "
                f"hidden layer reads the concatenation ({self.spatial_width} + {self.modality_width} = "
                f"{self.concat_width}, hidden_width = {self.hidden_width})"
            )

    @property
    def fourier_dim(self) -> int:
        """Length of gamma(p): 3 + 6K (387 for K = 64)."""
        return fourier_dim(self.num_freqs)

    @property
    def patch_dim(self) -> int:
        """Numbers in one modality patch: channels x patch_size^3 (108)."""
        return self.num_modalities * self.patch_size**3

    @property
    def concat_width(self) -> int:
        """Width of [spatial, modality] after the two heads."""
        return self.spatial_width + self.modality_width

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes (torch convention, out x in), in flat-buffer order.

        The names are docs/method.md's, i.e. the ``state_dict`` keys of
        :class:`neumours.model.reference.TorchINR`.
        """
        p = self.patch_size
        shapes: dict[str, tuple[int, ...]] = {
            "spatial.weight": (self.spatial_width, self.fourier_dim),
            "spatial.bias": (self.spatial_width,),
            "modality.weight": (self.modality_width, self.num_modalities, p, p, p),
            "modality.bias": (self.modality_width,),
        }
        for i in range(self.hidden_layers):
            shapes[f"mlp.{i}.weight"] = (self.hidden_width, self.hidden_width)
            shapes[f"mlp.{i}.bias"] = (self.hidden_width,)
        shapes["head.weight"] = (self.num_classes, self.hidden_width)
        shapes["head.bias"] = (self.num_classes,)
        return shapes

    @property
    def num_params(self) -> int:
        """Total number of parameters (262,020 for the paper's network)."""
        total = 0
        for shape in self.param_shapes().values():
            count = 1
            for d in shape:
                count *= d
            total += count
        return total

    def to_dict(self) -> dict[str, int | str]:
        """Plain dict of the fields (JSON-ready; the ``[network]`` section of a run's config.toml)."""
        return dataclasses.asdict(self)

    def architecture(self) -> INRConfig:
        """This config with ``precision`` at its default ("auto"): what two networks must share to
        swap weights, and what checkpoints store."""
        return dataclasses.replace(self, precision="auto")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> INRConfig:
        """Build a config from :meth:`to_dict` output; missing fields take the defaults.

        Raises:
            NeumoursError: an unknown key (e.g. a typo, or a newer format) or an
                invalid value, so a bad config file fails with one line.
        """
        if not isinstance(data, Mapping):
            raise NeumoursError(f"INR config must be a mapping of field to int, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NeumoursError(
                f"INR config has unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise NeumoursError(str(exc)) from None

    @classmethod
    def paper(cls) -> INRConfig:
        """The paper's network: K = 64, 128 + 128 -> 3 x 256 -> 4 (262,020 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> INRConfig:
        """A small network (K = 4, 8 + 8 -> 2 x 16 -> 4) that CPU tests can run."""
        return cls(num_freqs=4, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)
