"""Writing a downloaded blob off the reactor.

The reactor only queues the chunks that arrive; a thread of the pool writes
whatever is queued and feeds it to the sha256, one batch at a time and in
order.  When the disk falls behind the network, more than a bounded amount
waits in memory: reading from the connection is paused until the queue has
been written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from rktlet.image.registry.transport import LocalFailure

__all__ = ["BlobWriter", "sha256_digest"]

#: Bytes queued for the thread beyond which reading pauses.
HIGH_WATER = 8 << 20


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of *data* (for a thread: manifests are megabytes)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobWriter:
    """Writes the chunks of one download to *out* and hashes them, in
    *threadpool*.

    :param out: the open destination file; the writer owns it from now on
        and closes it (in the thread, after the last write).
    :param what: how errors name the blob (``blob sha256:… of repo``).
    :param high_water: queued bytes beyond which reading pauses.
    """

    def __init__(
        self, reactor: Any, threadpool: ThreadPool, out: BinaryIO, what: str, high_water: int = HIGH_WATER
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._out = out
        self._what = what
        self._high_water = high_water
        self._hasher = hashlib.sha256()
        self._queue: list[bytes] = []
        self._queued = 0
        self._busy = False  # a batch is being written in the thread
        self._error: LocalFailure | None = None
        self._closing = False
        self._abandoned = False
        self._idle: Deferred[None] | None = None
        self._pause: Callable[[], None] | None = None
        self._resume: Callable[[], None] | None = None
        self._paused = False

    def throttle_with(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """How to pause and resume the reading that feeds this writer."""
        self._pause, self._resume = pause, resume

    def write(self, data: bytes) -> None:
        """Queue *data* (on the reactor).

        :raises LocalFailure: an earlier write failed.
        """
        if self._error is not None:
            raise self._error
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self._high_water and self._pause is not None and not self._paused:
            self._paused = True
            self._pause()
        self._next_batch()

    async def finish(self) -> str:
        """Write what is queued, close the file, and return the digest
        (``sha256:<hex>``) of everything written.

        :raises LocalFailure: a write (or the close) failed.
        """
        self._closing = True
        await self._drained()
        if self._error is not None:
            raise self._error
        await deferToThreadPool(self._reactor, self._threadpool, self._close)
        if self._error is not None:
            raise self._error
        return "sha256:" + self._hasher.hexdigest()

    def abandon(self) -> None:
        """The download failed: drop what is queued and close the file once
        the batch being written (if any) is done."""
        self._abandoned = True
        self._queue.clear()
        self._queued = 0
        if not self._busy:
            self._close_quietly()

    # -- in order, one batch at a time ----------------------------------------------

    def _next_batch(self) -> None:
        if self._busy or not self._queue or self._error is not None:
            return
        batch, self._queue, self._queued = self._queue, [], 0
        self._busy = True
        d = deferToThreadPool(self._reactor, self._threadpool, self._write_batch, batch)
        d.addBoth(self._batch_done)

    def _write_batch(self, batch: list[bytes]) -> None:
        # In a thread: the only one touching the file and the hasher now.
        for data in batch:
            self._out.write(data)
            self._hasher.update(data)

    def _batch_done(self, result: Any) -> None:
        self._busy = False
        if isinstance(result, Failure):
            self._error = LocalFailure(f"cannot write {self._what} to {self._out.name}: {result.value}")
            self._queue.clear()
            self._queued = 0
        if self._abandoned:
            self._close_quietly()
            return
        # Resumed on an error too: the next chunk then fails the reading.
        if self._paused and self._queued <= self._high_water // 2 and self._resume is not None:
            self._paused = False
            self._resume()
        if self._error is None and self._queue:
            self._next_batch()
        elif self._idle is not None:
            idle, self._idle = self._idle, None
            idle.callback(None)

    def _drained(self) -> Deferred[None]:
        if not self._busy and (not self._queue or self._error is not None):
            return succeed(None)
        if not self._busy:
            self._next_batch()
        self._idle = Deferred()
        return self._idle

    def _close(self) -> None:
        # In a thread: flushing the last buffered bytes may fail too.
        try:
            self._out.close()
        except OSError as exc:
            self._error = LocalFailure(f"cannot write {self._what} to {self._out.name}: {exc}")

    def _close_quietly(self) -> None:
        try:
            self._out.close()
        except OSError:
            pass  # the download failed already; the file is removed
