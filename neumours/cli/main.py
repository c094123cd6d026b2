"""The ``neumours`` command: the parser, the shared options and the dispatch.

Errors meant for the user (bad data, unavailable device, wrong checkpoint)
print one line ``neumours: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from neumours.cli.options import HelpFormatter
from neumours.errors import NeumoursError


def build_parser() -> argparse.ArgumentParser:
    from neumours.cli import data, demo, infer, refine, render, train, view

    parser = argparse.ArgumentParser(
        prog="neumours", formatter_class=HelpFormatter,
        description="Implicit neural tumour representations in a differentiable Slang renderer.",
        epilog="Run `neumours COMMAND --help` for a command's options. Bad input gives one line "
               "`neumours: error: ...` and exit status 2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, train, infer, render, refine, demo, view):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NeumoursError as exc:
        print(f"neumours: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neumours: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
