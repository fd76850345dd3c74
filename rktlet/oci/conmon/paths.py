"""The files conmon makes for a container, and its exit file.

:class:`MonitorPaths` names every file (exit files, the attach-socket
symlink, the FIFOs, pid files, OOM markers); :func:`parse_exit_file` and
:func:`read_exit` read the exit code conmon leaves; :func:`remove_files`
removes them all once conmon is gone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.logs import logger

__all__ = [
    "ExitStatus", "MonitorPaths", "UNKNOWN_EXIT_CODE", "monitor_paths", "parse_exit_file", "read_exit", "remove_files",
]

log = logger("rktlet.oci.conmon")

#: The exit code reported when the real one cannot be known (conmon died
#: without writing an exit file); CRI-O reports the same.
UNKNOWN_EXIT_CODE = 255

# runc's own rule for container ids; it also keeps ids from being paths.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9_+.-]+")


@dataclass(frozen=True)
class MonitorPaths:
    """Everything conmon makes for one container.

    :ivar bundle: the OCI bundle (conmon's ``-b``, cwd and ``--persist-dir``).
    :ivar exit_file: ``<exits_dir>/<id>``, the exit code as decimal text.
    :ivar attach_socket: ``<socket_dir>/<id>/attach`` (SOCK_SEQPACKET),
        reached through :attr:`socket_link`.
    :ivar ctl_fifo: ``<bundle>/ctl``, where resize / log-reopen lines go.
    :ivar oom_files: where conmon may create its ``oom`` marker: its cwd
        (≤ 2.1.12) and ``--persist-dir`` (one path here: both are the bundle).
    :ivar pid_file: ``<bundle>/pidfile``, the container pid runc writes.
    :ivar socket_link: ``<socket_dir>/<id>``, a symlink to the bundle.
    :ivar winsz_fifo: ``<bundle>/winsz``, conmon's internal resize FIFO.
    :ivar persist_exit_file: ``<bundle>/exit``, the exit file's copy in
        ``--persist-dir``.
    :ivar bundle_socket: ``<bundle>/attach``, the attach socket's real
        location (conmon unlinks it at exit, not when it is killed).
    :ivar conmon_pid_file: ``<bundle>/conmon.pid``, the monitor's pid, which
        the launcher writes before it exits.
    """

    bundle: str
    exit_file: str
    attach_socket: str
    ctl_fifo: str
    oom_files: tuple[str, ...]
    pid_file: str
    socket_link: str
    winsz_fifo: str = ""
    persist_exit_file: str = ""
    bundle_socket: str = ""
    conmon_pid_file: str = ""

    def files(self) -> tuple[str, ...]:
        """Every file conmon may leave behind (what :meth:`Conmon.cleanup`
        removes); the bundle directory itself is not among them."""
        candidates = (
            self.exit_file, self.persist_exit_file, self.socket_link, self.bundle_socket,
            self.ctl_fifo, self.winsz_fifo, self.pid_file, self.conmon_pid_file, *self.oom_files,
        )
        return tuple(dict.fromkeys(p for p in candidates if p))


def check_id(container_id: str) -> str:
    if (
        not isinstance(container_id, str)
        or not _CONTAINER_ID.fullmatch(container_id)
        or container_id in (".", "..")
    ):
        raise InvalidArgument(f"container id {container_id!r}: only letters, digits and _ + . - are allowed")
    return container_id


def monitor_paths(bundle: str, exits_dir: str, socket_dir: str, container_id: str) -> MonitorPaths:
    """The :class:`MonitorPaths` of *container_id* with bundle *bundle*.

    conmon runs with cwd = ``--persist-dir`` = *bundle*, so both places it
    may write its ``oom`` file are ``<bundle>/oom``.
    """
    check_id(container_id)
    bundle = os.path.abspath(bundle)
    socket_link = os.path.join(os.path.abspath(socket_dir), container_id)
    oom_places = (os.path.join(bundle, "oom"),  # cwd, conmon ≤ 2.1.12
                  os.path.join(bundle, "oom"))  # --persist-dir, every version
    return MonitorPaths(
        bundle=bundle,
        exit_file=os.path.join(os.path.abspath(exits_dir), container_id),
        attach_socket=os.path.join(socket_link, "attach"),
        ctl_fifo=os.path.join(bundle, "ctl"),
        oom_files=tuple(dict.fromkeys(oom_places)),
        pid_file=os.path.join(bundle, "pidfile"),
        socket_link=socket_link,
        winsz_fifo=os.path.join(bundle, "winsz"),
        persist_exit_file=os.path.join(bundle, "exit"),
        bundle_socket=os.path.join(bundle, "attach"),
        conmon_pid_file=os.path.join(bundle, "conmon.pid"),
    )


def parse_exit_file(data: bytes | str) -> int | None:
    """The exit code in an exit file's content, or None if it holds none
    (empty, or not a decimal integer).

    conmon writes the status as decimal text without a newline: the
    process's exit status, ``128 + N`` when signal N killed it, ``-1`` after
    its own ``--timeout``.
    """
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,10}", text):
        return None
    return int(text)


class ExitStatus(NamedTuple):
    """How a container ended, as :attr:`Monitor.exited` reports it."""

    exit_code: int
    finished_at_ns: int
    oom_killed: bool


def read_exit(paths: MonitorPaths) -> ExitStatus | None:
    """The :class:`ExitStatus` in *paths*' exit file, or None if there is
    none (yet).  conmon writes the file with a rename, so a file that exists
    is complete."""
    try:
        with open(paths.exit_file, "rb") as f:
            stat = os.fstat(f.fileno())
            code = parse_exit_file(f.read(64))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeFailure(f"read exit file {paths.exit_file}: {os.strerror(e.errno or 0)}") from e
    if code is None:
        return None
    return ExitStatus(code, stat.st_mtime_ns, any(os.path.exists(p) for p in paths.oom_files))


def remove_files(paths: MonitorPaths) -> None:
    """Remove every file conmon made for a container (exit files, the
    socket symlink and socket, the FIFOs, the pidfile, OOM markers).
    Idempotent; call it once conmon is gone."""
    for path in paths.files():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            # Something else sits where our symlink goes; not ours to remove.
            log.warn("cleanup: {path} is a directory, left alone", path=path)
        except OSError as e:
            raise RuntimeFailure(f"remove {path}: {os.strerror(e.errno or 0)}") from e
