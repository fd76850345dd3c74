"""Claiming the CRI socket path for one daemon.

A lock file beside the socket (``<socket>.lock``, holding the owner's pid) is
held with ``flock`` for the daemon's life. When it is held by someone else, a
live rktlet owns the socket and we refuse to start. When we get the lock, any
socket file still there is stale (its daemon died) and is removed.
"""

from __future__ import annotations

import errno
import fcntl
import os

from rktlet.errors import StartupError


class SocketClaim:
    """The held claim on one socket path; :meth:`release` gives it up."""

    def __init__(self, socket_path: str, lock_fd: int) -> None:
        self.socket_path = socket_path
        self._lock_fd: int | None = lock_fd

    @property
    def lock_path(self) -> str:
        """The lock file's path."""
        return self.socket_path + ".lock"

    def release(self) -> None:
        """Remove the socket file and drop the lock (idempotent)."""
        if self._lock_fd is None:
            return
        for path in (self.socket_path, self.lock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = None


def claim_socket(socket_path: str) -> SocketClaim:
    """Take ownership of *socket_path* for this process.

    :raises StartupError: another live daemon holds it, or its directory
        cannot be made.
    """
    directory = os.path.dirname(os.path.abspath(socket_path))
    try:
        os.makedirs(directory, mode=0o711, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the socket directory {directory}: {e.strerror}") from None
    lock_path = socket_path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StartupError(
                f"another rktlet (pid {owner}) is serving {socket_path}; not starting"
            ) from None
        raise StartupError(f"cannot lock {lock_path}: {e.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    if os.path.lexists(socket_path):
        os.unlink(socket_path)  # stale: its daemon no longer holds the lock
    return SocketClaim(socket_path, fd)
