"""What a check finds: one :class:`Result` per check, a :class:`Report` of
them all."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rktlet.errors import StartupError


class Outcome(enum.Enum):
    """How a check came out.

    ``FAIL``: the daemon would not work and refuses to start. ``WARN``: it
    starts, but what the message names does not work until it is fixed
    (pods get no network, an extra runtime handler is unusable...).
    """

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    """One check's finding.

    :ivar name: the check (``runtime runc``, ``conmon``, ``cni``...).
    :ivar outcome: see :class:`Outcome`.
    :ivar message: what was found, naming the path, program or value.
    :ivar fix: what to do about it (empty when nothing is to be done).
    """

    name: str
    outcome: Outcome
    message: str
    fix: str = ""

    @property
    def line(self) -> str:
        """The one line ``rktlet check`` prints and the daemon refuses with."""
        text = f"{self.name}: {self.message}"
        return f"{text}; {self.fix}" if self.fix and self.outcome is not Outcome.OK else text


def ok(name: str, message: str) -> Result:
    """A passed check."""
    return Result(name, Outcome.OK, message)


def warn(name: str, message: str, fix: str) -> Result:
    """A check whose failure leaves the daemon running, degraded."""
    return Result(name, Outcome.WARN, message, fix)


def fail(name: str, message: str, fix: str) -> Result:
    """A check whose failure keeps the daemon from starting."""
    return Result(name, Outcome.FAIL, message, fix)


@dataclass(frozen=True)
class Report:
    """Every check's result, in the order they are printed."""

    results: tuple[Result, ...]

    @property
    def failures(self) -> tuple[Result, ...]:
        """The results that keep the daemon from starting."""
        return tuple(r for r in self.results if r.outcome is Outcome.FAIL)

    @property
    def warnings(self) -> tuple[Result, ...]:
        """The results the daemon starts with, degraded."""
        return tuple(r for r in self.results if r.outcome is Outcome.WARN)

    @property
    def exit_status(self) -> int:
        """``rktlet check``'s exit status: 0 all passed, 1 the daemon would
        refuse to start, 2 it would start with the warnings shown."""
        if self.failures:
            return 1
        return 2 if self.warnings else 0

    def lines(self) -> list[str]:
        """One line per check, its outcome first."""
        return [f"{r.outcome.value:<4} {r.line}" for r in self.results]


class PreflightFailed(StartupError):
    """The daemon must not start: one or more checks failed. ``str()`` is
    their lines, one per check."""

    def __init__(self, failures: tuple[Result, ...]) -> None:
        super().__init__("\n".join(r.line for r in failures))
        self.failures = failures
