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
from neumours.schema import Choice, Number, Rule, from_mapping, setting, validate


#: Values of INRConfig.precision.
PRECISIONS = ("auto", "fp32", "bf16")


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

    num_freqs: int = setting(64, Number(ge=1, le=1024, integer=True))
    spatial_width: int = setting(128, Number(ge=1, le=8192, integer=True))
    modality_width: int = setting(128, Number(ge=1, le=8192, integer=True))
    hidden_width: int = setting(256, Number(ge=1, le=16384, integer=True))
    hidden_layers: int = setting(3, Number(ge=1, le=64, integer=True))
    num_classes: int = setting(NUM_CLASSES, Number(ge=2, le=256, integer=True))
    num_modalities: int = setting(NUM_MODALITIES, Number(ge=1, le=64, integer=True))
    patch_size: int = setting(3, Number(ge=1, le=15, integer=True))
    precision: str = setting("auto", Choice(PRECISIONS))

    RULES = (
        Rule("`patch_size` is odd (the patch is centred on the voxel)",
             lambda c: c.patch_size % 2 == 1,
             lambda c: f"patch_size must be odd (centred on the voxel), got {c.patch_size}"),
        Rule("`spatial_width` + `modality_width` = `hidden_width` (the first hidden layer reads their concatenation)",
             lambda c: c.concat_width == c.hidden_width,
             lambda c: "spatial_width + modality_width must equal hidden_width, because the first hidden layer "
                       f"reads the concatenation ({c.spatial_width} + {c.modality_width} = {c.concat_width}, "
                       f"hidden_width = {c.hidden_width})"),
    )

    def __post_init__(self) -> None:
        validate(self)

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
        return from_mapping(cls, data, source="INR config")

    @classmethod
    def paper(cls) -> INRConfig:
        """The paper's network: K = 64, 128 + 128 -> 3 x 256 -> 4 (262,020 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> INRConfig:
        """A small network (K = 4, 8 + 8 -> 2 x 16 -> 4) that CPU tests can run."""
        return cls(num_freqs=4, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)
