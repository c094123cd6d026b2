"""What every command's parser shares: the parser class, the help formatter, number types and
the common options.

Number flags are typed by :func:`number` (``finite_float``, ``int_range``, ``positive_int``,
``seed``): argparse refuses a value that is not a finite number within the flag's range, and
:class:`Parser` prints that (and argparse's own errors) as the one line
``neumours: error: --flag must be ..., got ...`` with exit status 2, before the command runs.
"""

from __future__ import annotations

import argparse
import re

from neumours.errors import NeumoursError
from neumours.schema import SEED, Number, SettingError


class FlagError(NeumoursError):
    """A flag's value refused by the parser (a number out of range, an unknown choice): the CLI's one line."""


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, exit status 2, no usage block.

    A refused value (``argument --fps: ...``) raises :class:`FlagError`, which ``neumours.cli.main``
    prints and returns 2 for, as for every other bad input; argparse's other errors (an unknown
    option, a missing one) print the same one line and exit with status 2 as argparse does.
    """

    def error(self, message: str):
        text = " ".join(str(message).split())
        match = re.fullmatch(r"argument (\S+): (.*)", text)
        if match:  # our number types' messages begin with "must": "--fps must be > 0, got 0"
            flag, problem = match.groups()
            raise FlagError(f"{flag} {problem}" if problem.startswith("must ") else f"{flag}: {problem}")
        self.exit(2, f"neumours: error: {text} (see {self.prog} --help)\n")


def number(ge=None, gt=None, le=None, lt=None, integer: bool = False, unit: str = ""):
    """An argparse ``type``: the text as a finite float (an int with ``integer``) within the bounds.

    ``unit`` follows the range in the message (``--turntable must be at least 1 frame``).
    """
    return flag_type(Number(ge=ge, gt=gt, le=le, lt=lt, integer=integer), unit)


def flag_type(check: Number, unit: str = "", allowed: str = ""):
    """The argparse ``type`` of a flag that takes what ``check`` (a :class:`~neumours.schema.Number`) allows;
    ``allowed`` words the range in the message instead of ``check`` (``1..999 (nnU-Net's three digits)``)."""
    integer = check.integer

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except (TypeError, ValueError):
            what = allowed or f"{check.describe()}{unit and ' ' + unit}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return check.coerce(value, "")
        except SettingError as exc:
            if allowed:
                raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}") from None
            problem = str(exc).strip()
            if unit:
                problem = problem.replace(", got", f" {unit}, got", 1)
            raise argparse.ArgumentTypeError(problem) from None

    parse.__name__ = "integer" if integer else "number"
    parse.check = check  # what the flag allows (tests draw values outside it)
    return parse


def finite_float(min=None, max=None, *, gt=None, lt=None):
    """A finite float in [min, max] (``gt``/``lt``: exclusive bounds)."""
    return number(ge=min, le=max, gt=gt, lt=lt)


def int_range(min=None, max=None, unit: str = "", allowed: str = ""):
    """An integer in [min, max] (``allowed``: the range in the message's own words)."""
    return flag_type(Number(ge=min, le=max, integer=True), unit, allowed)


#: An integer of at least 1 (steps, counts).
positive_int = int_range(1)
#: A seed: an integer in [0, 2**32 - 1], as ``[schedule] seed`` (:data:`neumours.schema.SEED`).
seed = flag_type(SEED)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's help ends with its default.

    A default of None or False (an optional path, a switch) is not worth
    printing; anything else is appended as ``(default: X)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # Identity, not ==: a default of 0 (a seed) equals False but is worth printing.
        if "%(default)" in text or any(default is v for v in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {default})"


def add_command(subparsers, name: str, help: str, description: str, epilog: str | None = None,
                usage: str | None = None, examples: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter; ``examples`` (command lines) end its help."""
    if examples:
        block = "Examples:\n" + "\n".join(f"  {line}" for line in examples)
        epilog = f"{epilog}\n\n{block}" if epilog else block
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog, usage=usage,
                                 formatter_class=HelpFormatter)  # a Parser, like its parent


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="compute device: auto (cuda, vulkan, metal, then cpu), cuda, vulkan, metal or cpu; "
                             "NEUMOURS_DEVICE overrides it")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="INR kernels: bf16 tensor cores (CUDA only), fp32 FMA (every device), or auto "
                             "(bf16 on CUDA, fp32 elsewhere)")


def add_quiet_option(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    parser.add_argument("--quiet", action="store_true", help=help)


def add_force_geometry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force-geometry", action="store_true",
                        help="load NIfTI files whose geometry fails the checks (singular or non-finite affine, zero, "
                             "negative or non-finite voxel spacing, a shear): outputs keep the input's header; where "
                             "no voxel size is usable 1 mm is assumed, so mL, mm and HD95 figures may be meaningless")


def add_keep_going_option(parser: argparse.ArgumentParser, done: str) -> None:
    parser.add_argument("--keep-going", action="store_true",
                        help=f"without it, every case's headers are checked before anything is written and the first "
                             f"bad case stops the run; with it, bad cases are skipped, the others {done}, and a "
                             f"table of the failed cases ends the run (exit status 2)")
