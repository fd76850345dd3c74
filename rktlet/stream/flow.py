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

import socket
from typing import Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


@implementer(IPushProducer)
class ProducerFanout:
    """One push producer for a transport that fans out to many producers.

    Producers added while the transport is paused are paused at once, so a
    late joiner never floods a full buffer; producers removed while it is
    paused are resumed.
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
        """Stop controlling *producer*; one we paused is resumed, or it would
        stay paused for good (a finished process that is not read never
        reaches EOF, and is never reaped)."""
        if producer in self._producers:
            self._producers.remove(producer)
            if self.paused:
                _quietly(producer.resumeProducing)

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


# Linux TCP states (tcp_states.h) in which the peer has closed or reset.
_PEER_CLOSED_STATES = {7, 8, 9}  # CLOSE, CLOSE_WAIT, LAST_ACK


def peer_gone(transport) -> bool:
    """Whether the client closed or reset a TCP connection we are not
    reading. Reading is what normally tells us, so a paused transport needs
    the kernel's view: a pending socket error, or a TCP state past the
    peer's FIN. False when the transport has no socket to ask."""
    getsockopt = None
    for _ in range(3):  # through a TLS wrapper to the TCP transport
        handle = getattr(transport, "getHandle", lambda: None)()
        getsockopt = getattr(handle, "getsockopt", None)
        if getsockopt is not None or transport is None:
            break
        transport = getattr(transport, "transport", None)
    if getsockopt is None:
        return False
    try:
        if getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return True
        info = getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except (OSError, TypeError, ValueError):
        return False
    return info[0] in _PEER_CLOSED_STATES


class ReadPauser:
    """Pauses reading from a transport while any reason to pause is held.

    A paused transport does not notice that the client went away: its FIN
    waits behind the data we do not read (or in the dead client's send
    queue, behind our zero window). So a process that never reads its stdin
    would keep a dead session, and itself, alive until the idle timeout.
    With a *clock*, every *probe_interval* seconds while paused the socket
    is checked and *on_probe* sends the client something (a ping): a closed
    socket answers data with a reset, which the next check (or the failing
    write) turns into *on_peer_gone*. For SPDY and WebSocket a TCP
    half-close by the client is never part of a live session either.

    :param transport: provides ``pauseProducing``/``resumeProducing`` (for a
        TCP or TLS transport: stop/start reading the socket).
    """

    def __init__(
        self,
        transport,
        clock: IReactorTime | None = None,
        on_peer_gone: Callable[[], None] | None = None,
        on_probe: Callable[[], None] | None = None,
        probe_interval: float = 2.0,
    ) -> None:
        self._transport = transport
        self._on_probe = on_probe
        self._reasons: set[Hashable] = set()
        self._clock = clock
        self._on_peer_gone = on_peer_gone
        self._probe_interval = probe_interval
        self._probe: IDelayedCall | None = None

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def pause(self, reason: Hashable) -> None:
        was = bool(self._reasons)
        self._reasons.add(reason)
        if not was:
            self._transport.pauseProducing()
            self._schedule_probe()

    def resume(self, reason: Hashable) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._cancel_probe()
            self._transport.resumeProducing()

    def clear(self) -> None:
        """Drop every reason (the session is ending and drains its input)."""
        if self._reasons:
            self._reasons.clear()
            self._cancel_probe()
            self._transport.resumeProducing()

    def stop(self) -> None:
        """The connection is gone: no more probing."""
        self._cancel_probe()

    def _schedule_probe(self) -> None:
        if self._clock is not None and self._on_peer_gone is not None and self._probe is None:
            self._probe = self._clock.callLater(self._probe_interval, self._check)

    def _cancel_probe(self) -> None:
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None

    def _check(self) -> None:
        self._probe = None
        if not self._reasons:
            return
        if peer_gone(self._transport):
            assert self._on_peer_gone is not None
            self._on_peer_gone()
            return
        if self._on_probe is not None:
            self._on_probe()
        self._schedule_probe()


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
