"""Exceptions that the CLI turns into one clear line and exit status 2.

Every user-facing failure (bad input file, unavailable device, wrong checkpoint)
raises a subclass of :class:`NeumoursError`; its message names the file or the
thing at fault and the problem, so it can be printed as-is with no traceback.
"""

from __future__ import annotations


class NeumoursError(Exception):
    """Base class of every error meant for the user (CLI: one line, exit 2)."""


class NeumoursDataError(NeumoursError):
    """A data file or folder that cannot be used: names the path and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DeviceUnavailableError(NeumoursError):
    """The requested compute device (cuda, vulkan, metal, cpu) cannot be created."""


class CasesFailedError(NeumoursError):
    """Some cases of a ``--keep-going`` run failed; the others were processed.

    ``failures`` holds ``(case id, error line)`` pairs; :meth:`table` is what the
    CLI prints (on stderr, before the one error line) so the user sees which
    cases to fix.
    """

    def __init__(self, message: str, failures):
        self.failures = [(str(case_id), str(error)) for case_id, error in failures]
        super().__init__(message)

    def table(self) -> str:
        """A plain-text table: case | error, one row per failed case."""
        width = max([len("case")] + [len(c) for c, _ in self.failures])
        rows = [f"{'case':<{width}}  error", f"{'-' * width}  -----"]
        rows += [f"{case_id:<{width}}  {error}" for case_id, error in self.failures]
        return "\n".join(rows)
