"""Exec and attach sessions, independent of the wire (SPDY or WebSocket).

A :class:`CommandSession` sits between a wire and the runtime's
:class:`~rktlet.stream.session.Backend`: it is the :class:`Terminal` the
backend writes to, and it turns the client's stdin, stdin EOF, resizes and
departure into calls on the backend's :class:`ProcessIO`. When the process is
done it builds the status for the protocol version (:func:`status_payload`)
and asks the wire to end the session in the right order (pitfall 6).
"""

from __future__ import annotations

import json
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from rktlet.errors import RktletError
from rktlet.stream.session import AttachRequest, Backend, ExecRequest, ProcessIO

log = Logger()


class CommandWire(TypingProtocol):
    """What a wire protocol offers a command session."""

    def write_stdout(self, data: bytes) -> None: ...

    def write_stderr(self, data: bytes) -> None: ...

    def end(self, status: bytes | None) -> None:
        """Stop taking input, write *status* (if any) on the error channel,
        end every output channel and close the session once the client has
        read it all."""

    def add_producer(self, producer: IPushProducer) -> None: ...

    def remove_producer(self, producer: IPushProducer) -> None: ...

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...


def status_payload(version: int, *, exit_code: int | None = None, error: str | None = None) -> bytes | None:
    """What goes on the error channel at the end of a session.

    :param version: the remote command protocol version (1-5; 5 is 4 plus
        the WebSocket close signal).
    :param exit_code: the exec'd process's exit code, 0-255 (signal deaths as
        128+N); ignored when *error* is given.
    :param error: an internal error message (the process could not run, the
        exit code is unknown).

    v4+ write a JSON ``metav1.Status`` always; v1-v3 write nothing on success
    and the plain message otherwise.
    """
    if error is None and exit_code is not None and not 0 <= exit_code <= 255:
        # The client parses the exit code as a uint8: anything else would be
        # "invalid exit code value" on its side.
        error = f"unknown exit code {exit_code}"
    if error is not None:
        message = f"Internal error occurred: {error}"
        status: dict = {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "details": {"causes": [{"message": error}]},
            "code": 500,
        }
    elif exit_code:
        message = f"command terminated with non-zero exit code: exit status {exit_code}"
        status = {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            # The cause's type is serialized under "reason" (metav1.StatusCause).
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    else:
        message = None
        status = {"metadata": {}, "status": "Success"}
    if version >= 4:
        return json.dumps(status, separators=(",", ":")).encode()
    return message.encode() if message is not None else None


class ResizeDecoder:
    """Decodes the resize channel: a sequence of JSON objects
    ``{"Width": W, "Height": H}`` split across or packed into messages.

    Keys are matched case-insensitively and missing ones are 0, as Go's JSON
    decoder does. Like the reference server, decoding stops for good at the
    first malformed object.
    """

    MAX_PENDING = 4096

    def __init__(self) -> None:
        self._pending = ""
        self._decoder = json.JSONDecoder()
        self.broken = False

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Return the (width, height) sizes completed by *data*."""
        if self.broken:
            return []
        self._pending += data.decode("utf-8", errors="replace")
        sizes = []
        while True:
            text = self._pending.lstrip()
            if not text:
                self._pending = ""
                return sizes
            try:
                value, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > self.MAX_PENDING or not text.startswith("{"):
                    self._break()
                else:
                    self._pending = text  # an object split across messages
                return sizes
            self._pending = text[end:]
            size = self._size(value)
            if size is None:
                self._break()
                return sizes
            sizes.append(size)

    def _break(self) -> None:
        self.broken = True
        self._pending = ""

    @staticmethod
    def _size(value: object) -> tuple[int, int] | None:
        if not isinstance(value, dict):
            return None
        keys = {k.lower(): v for k, v in value.items() if isinstance(k, str)}
        width, height = keys.get("width", 0), keys.get("height", 0)
        for n in (width, height):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 0xFFFF:
                return None
        return width, height


class CommandSession:
    """One exec or attach session: the backend's :class:`Terminal`.

    :param backend: runs the process.
    :param request: the stored request (it, not the wire, decides tty and
        which streams exist).
    :param version: negotiated protocol version, 1-5.
    :param wire: the client side.
    """

    def __init__(self, backend: Backend, request: ExecRequest | AttachRequest, version: int, wire: CommandWire) -> None:
        self._backend = backend
        self.request = request
        self.version = version
        self._wire = wire
        self.io: ProcessIO | None = None
        self._producer: IPushProducer | None = None
        self._pending_size: tuple[int, int] | None = None
        self._stdin_closed = False
        self.started = False
        self.ended = False
        self._gone = False

    @property
    def is_exec(self) -> bool:
        return isinstance(self.request, ExecRequest)

    # -- driven by the wire ---------------------------------------------------

    def start(self) -> None:
        """All expected channels exist: start (or attach to) the process."""
        if self.started or self._gone:
            return
        self.started = True
        try:
            if self.is_exec:
                self.io = self._backend.exec(self.request, self)  # type: ignore[arg-type]
            else:
                self.io = self._backend.attach(self.request, self)  # type: ignore[arg-type]
        except RktletError as e:
            self._end(error=str(e) or type(e).__name__)
            return
        except Exception as e:  # noqa: BLE001 - report it to the client, log it here
            log.failure("starting a streaming {kind}", kind="exec" if self.is_exec else "attach")
            self._end(error=f"{type(e).__name__}: {e}")
            return
        if self._pending_size is not None:
            self.resize(*self._pending_size)
        if self._stdin_closed:
            self.io.close_stdin()
        self.io.done.addCallbacks(self._done, self._failed)

    def stdin_received(self, data: bytes) -> None:
        # The stored request decides: stdin the request did not ask for is
        # dropped (WebSocket has every channel, whatever was asked).
        if self.request.stdin and self.io is not None and not self.ended and not self._stdin_closed:
            self.io.stdin(data)

    def stdin_closed(self) -> None:
        """The client ended its stdin (SPDY FIN/reset, WebSocket v5 close)."""
        if self._stdin_closed or self.ended or not self.request.stdin:
            return
        self._stdin_closed = True
        if self.io is not None:
            self.io.close_stdin()
        # No more stdin will come: a pause the backend asked for because its
        # stdin was full must not keep the client's socket unread (pings,
        # the client's close).
        self._wire.resume_input()

    def resize(self, width: int, height: int) -> None:
        if self.ended or not self.request.tty:
            return
        if self.io is None:
            self._pending_size = (width, height)
        else:
            self.io.resize(width, height)

    def client_gone(self) -> None:
        """The connection is gone: end an exec's process, detach an attach."""
        if self._gone:
            return
        self._gone = True
        if self.ended:
            return
        self.ended = True
        self.set_output_producer(None)
        if self.io is not None:
            try:
                self.io.terminate()
            except Exception:  # noqa: BLE001
                log.failure("terminating a streaming session's process")

    # -- Terminal ---------------------------------------------------------------

    def stdout(self, data: bytes) -> None:
        if not self.ended:
            self._wire.write_stdout(data)

    def stderr(self, data: bytes) -> None:
        if not self.ended:
            self._wire.write_stderr(data)

    def set_output_producer(self, producer: IPushProducer | None) -> None:
        if self._producer is not None:
            self._wire.remove_producer(self._producer)
        self._producer = producer
        if producer is not None and not self.ended:
            self._wire.add_producer(producer)

    def pause_input(self) -> None:
        if not self.ended:
            self._wire.pause_input()

    def resume_input(self) -> None:
        self._wire.resume_input()

    # -- the end ----------------------------------------------------------------

    def _done(self, exit_code: int | None) -> None:
        if self.ended:
            return
        if not self.is_exec:
            # Like the reference servers: an attach that ended is a success,
            # whatever the container's exit code.
            self._end(exit_code=0)
        elif exit_code is None:
            self._end(error="the command's exit code is unknown")
        else:
            self._end(exit_code=exit_code)

    def _failed(self, failure: Failure) -> None:
        if self.ended:
            return
        if not failure.check(RktletError):
            log.failure("streaming session's process", failure)
        self._end(error=str(failure.value) or failure.type.__name__)

    def _end(self, exit_code: int | None = None, error: str | None = None) -> None:
        self.ended = True
        self.set_output_producer(None)
        self._wire.end(status_payload(self.version, exit_code=exit_code, error=error))
