"""Running a command in a running container: rkt's ``enter``, done with
``runc exec``.

Both CRI uses run ``runc --root=<state> exec --process <json> --pid-file
<file> <id>``; the process spec is the container's own ``process`` from
``<bundle>/config.json`` (same user, env, cwd, capabilities,
noNewPrivileges, AppArmor profile, rlimits) with ``args`` replaced and
``terminal`` set per request.

* **ExecSync** (:func:`exec_sync`, probes and ``crictl exec -s``): stdout and
  stderr are pipes, each kept up to :data:`EXEC_SYNC_OUTPUT_LIMIT` (16 MiB,
  CVE-2022-1708); a timeout kills everything the command started and raises
  :class:`~rktlet.errors.DeadlineExceeded`. No terminal, as in containerd.
* **Exec** (:func:`start_exec`, the streaming server): an
  :class:`ExecSession` (a :class:`rktlet.stream.session.ProcessIO`).

**Pipes (no tty).** A foreground ``runc exec`` (1.1.5) does not hand our
pipes to the command: it makes pipes of its own, copies between them and
its stdio, and before exiting waits for those copies to end — so a command
that leaves a background child holding stdout (``sleep 100 & echo hi``)
keeps runc, and the call, waiting as long as that child lives. rktlet
therefore runs ``runc exec --detach`` — the command inherits our pipes
directly, runc exits once it has started it — under a tiny reaper
(:mod:`.reaper`: ``reaper.c`` compiled, else a script run with this Python,
``-I -S``): it makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the command becomes its child
when runc exits, waits for it and reports ``exit <code>`` (or ``runc
<status>`` when runc failed) on fd 3. Once the command has ended, output is
drained for :data:`DRAIN_GRACE` and our pipe ends are closed, whatever
still holds the other ends. (CRI-O gets the same from conmon's exec mode.)

**Terminal.** runc runs in the foreground on a pseudo-terminal we open, as
in CRI-O: with ``terminal: true`` and no ``--console-socket``, runc 1.1.5
creates the container-side console itself, proxies it to its own stdio
(putting our pty in raw mode) and copies our window size to it at start
and on every SIGWINCH. A resize is thus a TIOCSWINSZ on our pty master; the
kernel sends runc the SIGWINCH. runc closes the console when the command
exits, so a background child does not hold a tty session.

runc's own errors (a missing executable, a stopped container) are told
apart from the command's output through ``--log <file> --log-format json``:
an error record there means runc failed and the command never ran.

runc's init stage calls ``setsid()``, so the command leads a session and
process group of its own (its host pid is what ``--pid-file`` holds).
Ending an exec kills that process group and every process left in its
session (what a shell's ``&`` or an interactive shell's jobs started);
runc, or the reaper, then exits by itself and is killed only if it lingers.

The parts: :mod:`.spec` (the exec's process spec), :mod:`.process` (its
files, the runc or reaper command line, the process protocol), :mod:`.reaper`,
:mod:`.kill` (ending the command's session), :mod:`.sync` (ExecSync) and
:mod:`.interactive` (:class:`ExecSession` for the streaming server).
"""

from rktlet.oci.exec.interactive import ExecSession, InputFlow, start_exec
from rktlet.oci.exec.kill import session_members
from rktlet.oci.exec.process import DRAIN_GRACE, KILL_GRACE, ExecResult, exit_code_of, parse_runc_log
from rktlet.oci.exec.reaper import COMPILED_REAPER, describe_reaper, parse_reaper_report
from rktlet.oci.exec.spec import DEFAULT_WINDOW, exec_process_spec, load_container_process
from rktlet.oci.exec.sync import (
    EXEC_SYNC_OUTPUT_LIMIT,
    EXEC_SYNC_RESPONSE_BUDGET,
    RUNC_EXEC_FAILED,
    exec_sync,
    fit_response,
)

__all__ = [
    "COMPILED_REAPER",
    "DEFAULT_WINDOW",
    "describe_reaper",
    "DRAIN_GRACE",
    "EXEC_SYNC_OUTPUT_LIMIT",
    "EXEC_SYNC_RESPONSE_BUDGET",
    "KILL_GRACE",
    "RUNC_EXEC_FAILED",
    "ExecResult",
    "ExecSession",
    "InputFlow",
    "exec_process_spec",
    "exec_sync",
    "exit_code_of",
    "fit_response",
    "load_container_process",
    "parse_reaper_report",
    "parse_runc_log",
    "session_members",
    "start_exec",
]
