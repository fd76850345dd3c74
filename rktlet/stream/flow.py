"""Back-pressure and idle-time plumbing shared by the SPDY and WebSocket
sessions.

Neither protocol has flow control that we may rely on (SPDY's windows are
never updated by the Go peer, pitfall 1), so back-pressure comes from TCP:

* output: the session registers a :class:`ProducerFanout` as the client
  transport's producer. When the transport's send buffer fills, every
  producer feeding the session (a process's output pipes, a forwarded TCP
  connection) is paused; when it drains they resume.
* input: when something the client feeds (a process's stdin pipe, a forwarded
  connection) cannot take more, :class:`ReadPauser` stops reading the client
  socket until every reason to pause is gone.
"""

from __future__ import annotations

from typing import Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


@implementer(IPushProducer)
class ProducerFanout:
    """One push producer for a transport that fans out to many producers.

    Producers added while the transport is paused are paused at once, so a
    late joiner never floods a full buffer.
    """

    def __init__(self) -> None:
        self._producers: list[IPushProducer] = []
        self.paused = False

    def add(self, producer: IPushProducer) -> None:
        if producer in self._producers:
            return
        self._producers.append(producer)
        if self.paused:
            producer.pauseProducing()

    def remove(self, producer: IPushProducer) -> None:
        if producer in self._producers:
            self._producers.remove(producer)

    def pauseProducing(self) -> None:
        self.paused = True
        for p in list(self._producers):
            _quietly(p.pauseProducing)

    def resumeProducing(self) -> None:
        self.paused = False
        for p in list(self._producers):
            _quietly(p.resumeProducing)

    def stopProducing(self) -> None:
        # The transport is going away; the session's connectionLost ends
        # everything in order, so nothing is stopped from here.
        self.paused = True


def _quietly(call: Callable[[], None]) -> None:
    """Pausing an already finished producer (a process that just exited, a
    connection that just closed) must not break the others."""
    try:
        call()
    except Exception:  # noqa: BLE001 - see docstring
        pass


class ReadPauser:
    """Pauses reading from a transport while any reason to pause is held.

    :param transport: provides ``pauseProducing``/``resumeProducing`` (for a
        TCP or TLS transport: stop/start reading the socket).
    """

    def __init__(self, transport) -> None:
        self._transport = transport
        self._reasons: set[Hashable] = set()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def pause(self, reason: Hashable) -> None:
        was = bool(self._reasons)
        self._reasons.add(reason)
        if not was:
            self._transport.pauseProducing()

    def resume(self, reason: Hashable) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._transport.resumeProducing()

    def clear(self) -> None:
        """Drop every reason (the session is ending and drains its input)."""
        if self._reasons:
            self._reasons.clear()
            self._transport.resumeProducing()


@implementer(IPushProducer)
class PauseReadingProducer:
    """A producer registered on something the client feeds (a process's stdin,
    a forwarded socket): when that consumer's buffer is full it pauses reading
    the client, under its own *reason*."""

    def __init__(self, pauser: Callable[[], ReadPauser | None], reason: Hashable) -> None:
        self._pauser = pauser
        self._reason = reason

    def pauseProducing(self) -> None:
        pauser = self._pauser()
        if pauser is not None:
            pauser.pause(self._reason)

    def resumeProducing(self) -> None:
        pauser = self._pauser()
        if pauser is not None:
            pauser.resume(self._reason)

    def stopProducing(self) -> None:
        self.resumeProducing()


class IdleTimer:
    """Calls *on_idle* once nothing happened for *timeout* seconds.

    ``touch()`` is called for every frame read or written, so it only stores
    the time; the single timer re-arms itself for the remaining time when it
    fires early.
    """

    def __init__(self, clock: IReactorTime, timeout: float | None, on_idle: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_idle = on_idle
        self._last = clock.seconds()
        self._call: IDelayedCall | None = None
        if timeout:
            self._call = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        self._last = self._clock.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        assert self._timeout is not None
        left = self._last + self._timeout - self._clock.seconds()
        if left > 0:
            self._call = self._clock.callLater(left, self._check)
            return
        self._on_idle()
