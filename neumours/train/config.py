"""Training configuration: paper Table I as defaults, presets, TOML files and flags.

The resolved configuration of a run is saved as ``RUN/config.toml`` and can be
passed back with ``--config``. Sections: ``[network]`` (INRConfig fields),
``[loss]``, ``[optimizer]``, ``[sampler]``, ``[schedule]``, ``[augment]``
(training-time augmentation, all off by default).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neumours.atomic import atomic_write_text
from neumours.conventions import NUM_CLASSES, NUM_MODALITIES
from neumours.errors import NeumoursError
from neumours.toml_files import read_toml, toml_value
from neumours.model.config import INRConfig
from neumours.train.augment import AugmentConfig
from neumours.train.loss import LossConfig


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser, learning-rate schedule and gradient clipping (paper Table I).

    Attributes:
        name: "adamw" (torch.optim.AdamW on every tensor) or "muon"
            (torch.optim.Muon on the 2-D weight matrices, AdamW on the biases
            and the conv kernel).
        lr: peak learning rate, reached at the end of the warm-up.
        lr_final: learning rate at the last step; cosine decay from ``lr`` to it.
        warmup_steps: steps of linear warm-up from lr / warmup_steps to ``lr``.
        clip_norm: gradients are clipped to this global L2 norm before each step.
        weight_decay: decoupled weight decay of AdamW (and of Muon).
        betas: AdamW's (beta1, beta2) moment decay rates.
    """

    name: str = "adamw"
    lr: float = 1e-3
    lr_final: float = 5e-4
    warmup_steps: int = 100
    clip_norm: float = 1.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class SamplerConfig:
    """Training points per step and the cases they are drawn from.

    Attributes:
        micro_batch: points per micro-batch (one forward/backward pass).
        micro_batches: micro-batches per optimiser step, gradients accumulated;
            a step sees micro_batch x micro_batches points.
        foreground_ratio: share of each micro-batch drawn from tumour voxels
            (label > 0); the rest uniformly over the whole volume.
        pool_bytes: device memory for normalised case volumes; 0 holds every
            training case. A smaller pool is cycled through the dataset by a
            background loader.
        refresh_every: with a cycling pool, steps between swapping in the next case.
    """

    micro_batch: int = 4096
    micro_batches: int = 4
    foreground_ratio: float = 0.1
    pool_bytes: int = 0
    refresh_every: int = 50


@dataclass(frozen=True)
class ScheduleConfig:
    """Run length, validation, logging and the split.

    Attributes:
        steps: optimiser steps of the run (the cosine decay ends here).
        val_every: steps between validations (hard Dice per class on the
            validation cases); the best checkpoint is chosen by their mean.
        val_fraction: share of the cases held out for validation.
        log_every: steps between rows of metrics.csv.
        seed: seed of the split, the initial weights and the point sampler.
    """

    steps: int = 10_000
    val_every: int = 500
    val_fraction: float = 0.1
    log_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``neumours train`` reads: one section per TOML table.

    Attributes:
        network: sizes of the INR (:class:`~neumours.model.config.INRConfig`).
        loss: the training loss (:class:`~neumours.train.loss.LossConfig`).
        optimizer: optimiser and schedule of the learning rate (:class:`OptimizerConfig`).
        sampler: points per step (:class:`SamplerConfig`).
        schedule: run length and validation (:class:`ScheduleConfig`).
        augment: training-time augmentation (:class:`~neumours.train.augment.AugmentConfig`; off by default).
    """

    network: INRConfig = field(default_factory=INRConfig.paper)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

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
    """``paper``: Table I (a GPU network). ``tiny``: a small network and batch for the
    CPU device (tests, the CPU demo): 150 steps of small phantoms take a few minutes."""
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
    return TrainConfig.from_dict(read_toml(path, "config file"), base, source=str(path))




def save_toml(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration (readable by :func:`load_toml`)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


# ---------------------------------------------------------------------------
# docs/configuration.md, generated from the dataclasses above
# ---------------------------------------------------------------------------

#: Where the generated reference lives, relative to the repository root.
REFERENCE_PATH = "docs/configuration.md"

_ATTRIBUTE_RE = re.compile(r"^ {4}(?P<names>\w+(?:, \w+)*): (?P<text>.*)$")


def attribute_docs(cls) -> dict[str, str]:
    """Field name -> description, from the ``Attributes:`` section of ``cls``'s docstring (Google style).

    An entry is ``    name: text`` (or ``    a, b: text`` for several fields),
    continued on lines indented further; the section ends at the first line
    that is not indented.
    """
    lines = (inspect.getdoc(cls) or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    docs: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[lines.index("Attributes:") + 1:]:
        if line and not line.startswith(" "):
            break
        match = _ATTRIBUTE_RE.match(line)
        if match:
            current = [match.group("text")]
            for name in match.group("names").split(", "):
                docs[name] = current
        elif line.strip():
            current.append(line.strip())
    return {name: " ".join(words) for name, words in docs.items()}


def _cell(text: str) -> str:
    """Docstring text as a Markdown table cell: single backticks, escaped bars."""
    return text.replace("``", "`").replace("|", "\\|")


def config_reference() -> str:
    """The text of docs/configuration.md: every TOML key of every section with its
    type, paper default, tiny value (where it differs) and meaning.

    Raises:
        ValueError: a field without a description in its class's ``Attributes:``.
    """
    paper, tiny = preset("paper"), preset("tiny")
    out = [
        "# Training configuration",
        "",
        "<!-- Generated from the dataclasses of neumours/train/config.py, neumours/train/loss.py,",
        "     neumours/train/augment.py and neumours/model/config.py by",
        "     `python -m neumours.train.config docs/configuration.md`.",
        "     Do not edit by hand: tests/test_config_reference.py fails when this file and the code differ. -->",
        "",
        "`neumours train` resolves its settings in three layers: the preset (`--preset paper`, the",
        "default, is the paper's Table I, a GPU network; `--preset tiny` is a small network and batch",
        "for the CPU device, where 150 steps of small phantoms take a few minutes), then a TOML file",
        "(`--config FILE`: any subset of the tables and keys below), then the flags of",
        "`neumours train --help`, which override single keys. Unknown",
        "tables or keys are an error. Every run writes its resolved settings to `RUN/config.toml`,",
        "which is itself a valid `--config` file; `--resume RUN` starts from it.",
        "",
        "```toml",
        "# muon.toml: the paper's run with Muon and a shorter schedule",
        "[optimizer]",
        'name = "muon"',
        "",
        "[schedule]",
        "steps = 2000",
        "val_every = 250",
        "```",
        "",
        "In the tables, *paper* is the default (`--preset paper`) and *tiny* is given only where",
        f"`--preset tiny` differs. `num_classes` and `num_modalities` describe the data ({NUM_CLASSES} classes,",
        f"{NUM_MODALITIES} modalities: [method.md](method.md) \"Data\"); they are recorded in every checkpoint and",
        "are not meant to be changed. The method behind the numbers: [method.md](method.md); what",
        "`[augment]` does and what the coordinate input allows: [phantom.md](phantom.md) \"Augmentation\".",
    ]
    for section in dataclasses.fields(TrainConfig):
        current, small = getattr(paper, section.name), getattr(tiny, section.name)
        cls = type(current)
        docs = attribute_docs(cls)
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        out += ["", f"## [{section.name}]", "", f"`{cls.__module__}.{cls.__name__}`: {_cell(summary)}", "",
                "| key | type | paper | tiny | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not docs.get(f.name):
                raise ValueError(f"{cls.__name__}.{f.name} has no description in the class's Attributes:")
            value, small_value = getattr(current, f.name), getattr(small, f.name)
            tiny_cell = f"`{toml_value(small_value)}`" if small_value != value else ""
            out.append(f"| `{f.name}` | {_cell(str(f.type))} | `{toml_value(value)}` | {tiny_cell} | "
                       f"{_cell(docs[f.name])} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m neumours.train.config [PATH]``: print the reference, or write it to PATH."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        atomic_write_text(argv[0], config_reference())
    else:
        sys.stdout.write(config_reference())


if __name__ == "__main__":  # through the package, so the tables name neumours.train.config, not __main__
    from neumours.train.config import main as _main

    _main()
