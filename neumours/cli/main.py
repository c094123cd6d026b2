"""The ``neumours`` command: the parser, the shared options and the dispatch.

Errors meant for the user (bad data, unavailable device, wrong checkpoint)
print one line ``neumours: error: ...`` and exit with status 2. A
``--keep-going`` run whose bad cases were skipped prints a table of them first.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings

from neumours.cli.options import HelpFormatter, Parser
from neumours.errors import CasesFailedError, NeumoursError

#: Longest error line printed: a message built from a hostile file (thousands of names) is cut here.
MAX_ERROR_CHARS = 2000


def error_line(exc: BaseException) -> str:
    """``exc``'s message as one readable line: newlines folded, cut to MAX_ERROR_CHARS with a note."""
    text = " ".join(str(exc).split("\n"))
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]} ... (cut: the message has {len(text):,} characters)"
    return text


def build_parser() -> argparse.ArgumentParser:
    import neumours
    from neumours.cli import data, demo, infer, nnunet, refine, render, sweep, train, view

    parser = Parser(
        prog="neumours", formatter_class=HelpFormatter,
        description="Implicit neural tumour representations in a differentiable Slang renderer.",
        epilog="Run `neumours COMMAND --help` for a command's options. Bad input gives one line "
               "`neumours: error: ...` and exit status 2.\n\nExample:\n  neumours demo --device cpu   "
               "# phantoms, training, evaluation and figures in a few minutes on a CPU")
    parser.add_argument("--version", action="version", version=f"neumours {neumours.__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, train, infer, render, refine, demo, nnunet, sweep, view):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # nibabel warns about headers it guesses around ("Extension size is not a multiple of 16 bytes"); the
    # readers report every problem they refuse in one line, so on the command line those would be noise.
    warnings.filterwarnings("ignore", module=r"nibabel(\.|$)")
    try:
        args = build_parser().parse_args(argv)  # a refused flag value raises FlagError (a NeumoursError)
        args.func(args)
    except NeumoursError as exc:
        if isinstance(exc, CasesFailedError):  # --keep-going: which cases failed, then the one line
            print(exc.table(), file=sys.stderr)
        print(f"neumours: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:  # the one OS error any path a user types can cause; others are bugs
            raise
        print(f"neumours: error: {error_line(exc.filename or '')}: file name too long", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neumours: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
