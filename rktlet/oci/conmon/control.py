"""conmon's ctl FIFO: the lines that make it resize the container's pty or
reopen its log file, written without ever blocking."""

from __future__ import annotations

import errno
import os

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci.conmon.paths import MonitorPaths

__all__ = ["CTL_REOPEN_LOG", "CTL_RESIZE", "ctl_message", "reopen_log", "resize", "write_ctl"]

#: ctl FIFO message types (conmon's ``ctrl.c``): resize the pty, reopen the log.
CTL_RESIZE = 1
CTL_REOPEN_LOG = 2


def ctl_message(kind: int, a: int, b: int) -> bytes:
    """One ctl FIFO line: ``"<kind> <a> <b>\\n"``.

    For :data:`CTL_RESIZE` *a* is the height (rows) and *b* the width
    (columns); :data:`CTL_REOPEN_LOG` takes ``0 0``.  Each line must go in a
    write of its own: conmon 2.1.6 mangles several lines read at once.
    """
    for value in (kind, a, b):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"ctl message fields must be non-negative integers, got {value!r}")
    return f"{kind} {a} {b}\n".encode()


def write_ctl(paths: MonitorPaths, line: bytes) -> None:
    """Write one line to the ctl FIFO without ever blocking."""
    try:
        # O_NONBLOCK: a plain open blocks forever when nobody reads (conmon
        # gone); this way it fails with ENXIO.
        fd = os.open(paths.ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            raise RuntimeFailure("container is not running") from e
        raise RuntimeFailure(f"open {paths.ctl_fifo}: {os.strerror(e.errno or 0)}") from e
    try:
        # One line per write(2): conmon 2.1.6 mangles lines read together.
        written = os.write(fd, line)
    except OSError as e:
        if e.errno == errno.EPIPE:
            raise RuntimeFailure("container is not running") from e
        if e.errno == errno.EAGAIN:
            raise RuntimeFailure("conmon is not reading its ctl FIFO (it is full)") from e
        raise RuntimeFailure(f"write {paths.ctl_fifo}: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(fd)
    if written != len(line):
        raise RuntimeFailure(f"write {paths.ctl_fifo}: short write ({written} of {len(line)} bytes)")


def reopen_log(paths: MonitorPaths) -> None:
    """Ask conmon to reopen the container's log file (after the kubelet
    rotated it).  conmon makes the new file a moment later (``<log>.tmp``
    renamed over the log path); this call does not wait for it.

    :raises RuntimeFailure: ``container is not running`` when conmon is gone.
    """
    write_ctl(paths, ctl_message(CTL_REOPEN_LOG, 0, 0))


def resize(paths: MonitorPaths, height: int, width: int) -> None:
    """Resize the container's pty to *height* rows × *width* columns
    (callers should coalesce bursts and send only the latest size).

    :raises RuntimeFailure: ``container is not running`` when conmon is gone.
    """
    write_ctl(paths, ctl_message(CTL_RESIZE, height, width))
