"""What a streaming session asks of the runtime, and the two halves of an
interactive session.

The streaming server (``rktlet.stream``) speaks the wire protocols; the
runtime side (the pod engine, with its drivers) runs processes and makes
connections. They meet through these types only:

* the CRI RPC stores an :class:`ExecRequest`, :class:`AttachRequest` or
  :class:`PortForwardRequest` under a one-time token;
* when the client connects, the server calls the engine's
  :class:`Backend` with the request and a :class:`Terminal` (its half: where
  output goes), and gets a :class:`ProcessIO` (the runtime's half: where
  input, resizes and the client's departure go).

Backpressure both ways: a slow client pauses the process's output through
the producer given to :meth:`Terminal.set_output_producer`; a process that
does not read its stdin pauses the client through :meth:`Terminal.pause_input`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer


@dataclass(frozen=True)
class ExecRequest:
    """An interactive exec, as the Exec RPC asked for it."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachRequest:
    """An attach to a running container's main process."""

    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class PortForwardRequest:
    """Port-forwarding into a pod's network namespace. *ports* is what the
    RPC named (WebSocket clients); SPDY clients name a port per stream."""

    sandbox_id: str
    ports: tuple[int, ...] = field(default_factory=tuple)


class Terminal(Protocol):
    """The streaming side of an exec or attach, handed to the backend."""

    def stdout(self, data: bytes) -> None:
        """Bytes the process wrote to stdout (or its tty)."""

    def stderr(self, data: bytes) -> None:
        """Bytes the process wrote to stderr (never called for a tty)."""

    def set_output_producer(self, producer: IPushProducer | None) -> None:
        """Register what produces the output, so a slow client pauses it."""

    def pause_input(self) -> None:
        """Stop delivering stdin: the process is not reading it."""

    def resume_input(self) -> None:
        """Deliver stdin again."""


class ProcessIO(Protocol):
    """The runtime side of an exec or attach, returned by the backend.

    :ivar done: fires with the exit code when an exec's process has ended
        and its output has been delivered (attach: with the container's exit
        code, or ``None`` when the attach ended without the container ending).
        Errors (the process could not start) fail it with a RktletError.
    """

    done: Deferred

    def stdin(self, data: bytes) -> None:
        """Bytes for the process's stdin."""

    def close_stdin(self) -> None:
        """The client ended stdin (EOF for the process)."""

    def resize(self, width: int, height: int) -> None:
        """The client's terminal size changed (tty sessions)."""

    def terminate(self) -> None:
        """The client went away: end an exec's process (kill and reap it, so
        nothing is left); detach from an attach (the container runs on)."""


class Backend(Protocol):
    """What the streaming server needs from the runtime (the pod engine)."""

    def exec(self, request: ExecRequest, terminal: Terminal) -> ProcessIO:
        """Start ``request.cmd`` in the container.

        :raises NotFound: unknown container.
        :raises FailedPrecondition: the container is not running.
        """

    def attach(self, request: AttachRequest, terminal: Terminal) -> ProcessIO:
        """Attach to the container's main process."""

    def port_forward(self, sandbox_id: str, port: int, protocol: IProtocol) -> Deferred:
        """Connect *protocol* to ``127.0.0.1:port`` inside the pod's network
        namespace (the host's for host-network pods). Fires with the
        protocol's transport once connected; fails with a RktletError whose
        message the client sees (e.g. connection refused)."""

    def validate(self, request: Any) -> None:
        """Check at RPC time that the target exists and can be streamed to
        (raise NotFound / FailedPrecondition)."""
