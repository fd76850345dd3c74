"""The one place where gRPC worker threads meet the reactor.

grpcio runs servicer methods on its own thread pool. Engine state belongs to
the reactor thread, so a servicer never touches it: it hands a callable to
:meth:`ReactorBridge.call`, which runs it on the reactor (it may return a
Deferred) and blocks the worker thread until the result is there.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from rktlet.errors import DeadlineExceeded, Unavailable


class ReactorBridge:
    """Run callables on the reactor thread on behalf of other threads.

    :param reactor: the reactor that owns the engine (``callFromThread``).
    """

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()
        self._closed = False

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the reactor thread and return its result.

        Called from a worker thread, never from the reactor thread. A Deferred
        result is waited for; an exception (or failed Deferred) is raised here.

        :param timeout: seconds to wait (the RPC's remaining deadline); when it
            passes, :class:`DeadlineExceeded` is raised while the operation
            itself goes on to completion on the reactor.
        :raises Unavailable: the bridge is closed (the daemon is stopping).
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise Unavailable("rktlet is shutting down")
            self._pending.add(future)
        try:
            self._reactor.callFromThread(self._run, future, fn, args, kwargs)
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise DeadlineExceeded(f"{getattr(fn, '__name__', fn)} did not finish within {timeout:.1f}s") from None
        finally:
            with self._lock:
                self._pending.discard(future)

    def close(self) -> None:
        """Refuse new calls and release threads still waiting (they get
        :class:`Unavailable`). Called when the daemon stops."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        for future in pending:
            if not future.done():
                future.set_exception(Unavailable("rktlet is shutting down"))

    @staticmethod
    def _run(future: concurrent.futures.Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        def settle(result: Any) -> None:
            if future.done():  # closed meanwhile
                return
            if isinstance(result, Failure):
                future.set_exception(result.value)
            else:
                future.set_result(result)

        if future.done():
            return
        maybeDeferred(fn, *args, **kwargs).addBoth(settle)
