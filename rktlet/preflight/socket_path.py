"""Checks of the CRI socket path: it can be made, and no other daemon
serves it. Nothing is created or changed: ``rktlet check`` only looks."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat

from rktlet.config import Config
from rktlet.preflight.host import Host
from rktlet.preflight.model import Result, fail, ok

# A unix socket path must fit sun_path (108 bytes with its NUL).
SUN_PATH_MAX = 107

#: How long an existing socket gets to accept a connection.
CONNECT_TIMEOUT = 0.5


def check_socket_path(config: Config, host: Host) -> list[Result]:
    """The socket path fits a unix socket, and its directory exists and is
    writable or can be made."""
    path = os.path.abspath(config.socket)
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        return [fail("socket", f"{path} is {size} bytes, longer than the {SUN_PATH_MAX} a unix socket path may be",
                     "choose a shorter --socket")]
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as e:
        return [fail("socket", f"cannot look at {path}: {e.strerror}", "check --socket")]
    if mode is not None and not stat.S_ISSOCK(mode):
        return [fail("socket", f"{path} exists and is not a socket", "remove it or choose another --socket")]
    directory = os.path.dirname(path)
    holder = directory
    while not os.path.lexists(holder):
        holder = os.path.dirname(holder)
    if not os.path.isdir(holder):
        return [fail("socket", f"cannot make {directory}: {holder} is not a directory", "choose another --socket")]
    if not host.access(holder, os.W_OK | os.X_OK):
        return [fail("socket", f"cannot create {path}: {holder} is not writable", "run as root or choose another "
                     "--socket")]
    made = "" if holder == directory else f" ({directory} will be made)"
    return [ok("socket", f"{path} can be served{made}")]


def _lock_owner(lock_path: str) -> str | None:
    """The pid in *lock_path* when a live daemon holds its lock, else None."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            # Shared, and let go at once: a daemon starting meanwhile still gets its exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket *path*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def check_other_instance(config: Config, host: Host) -> list[Result]:
    """No live daemon serves the socket: neither a rktlet holding its lock
    file, nor anything answering on it (a socket file that refuses
    connections is stale and will be replaced)."""
    path = os.path.abspath(config.socket)
    owner = _lock_owner(path + ".lock")
    if owner is not None:
        return [fail("instance", f"another rktlet (pid {owner}) is serving {path}",
                     "stop it, or give this one another --socket, --root and --run-dir")]
    if os.path.lexists(path) and stat.S_ISSOCK(os.lstat(path).st_mode) and _answers(path):
        return [fail("instance", f"something is serving {path} (it accepts connections) without rktlet's lock",
                     "stop it or choose another --socket")]
    return [ok("instance", f"no other daemon serves {path}")]
