"""Helper processes of the tests (the registry, its proxy, containerd, the
rktlet daemon): started in a session of their own, tied to the life of the
process that started them, and stopped by their PID."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Collection, Mapping, Sequence
from typing import IO, Iterator, Optional, Union

import grpc

from rktlet.cri.proto import pb_grpc
from rktlet.oci.procwatch import proc_state


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the process that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # best effort; stop()/cleanup()/atexit remain the main cleanup
        pass


#: The names (comm) of what a killed daemon leaves to the test process.
MONITOR_NAMES = ("conmon", "runc", "catatonit")


def live_cmdlines() -> Iterator[tuple[int, bytes]]:
    """``(pid, command line)`` of every live process (zombies left out);
    the command line as in ``/proc/PID/cmdline`` (NUL-separated)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state not in (b"Z", b"X"):
            yield int(entry), cmdline


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line mentions *text*."""
    return [pid for pid, cmdline in live_cmdlines() if text.encode() in cmdline]


def read_log(path: str) -> str:
    """All of the log at *path* so far ('' before it exists)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def reap_orphans(names: Optional[Collection[str]] = None) -> list[int]:
    """Reap zombie children of this process, only those named (comm) in
    *names* when given; their pids.

    The test process is a child subreaper (``tests/conftest.py``), like the
    daemon: conmon monitors an in-process ``Conmon`` started, and those of a
    daemon a test killed, end up as its children and would stay zombies.
    Call it without *names* only when no ``Popen`` is left to wait for.
    """
    me = os.getpid()
    reaped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        state = proc_state(int(entry))
        if state is None or state[1] != "Z" or state[2] != me or (names is not None and state[0] not in names):
            continue
        try:
            if os.waitpid(int(entry), os.WNOHANG)[0]:
                reaped.append(int(entry))
        except ChildProcessError:
            pass
    return reaped


def spawn(argv: Sequence[str], *, stdout: Union[int, IO, None], stderr: Union[int, IO, None],
          env: Mapping[str, str], cwd: Optional[str]) -> subprocess.Popen:
    """Start ``argv`` with no stdin, in a new session, killed when its parent dies."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def spawn_logged(argv: Sequence[str], log_path: str, *, env: Mapping[str, str], cwd: Optional[str],
                 mode: str = "ab") -> subprocess.Popen:
    """:func:`spawn` with its stdout and stderr going to ``log_path``
    (opened with ``mode``)."""
    log = open(log_path, mode)
    try:
        return spawn(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> Optional[int]:
    """Signal ``proc`` by its PID (``sig``, SIGTERM by default) if it still
    runs, wait up to ``timeout`` seconds, then SIGKILL it and wait.

    :returns: its exit status.
    """
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return proc.returncode


class CriClients:
    """The CRI clients of a helper process that serves CRI on the unix
    socket ``self.socket``: one gRPC channel (``self._channel``, ``None``
    until first used), reused, and closed by :meth:`close_channel`."""

    socket: str
    _channel: Optional[grpc.Channel]

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the process's socket (reused)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self._channel

    def runtime(self) -> pb_grpc.RuntimeServiceStub:
        """A CRI RuntimeService client."""
        return pb_grpc.RuntimeServiceStub(self.channel())

    def images(self) -> pb_grpc.ImageServiceStub:
        """A CRI ImageService client."""
        return pb_grpc.ImageServiceStub(self.channel())

    def close_channel(self) -> None:
        """Close the channel, if one was opened."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
