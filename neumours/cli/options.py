"""What every command's parser shares: the help formatter and the common options."""

from __future__ import annotations

import argparse


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
                                 formatter_class=HelpFormatter)


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
