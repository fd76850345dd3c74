"""Deferred helpers shared by the engine and the drivers."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults, succeed
from twisted.python.failure import Failure

_PENDING = object()


class Shared:
    """One operation awaited by many.

    Each :meth:`wait` returns a Deferred of its own. Cancelling it detaches
    only that waiter; when the last waiter is gone, the operation itself is
    cancelled — unless *cancel_when_abandoned* is false (for work that cannot
    be interrupted, like a thread, whose end must still be awaited).

    :param operation: the Deferred doing the work.
    """

    def __init__(self, operation: Deferred, cancel_when_abandoned: bool = True) -> None:
        self._operation = operation
        self._cancel_when_abandoned = cancel_when_abandoned
        self._waiters: list[Deferred] = []
        self._result: Any = _PENDING
        operation.addBoth(self._settle)

    @property
    def done(self) -> bool:
        """Whether the operation has finished."""
        return self._result is not _PENDING

    def _settle(self, result: Any) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)  # a Failure errbacks
        if isinstance(result, Failure) and not waiters:
            # Nobody is waiting: the failure is expected to be reported by
            # whoever waits later, or deliberately dropped.
            result.cleanFailure()
        return None

    def wait(self) -> Deferred:
        """A Deferred firing with the operation's result."""
        if self._result is not _PENDING:
            return fail(self._result) if isinstance(self._result, Failure) else succeed(self._result)
        waiter: Deferred = Deferred(canceller=self._detach)
        self._waiters.append(waiter)
        return waiter

    def _detach(self, waiter: Deferred) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters and self._cancel_when_abandoned and self._result is _PENDING:
            self._operation.cancel()


async def finished(shared: Shared) -> None:
    """Wait until *shared* has ended, whatever its outcome."""
    try:
        await shared.wait()
    except Exception:
        pass


async def all_or_nothing(operations: list[Deferred]) -> list[Any]:
    """Wait for every Deferred; on the first failure cancel the others,
    wait for them to end, and raise that failure."""
    try:
        return await gatherResults(operations, consumeErrors=True)
    except FirstError as e:
        for d in operations:
            d.cancel()
        await DeferredList(operations, consumeErrors=True)
        e.subFailure.raiseException()
        raise  # unreachable: raiseException raises
