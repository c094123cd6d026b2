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
from neumours.schema import (SEED, Choice, Number, Numbers, Rule, allowed_text, from_mapping, rules_text, setting,
                             validate)
from neumours.toml_files import read_toml, toml_value
from neumours.model.config import INRConfig
from neumours.train.augment import AugmentConfig
from neumours.train.loss import LossConfig


#: Most points per micro-batch: 2**20 (the paper uses 4096); see also :data:`MAX_BUFFER_BYTES`.
MAX_MICRO_BATCH = 1 << 20
#: Most points per optimiser step (micro_batch x micro_batches): 2**24 (the paper's step has 16,384).
MAX_STEP_POINTS = 1 << 24
#: A device buffer stays below 2 GiB (slangpy 0.43.1 on CUDA refuses larger allocations).
MAX_BUFFER_BYTES = (1 << 31) - 1


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser, learning-rate schedule and gradient clipping (paper Table I).

    Attributes:
        name: "adamw" (torch.optim.AdamW on every tensor) or "muon"
            (torch.optim.Muon on the 2-D weight matrices, AdamW on the biases
            and the conv kernel).
        lr: peak learning rate, reached at the end of the warm-up.
        lr_final: learning rate at the last step; cosine decay from ``lr`` to it (at most ``lr``:
            the schedule never rises; a sweep that varies ``lr`` alone scales it along, docs/sweep.md).
        warmup_steps: steps of linear warm-up from lr / warmup_steps to ``lr`` (0: none).
        clip_norm: gradients are clipped to this global L2 norm before each step.
        weight_decay: decoupled weight decay of AdamW (and of Muon).
        betas: AdamW's (beta1, beta2) moment decay rates.
    """

    name: str = setting("adamw", Choice(("adamw", "muon")))
    lr: float = setting(1e-3, Number(gt=0))
    lr_final: float = setting(5e-4, Number(ge=0))
    warmup_steps: int = setting(100, Number(ge=0, le=10**9, integer=True))
    clip_norm: float = setting(1.0, Number(gt=0))
    weight_decay: float = setting(0.01, Number(ge=0, lt=1))
    betas: tuple[float, float] = setting((0.9, 0.999), Numbers(Number(ge=0, lt=1), length=2))

    RULES = (Rule("`lr_final` <= `lr` (the cosine schedule decays, it never rises)",
                  lambda c: c.lr_final <= c.lr,
                  lambda c: f"lr_final must be at most lr ({c.lr!r}: the schedule decays from lr to lr_final), "
                            f"got {c.lr_final!r}"),)

    def __post_init__(self) -> None:
        validate(self)


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

    micro_batch: int = setting(4096, Number(ge=1, le=MAX_MICRO_BATCH, integer=True))
    micro_batches: int = setting(4, Number(ge=1, le=1024, integer=True))
    foreground_ratio: float = setting(0.1, Number(ge=0, le=1))
    pool_bytes: int = setting(0, Number(ge=0, integer=True))
    refresh_every: int = setting(50, Number(ge=1, integer=True))

    RULES = (Rule(f"`micro_batch` x `micro_batches` <= {MAX_STEP_POINTS} points per step",
                  lambda c: c.micro_batch * c.micro_batches <= MAX_STEP_POINTS,
                  lambda c: f"micro_batch x micro_batches must be at most {MAX_STEP_POINTS} points per step "
                            f"(each micro-batch keeps its own input buffers), got {c.micro_batch} x "
                            f"{c.micro_batches}"),)

    def __post_init__(self) -> None:
        validate(self)


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

    steps: int = setting(10_000, Number(ge=1, le=10**9, integer=True))
    val_every: int = setting(500, Number(ge=1, integer=True))
    val_fraction: float = setting(0.1, Number(ge=0, lt=1))
    log_every: int = setting(10, Number(ge=1, integer=True))
    seed: int = setting(0, SEED)

    def __post_init__(self) -> None:
        validate(self)


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

    RULES = (
        Rule("`[loss] class_weights` holds one weight per class (`[network] num_classes`)",
             lambda c: len(c.loss.class_weights) == c.network.num_classes,
             lambda c: f"[loss] class_weights must hold one weight per class ([network] num_classes = "
                       f"{c.network.num_classes}), got {len(c.loss.class_weights)}"),
        Rule("`[sampler] micro_batch` times the widest per-point row (`[network]` hidden_width, the patch "
             "or the classes) fits a 2 GiB device buffer",
             lambda c: 4 * c.sampler.micro_batch * _widest_row(c.network) <= MAX_BUFFER_BYTES,
             lambda c: f"[sampler] micro_batch must be at most {MAX_BUFFER_BYTES // (4 * _widest_row(c.network))} "
                       f"for this [network] (a device buffer of micro_batch x {_widest_row(c.network)} floats "
                       f"stays below 2 GiB), got {c.sampler.micro_batch}"),
    )

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict, base: "TrainConfig | None" = None, source: str = "config") -> "TrainConfig":
        """``base`` with the sections and keys of ``data`` replaced, every value checked
        (:func:`neumours.schema.from_mapping`; unknown sections or keys are an error)."""
        return from_mapping(cls, data, base, source)


def _widest_row(network: INRConfig) -> int:
    """Floats per point of the widest per-point training buffer (hidden activations, patch, logits)."""
    return max(network.hidden_width, network.patch_dim, network.num_classes, 3)


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
        "Every value is checked when the file is read, against the *allowed* column below and the",
        "rules under each table: a wrong type, a number out of range (NaN and infinity included), a",
        "list of the wrong length or a broken rule is one line naming the file, the table and key and",
        "what is allowed (`run.toml: [optimizer] lr must be > 0, got -0.01`), exit status 2, before",
        "anything is written. The same declarations check search spaces (`neumours sweep`), phantom",
        "ranges (`neumours synth --ranges`) and every object made in Python. They live beside the",
        "fields (`neumours.schema.setting(default, check)`, rules in the class's `RULES`); a new",
        "table is a frozen dataclass declared that way, whose `__post_init__` calls",
        "`neumours.schema.validate`, added as a field of `TrainConfig` (and described in its",
        "`Attributes:`): loading, checking and this page follow from it.",
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
                "| key | type | allowed | paper | tiny | meaning |", "|---|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not docs.get(f.name):
                raise ValueError(f"{cls.__name__}.{f.name} has no description in the class's Attributes:")
            if not allowed_text(cls, f.name):
                raise ValueError(f"{cls.__name__}.{f.name} has no declared check (neumours.schema.setting)")
            value, small_value = getattr(current, f.name), getattr(small, f.name)
            tiny_cell = f"`{toml_value(small_value)}`" if small_value != value else ""
            out.append(f"| `{f.name}` | {_cell(str(f.type))} | {_cell(allowed_text(cls, f.name))} | "
                       f"`{toml_value(value)}` | {tiny_cell} | {_cell(docs[f.name])} |")
        rules = rules_text(cls)
        if rules:
            out += ["", "Rules between keys: " + "; ".join(rules) + "."]
    out += ["", "Rules between tables: " + "; ".join(rules_text(TrainConfig)) + "."]
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
