"""Waiting on the real reactor inside ``pytest_twisted`` tests, without
blocking it."""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred


async def sleep(seconds: float) -> None:
    """Let the reactor run for *seconds*."""
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                   interval: float = 0.02) -> None:
    """Poll *predicate* every *interval* seconds until it holds; a test
    failure naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(interval)


async def within(d: Deferred, timeout: float = 15.0) -> Any:
    """*d*'s result, or a test failure after *timeout* seconds."""
    return await d.addTimeout(timeout, reactor)
