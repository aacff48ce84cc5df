"""Errors the coordinator raises on purpose; str(error) is always one clear line."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class. The CLI maps each subclass to an exit code (see README.md)."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(CoordinatorError):
    """A COORDINATOR_* setting, flag or outputs file is missing or wrong."""

    exit_code = 2


class InputError(CoordinatorError):
    """The request is bad: not an image, too many pixels, a bad plan or parameter."""

    exit_code = 2


class NoWorkerError(CoordinatorError):
    """A strip could not be done by any worker; says why for each worker tried."""

    exit_code = 3

    # strip_index is 0-based; messages count strips from 1 like the CLI's summary lines.
    def __init__(self, strip_index: int | None, op: str, attempts: list[str], summary: str = ""):
        self.strip_index = strip_index
        self.op = op
        self.attempts = list(attempts)
        where = f"strip {strip_index + 1}" if strip_index is not None else "the plan"
        head = summary or f"no worker could do {where} (op {op})"
        if self.attempts:
            super().__init__(f"{head}: {'; '.join(self.attempts)}")
        else:  # a summary says it all ("interrupted"); without one, nobody was asked
            super().__init__(head if summary else f"{head}: no workers configured")
