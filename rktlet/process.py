"""Running a short-lived external program from the reactor: stdin fed,
output collected (bounded), a timeout that kills it, cancellation that kills
it. Used for runc and the CNI plugins; conmon, which lives as long as its
container, has a protocol of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

OUTPUT_LIMIT = 1 << 20


@dataclass(frozen=True)
class ProcessOutput:
    """What a finished process left behind.

    :ivar exit_code: the exit status, or None when a signal ended it.
    :ivar signal: the signal that ended it, if one did.
    :ivar timed_out: it ran past its timeout and was killed.
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool


class _Collector(ProcessProtocol):
    """Feeds stdin, collects stdout/stderr up to a limit, enforces the timeout."""

    def __init__(self, reactor: Any, stdin: bytes, timeout: float, limit: int) -> None:
        self.done: Deferred[ProcessOutput] = Deferred(self._cancel)
        self._reactor = reactor
        self._stdin = stdin
        self._timeout = timeout
        self._limit = limit
        self._timer: Any = None
        self._out = bytearray()
        self._err = bytearray()
        self._timed_out = False

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._timeout, self._expire)
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self._out) < self._limit:
            self._out += data[: self._limit - len(self._out)]

    def errReceived(self, data: bytes) -> None:
        if len(self._err) < self._limit:
            self._err += data[: self._limit - len(self._err)]

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        # A child of the program (a shell's `sleep`, a hook) may hold the
        # pipes open after it is dead; closing our ends means we only wait
        # for the program itself to be reaped.
        self.transport.loseConnection()

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        self._kill()

    def _cancel(self, _: Deferred) -> None:
        # The caller gave up: the program must not keep running unobserved.
        # The Deferred then fails with CancelledError.
        self._kill()

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.done.called:  # cancelled meanwhile
            return
        self.done.callback(
            ProcessOutput(
                stdout=bytes(self._out),
                stderr=bytes(self._err),
                exit_code=getattr(reason.value, "exitCode", None),
                signal=getattr(reason.value, "signal", None),
                timed_out=self._timed_out,
            )
        )


def run_process(
    reactor: Any,
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: bytes = b"",
    timeout: float = 60.0,
    limit: int = OUTPUT_LIMIT,
) -> Deferred[ProcessOutput]:
    """Run ``argv`` with exactly *env*; fires with its :class:`ProcessOutput`
    once it has ended (cancelling the Deferred kills it).

    :raises OSError: the program could not be started at all.
    """
    proto = _Collector(reactor, stdin, timeout, limit)
    # No cwd: Twisted then uses posix_spawn rather than fork.
    reactor.spawnProcess(proto, argv[0], list(argv), env=dict(env))
    return proto.done


# Twisted reads a child's pipes 8 KiB at a time: for bulk output (an exec's
# `cat` of a large file) that is one reactor turn, and one SPDY frame, per
# 8 KiB. Reading 64 KiB at a time cuts both eightfold.
WIDE_READ = 64 * 1024


def widen_pipe_reads(transport: Any, size: int = WIDE_READ) -> None:
    """Make the process *transport* read its output pipes *size* bytes at a time."""
    import errno
    import os

    from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
    from twisted.internet.process import ProcessReader

    for reader in getattr(transport, "pipes", {}).values():
        if not isinstance(reader, ProcessReader):
            continue  # the child's stdin

        def do_read(reader: Any = reader) -> Any:
            try:
                data = os.read(reader.fd, size)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    return None
                return CONNECTION_LOST
            if not data:
                return CONNECTION_DONE
            reader.dataReceived(data)
            return None

        reader.doRead = do_read
