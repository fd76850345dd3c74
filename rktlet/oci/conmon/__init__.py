"""conmon, the per-container monitor.

One conmon process runs beside each container for its whole life.  It runs
``runc create`` itself, holds the container's stdio, writes the CRI log file
(``<RFC3339Nano> <stdout|stderr> <F|P> <text>``), serves the attach socket,
listens on the ctl FIFO (log reopen, pty resize), notices OOM kills and, when
the container ends, writes an exit file and exits.

rktlet runs conmon 2.1.x the way CRI-O does, without ``--sync``: the
process :meth:`Conmon.create` spawns (the *launcher*) forks the monitor,
writes the monitor's pid to ``--conmon-pidfile`` and exits.  The monitor is
then an orphan; the daemon is a child subreaper
(:func:`~rktlet.oci.procwatch.become_subreaper`), so it becomes the
daemon's child, watched through a pidfd and reaped when it ends (its exit
status mirrors the container's).  Why the fork: a process keeps every
library page it ever touched mapped, and the fork leaves behind those only
conmon's option parsing and start-up touched, about half of a ``--sync``
conmon's resident memory.  The monitor survives a daemon crash or restart;
the new daemon re-attaches with :meth:`Conmon.adopt` and learns the end from
the exit file once conmon is gone (a pidfd, else polling ``/proc``).

The handshake (see conmon's ``_OCI_SYNCPIPE`` / ``_OCI_STARTPIPE``):

1. the launcher is spawned with a pipe on fd 3 (sync; the monitor it
   forks writes on it) and one it reads on fd 4 (start); it parses its
   options and blocks reading the start pipe;
2. we move it into the pod's cgroup (never leave it in the daemon's: a
   restart of the daemon's unit would kill every monitor; the monitor,
   forked next, inherits the cgroup), then write one byte on the start pipe;
3. the launcher forks, writes the monitor's pid file and exits 0; the
   monitor sets itself up (``setsid``, subreaper, stdio on /dev/null, the
   attach socket and FIFOs) and runs ``runc create``; it answers on the
   sync pipe it inherited with one JSON line, ``{"pid": N}`` (the container
   waits in ``runc init`` for ``runc start``) or
   ``{"pid": -1, "message": "…"}``.

Files made for a container (:class:`MonitorPaths`): the exit file
``<exits_dir>/<id>`` (decimal text, no newline; killed by signal N → 128+N)
and ``<bundle>/exit``; ``<socket_dir>/<id>`` → a symlink to the bundle, so
that the attach socket ``<socket_dir>/<id>/attach`` fits ``sun_path``; the
``ctl`` and ``winsz`` FIFOs, the runc ``pidfile`` and the monitor's
``conmon.pid`` in the bundle; an ``oom`` file written in conmon's cwd
(≤ 2.1.12) and in ``--persist-dir`` (both are the bundle here).  conmon
2.1.6 leaves the socket symlink behind: :meth:`Conmon.cleanup` removes
everything.

The parts: :mod:`.launch` (:class:`Conmon` and ``create``), :mod:`.monitor`
(watching and adoption), :mod:`.control` (the ctl FIFO) and :mod:`.paths`
(the files and the exit file).
"""

from rktlet.oci.conmon.control import CTL_REOPEN_LOG, CTL_RESIZE, ctl_message
from rktlet.oci.conmon.launch import Conmon, parse_sync_message
from rktlet.oci.conmon.monitor import Monitor
from rktlet.oci.conmon.paths import UNKNOWN_EXIT_CODE, ExitStatus, MonitorPaths, monitor_paths, parse_exit_file

__all__ = [
    "Conmon",
    "ExitStatus",
    "Monitor",
    "MonitorPaths",
    "ctl_message",
    "monitor_paths",
    "parse_exit_file",
    "parse_sync_message",
    "CTL_RESIZE",
    "CTL_REOPEN_LOG",
    "UNKNOWN_EXIT_CODE",
]
