"""Training configuration: paper Table I as defaults, presets, TOML files and flags.

The resolved configuration of a run is saved as ``RUN/config.toml`` and can be
passed back with ``--config``. Sections: ``[network]`` (INRConfig fields),
``[loss]``, ``[optimizer]``, ``[sampler]``, ``[schedule]``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neumours.atomic import atomic_write_text
from neumours.errors import NeumoursError
from neumours.model.config import INRConfig
from neumours.train.loss import LossConfig


@dataclass(frozen=True)
class OptimizerConfig:
    """``name``: "adamw" for every tensor, or "muon" (torch.optim.Muon on the 2-D
    weight matrices, AdamW on biases and the conv kernel). Cosine decay from
    ``lr`` to ``lr_final`` over the run after ``warmup_steps`` of linear warm-up;
    gradients clipped to global norm ``clip_norm``."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_final: float = 5e-4
    warmup_steps: int = 100
    clip_norm: float = 1.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class SamplerConfig:
    """Each step: ``micro_batches`` x ``micro_batch`` points (gradient accumulation),
    a ``foreground_ratio`` share of them drawn from tumour voxels, the rest
    uniformly over the volume. ``pool_bytes``: device memory for normalised case
    volumes (0: all cases); a larger dataset is cycled through the pool by a
    background loader, swapping one case every ``refresh_every`` steps."""

    micro_batch: int = 4096
    micro_batches: int = 4
    foreground_ratio: float = 0.1
    pool_bytes: int = 0
    refresh_every: int = 50


@dataclass(frozen=True)
class ScheduleConfig:
    """Run length, validation and split."""

    steps: int = 10_000
    val_every: int = 500
    val_fraction: float = 0.1
    log_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    network: INRConfig = field(default_factory=INRConfig.paper)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict, base: "TrainConfig | None" = None, source: str = "config") -> "TrainConfig":
        """``base`` with the sections and keys of ``data`` replaced; unknown keys are an error."""
        base = base or cls()
        sections = {}
        for f in dataclasses.fields(cls):
            current = getattr(base, f.name)
            values = data.get(f.name, {})
            if not isinstance(values, dict):
                raise NeumoursError(f"{source}: [{f.name}] must be a table")
            known = {g.name for g in dataclasses.fields(current)}
            unknown = set(values) - known
            if unknown:
                raise NeumoursError(f"{source}: unknown key(s) in [{f.name}]: {', '.join(sorted(unknown))}")
            converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            try:
                sections[f.name] = dataclasses.replace(current, **converted)
            except (TypeError, ValueError) as exc:
                raise NeumoursError(f"{source}: [{f.name}]: {exc}") from None
        unknown = set(data) - set(sections)
        if unknown:
            raise NeumoursError(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
        return cls(**sections)


def preset(name: str) -> TrainConfig:
    """``paper``: Table I. ``tiny``: a small network and batch that trains in
    seconds on the CPU device (tests, the CPU demo)."""
    if name == "paper":
        return TrainConfig()
    if name == "tiny":
        return TrainConfig(
            network=INRConfig.tiny(),
            optimizer=OptimizerConfig(lr=1e-2, lr_final=5e-3, warmup_steps=10),
            sampler=SamplerConfig(micro_batch=256, micro_batches=2, foreground_ratio=0.3),
            schedule=ScheduleConfig(steps=150, val_every=50, log_every=10),
        )
    raise NeumoursError(f"unknown preset {name!r} (choose paper or tiny)")


def load_toml(path: str | Path, base: TrainConfig) -> TrainConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NeumoursError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NeumoursError(f"{path}: not a valid TOML file ({exc})") from None
    return TrainConfig.from_dict(data, base, source=str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def save_toml(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration (readable by :func:`load_toml`)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    atomic_write_text(path, "\n".join(lines))
