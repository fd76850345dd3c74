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
(:data:`_REAPER`, run with this Python, ``-I -S``): it makes itself a child
subreaper (``PR_SET_CHILD_SUBREAPER``), so the command becomes its child
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
"""

from __future__ import annotations

import copy
import errno
import fcntl
import functools
import json
import os
import pty
import secrets
import shutil
import signal
import struct
import sys
import termios
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from rktlet.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RktletError, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.runtime import DEFAULT_PATH, OCIRuntime
from rktlet.process import widen_pipe_reads

__all__ = [
    "DRAIN_GRACE",
    "EXEC_SYNC_OUTPUT_LIMIT",
    "ExecResult",
    "ExecSession",
    "exec_process_spec",
    "exec_sync",
    "parse_reaper_report",
    "parse_runc_log",
    "session_members",
    "start_exec",
]

log = logger("rktlet.oci.exec")

#: ExecSync keeps at most this much of each of stdout and stderr (CRI-O and
#: containerd cap at 16 MiB since CVE-2022-1708).
EXEC_SYNC_OUTPUT_LIMIT = 16 << 20

#: After the command has ended, how long output is still read before our
#: pipe ends are closed (a background child may hold the others forever).
DRAIN_GRACE = 0.2

#: After the exec'd processes were killed, how long runc (or the reaper)
#: gets to exit before it is killed too; also how long a kill waits for
#: runc to write the command's pid.
KILL_GRACE = 2.0

#: How often a kill looks for the pid file runc has not written yet.
_PID_POLL = 0.02

#: The window size a tty exec starts with until the client sends its own
#: (0x0 makes many programs misbehave).
DEFAULT_WINDOW = (80, 24)

_TRUNCATED_NOTE = "\n... {stream} truncated at {limit} MiB by rktlet\n"

#: What stdout and stderr of one ExecSync may add up to: its response must
#: fit in one 16 MiB gRPC message (the kubelet's receive limit, and ours),
#: with room for the truncation notes and the message's own framing.
EXEC_SYNC_RESPONSE_BUDGET = (16 << 20) - 4096


def fit_response(stdout: bytes, stderr: bytes, budget: int) -> tuple[bytes, bytes, bool, bool]:
    """Cut *stdout* and *stderr* so that together they fit *budget* bytes:
    a stream within half the budget is kept whole and the other gets the
    rest; otherwise each gets half. Returns both and whether each was cut."""
    if len(stdout) + len(stderr) <= budget:
        return stdout, stderr, False, False
    half = budget // 2
    if len(stderr) <= half:
        keep_out, keep_err = budget - len(stderr), len(stderr)
    elif len(stdout) <= half:
        keep_out, keep_err = len(stdout), budget - len(stdout)
    else:
        keep_out, keep_err = half, budget - half
    return stdout[:keep_out], stderr[:keep_err], keep_out < len(stdout), keep_err < len(stderr)

#: The reaper run around ``runc exec --detach`` (argv: pid file, then runc's
#: argv). It must become a subreaper before runc starts the command, reaps
#: whatever it inherits, and writes one line on fd 3: ``exit <code>`` (128 +
#: N after signal N), ``runc <status>`` (runc failed: see its log), or
#: ``lost <why>``. Its own stdio is closed once runc is started, so only
#: the command holds our pipes.
_REAPER = r"""
import ctypes, os, sys
def report(line):
    os.write(3, line.encode() + b"\n")
    os._exit(0)
def code(status):
    c = os.waitstatus_to_exitcode(status)
    return c if c >= 0 else 128 - c
os.set_inheritable(3, False)
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    report("lost prctl(PR_SET_CHILD_SUBREAPER) failed")
pid_file, argv = sys.argv[1], sys.argv[2:]
try:
    runc = os.posix_spawn(argv[0], argv, os.environ)
except OSError as e:
    report("lost cannot run %s: %s" % (argv[0], e.strerror))
os.closerange(0, 3)
reaped = {}  # a quick command may be handed over, and reaped, before runc
while runc not in reaped:
    pid, status = os.waitpid(-1, 0)
    reaped[pid] = status
if code(reaped[runc]) != 0:
    report("runc %d" % code(reaped[runc]))
try:
    with open(pid_file) as f:
        target = int(f.read().strip())
except (OSError, ValueError) as e:
    report("lost no pid from runc: %s" % e)
while target not in reaped:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        report("lost the command was not handed to the reaper")
    reaped[pid] = status
report("exit %d" % code(reaped[target]))
"""


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------

def exec_process_spec(container_process: dict[str, Any], args: Sequence[str], tty: bool,
                      window: tuple[int, int] = DEFAULT_WINDOW) -> dict[str, Any]:
    """The OCI ``process`` for an exec: the container's own *container_process*
    (user, env, cwd, capabilities, noNewPrivileges, apparmorProfile, rlimits,
    oomScoreAdj…) with ``args`` replaced and ``terminal`` set to *tty*.

    A tty exec gets ``TERM=xterm`` when the container's env has no TERM (as
    containerd does), so that full-screen programs work, and a
    ``consoleSize`` of *window* (width, height): runc sizes the console with
    it before the command starts, where its own first copy of our pty's
    size may come only after the command has looked.

    :raises InvalidArgument: *args* is empty or not all strings.
    """
    if not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("cmd: the command to execute must be a non-empty list of strings")
    if any("\0" in a for a in args):
        raise InvalidArgument("cmd: arguments must not contain NUL bytes")
    process = copy.deepcopy(container_process)
    process["args"] = list(args)
    process["terminal"] = bool(tty)
    # The container's console size does not apply to another terminal (and
    # without a terminal runc rejects it).
    process.pop("consoleSize", None)
    if tty:
        process["consoleSize"] = {"width": window[0], "height": window[1]}
    env = list(process.get("env") or [])
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    process["env"] = env
    return process


def load_container_process(bundle: str) -> dict[str, Any]:
    """The ``process`` object of the runtime spec in *bundle*.

    :raises FailedPrecondition: the bundle or its spec is gone (the container
        was removed meanwhile).
    :raises RuntimeFailure: the spec cannot be read or has no process.
    """
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise FailedPrecondition(f"container bundle {bundle} has no runtime spec: the container is gone") from None
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"read runtime spec {path}: {e}") from e
    process = spec.get("process") if isinstance(spec, dict) else None
    if not isinstance(process, dict):
        raise RuntimeFailure(f"runtime spec {path} has no process")
    return process


def parse_runc_log(data: bytes) -> str:
    """runc's own error messages in its ``--log-format json`` log (records of
    level error, fatal or panic), joined with ``"; "``; empty when there are
    none (the command ran)."""
    messages = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("level") in ("error", "fatal", "panic") and isinstance(record.get("msg"), str):
            messages.append(record["msg"].strip())
    return "; ".join(m for m in messages if m)


def parse_reaper_report(data: bytes) -> tuple[str, int | None, str]:
    """The reaper's line as ``(kind, number, text)``: ``("exit", code, "")``,
    ``("runc", status, "")``, ``("lost", None, why)``; ``("lost", None,
    …)`` also for nothing or garbage (the reaper was killed)."""
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    kind, _, rest = line.partition(" ")
    if kind in ("exit", "runc") and rest.lstrip("-").isdigit():
        return kind, int(rest), ""
    if kind == "lost":
        return kind, None, rest
    return "lost", None, "the reaper ended without reporting" if not line else f"unreadable report {line[:100]!r}"


def exit_code_of(reason: Failure) -> int:
    """The exit status of an ended process in shell terms: its exit code, or
    128 + N when signal N killed it."""
    value = reason.value
    code = getattr(value, "exitCode", None)
    if code is not None:
        return code
    sig = getattr(value, "signal", None)
    return 128 + sig if sig else 255


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(process group, session)`` of *pid* as seen from our pid namespace,
    or None when there is no such (live) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 4 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[2]), int(fields[3])


def session_members(leader: int) -> list[int]:
    """Live processes in the session or process group led by *leader* (a host
    pid), the leader included when it still runs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ids = _proc_stat(int(entry))
        if ids is not None and leader in ids:
            found.append(int(entry))
    return found


def _kill_session(leader: int) -> None:
    """SIGKILL the exec'd process *leader*, its process group and everything
    left in its session."""
    for target in (-leader, leader, *session_members(leader)):
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------------
# The files of one exec
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _ExecFiles:
    """The process spec, pid file and runc log of one exec, beside the
    container's bundle (on the run dir's tmpfs; removed when the exec ends,
    and with the bundle at the latest)."""

    process: str
    pid: str
    log: str

    @classmethod
    def write(cls, bundle: str, process: dict[str, Any]) -> "_ExecFiles":
        stem = os.path.join(bundle, f"exec-{secrets.token_hex(8)}")
        files = cls(process=stem + ".json", pid=stem + ".pid", log=stem + ".log")
        try:
            fd = os.open(files.process, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(process, f)
        except FileNotFoundError:
            raise FailedPrecondition(f"container bundle {bundle} is gone: the container was removed") from None
        except OSError as e:
            files.remove()
            raise RuntimeFailure(f"write exec process spec {files.process}: {os.strerror(e.errno or 0)}") from e
        return files

    def read_pid(self) -> int | None:
        """The exec'd process's host pid, once runc has written it."""
        try:
            with open(self.pid, "rb") as f:
                text = f.read(32).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def runc_error(self) -> str:
        """runc's own error message, if it failed (see :func:`parse_runc_log`)."""
        try:
            with open(self.log, "rb") as f:
                return parse_runc_log(f.read(1 << 20))
        except OSError:
            return ""

    def remove(self) -> None:
        for path in (self.process, self.pid, self.log):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("could not remove {path}: {error}", path=path, error=os.strerror(e.errno or 0))


def _runc_argv(runtime: OCIRuntime, files: _ExecFiles, container_id: str, detach: bool) -> list[str]:
    return [
        runtime.binary, *runtime.global_args,
        "--log", files.log, "--log-format", "json",
        "exec", *(["--detach"] if detach else []),
        "--process", files.process, "--pid-file", files.pid,
        container_id,
    ]  # fmt: skip


COMPILED_REAPER = "rktlet-exec-reaper"


@functools.lru_cache(maxsize=1)
def _reaper_command() -> tuple[str, ...]:
    """The reaper to run: the compiled one (``reaper.c``, installed beside
    this interpreter by tests/run and packaging/install.sh) starts in about a
    millisecond; else this interpreter with ``-I -S`` (no site packages, no
    environment), which takes 10–20 ms to start."""
    beside = os.path.join(os.path.dirname(sys.executable or ""), COMPILED_REAPER)
    found = beside if os.access(beside, os.X_OK) else shutil.which(COMPILED_REAPER)
    if found:
        return (found,)
    return (sys.executable or "python3", "-I", "-S", "-c", _REAPER)


def _reaper_argv(runtime: OCIRuntime, files: _ExecFiles, container_id: str) -> list[str]:
    return [*_reaper_command(), files.pid, *_runc_argv(runtime, files, container_id, True)]


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", DEFAULT_PATH)}


@dataclass(frozen=True)
class ExecResult:
    """How an exec ended.

    :ivar exit_code: the command's exit status (128 + N after signal N).
    :ivar runc_error: why the command could not be run (runc's own words),
        if it could not; *exit_code* is meaningless then.
    :ivar killed: rktlet killed it (timeout, terminate, cancel).
    """

    exit_code: int
    runc_error: str
    killed: bool


# ---------------------------------------------------------------------------
# The exec process
# ---------------------------------------------------------------------------

class _ExecProtocol(ProcessProtocol):
    """Our side of one exec — the reaper around ``runc exec --detach``
    (pipes), or a foreground ``runc exec`` (pty): output to callbacks, the
    drain after the command's end, killing, the files' removal.

    :ivar ended: fires with an :class:`ExecResult` once the process has been
        reaped, our pipe ends are closed and the exec's files are removed.
    """

    def __init__(self, reactor: Any, files: _ExecFiles, on_stdout: Callable[[bytes], None],
                 on_stderr: Callable[[bytes], None], reaper: bool, drain_grace: float = DRAIN_GRACE) -> None:
        self.ended: Deferred[ExecResult] = Deferred()
        self._reactor = reactor
        self._files = files
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._reaper = reaper
        self._drain_grace = drain_grace
        self._report = b""
        self.exited = False
        self.killed = False
        self.paused = False
        self._drain_timer: Any = None
        self._kill_timer: Any = None
        self._kill_deadline = 0.0
        self._process_killed = False
        self._cut_pending = False
        self._exit_reason: Failure | None = None

    # -- output ---------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._on_stdout(data)
        elif childFD == 2:
            self._on_stderr(data)
        elif childFD == 3 and len(self._report) < 4096:
            self._report += data

    def pause(self) -> None:
        """Stop reading output (the consumer is slow)."""
        self.paused = True
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        if self._cut_pending:
            # What the pause held back is read now; cut after a grace.
            self._cut_pending = False
            self._schedule_cut()

    # -- the end --------------------------------------------------------------

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        self._exit_reason = reason
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        if self._process_killed:
            # We killed runc (or the reaper) itself: it may have started the
            # command after we last looked for its pid, and nobody waits for
            # it now. It must not run on unobserved.
            pid = self._files.read_pid()
            if pid is not None:
                _kill_session(pid)
        self._schedule_cut()

    def _schedule_cut(self) -> None:
        if self._drain_timer is None or not self._drain_timer.active():
            self._drain_timer = self._reactor.callLater(self._drain_grace, self._cut)

    def _cut(self) -> None:
        """Close our pipe ends: what the command wrote before it ended has
        been read; whatever still holds the other ends is a background child."""
        self._drain_timer = None
        if self.paused and not self.killed:
            # Unread output may still sit in the pipes: wait for the reader.
            self._cut_pending = True
            return
        self.transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        for timer in (self._drain_timer, self._kill_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._drain_timer = self._kill_timer = None
        result = self._result(self._exit_reason or reason)
        self._files.remove()
        self.ended.callback(result)

    def _result(self, reason: Failure) -> ExecResult:
        runc_error = self._files.runc_error()
        if not self._reaper:
            return ExecResult(exit_code_of(reason), runc_error, self.killed)
        kind, number, why = parse_reaper_report(self._report)
        if kind == "exit" and number is not None:
            return ExecResult(number, "", self.killed)
        if kind == "runc":
            return ExecResult(number if number is not None else 255,
                              runc_error or f"runc exec failed with status {number}", self.killed)
        if self.killed:
            return ExecResult(exit_code_of(reason), "", True)
        return ExecResult(255, runc_error or f"exec: {why}", False)

    # -- killing --------------------------------------------------------------

    def kill(self) -> None:
        """End the exec: SIGKILL the command's session, once its pid is known;
        runc or the reaper is killed too if it has not exited after
        :data:`KILL_GRACE` seconds. Idempotent."""
        if self.exited:
            self.killed = True
            # Only background children can hold the pipes now: stop draining.
            if self._drain_timer is not None and self._drain_timer.active():
                self._drain_timer.cancel()
            self._drain_timer = None
            self.transport.loseConnection()
            return
        if self.killed:
            return
        self.killed = True
        self._kill_deadline = self._reactor.seconds() + KILL_GRACE
        self._kill_command()

    def _kill_command(self) -> None:
        self._kill_timer = None
        if self.exited:
            return
        # The process we spawned has not exited: the command is still runc's
        # child (pty), or the reaper's, which reports and exits right after
        # reaping it — its pid still names it (or nothing).
        pid = self._files.read_pid()
        if pid is not None:
            _kill_session(pid)
            self._kill_timer = self._reactor.callLater(
                max(0.0, self._kill_deadline - self._reactor.seconds()), self._kill_process)
        elif self._reactor.seconds() < self._kill_deadline:
            # runc has not started the command (or written its pid) yet.
            self._kill_timer = self._reactor.callLater(_PID_POLL, self._kill_command)
        else:
            self._kill_process()

    def _kill_process(self) -> None:
        self._kill_timer = None
        self._process_killed = True
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def _spawn(reactor: Any, proto: _ExecProtocol, argv: list[str], files: _ExecFiles, **kwargs: Any) -> None:
    try:
        transport = reactor.spawnProcess(proto, argv[0], argv, env=_env(), **kwargs)
    except OSError as e:
        files.remove()
        raise RuntimeFailure(f"exec: cannot run {argv[0]}: {os.strerror(e.errno or 0)}") from e
    widen_pipe_reads(transport)


def _spawn_piped(reactor: Any, runtime: OCIRuntime, container_id: str, files: _ExecFiles,
                 on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> _ExecProtocol:
    """The command with our pipes as its stdin, stdout and stderr, under the reaper."""
    proto = _ExecProtocol(reactor, files, on_stdout, on_stderr, reaper=True)
    _spawn(reactor, proto, _reaper_argv(runtime, files, container_id), files,
           childFDs={0: "w", 1: "r", 2: "r", 3: "r"})
    return proto


# ---------------------------------------------------------------------------
# ExecSync
# ---------------------------------------------------------------------------

class _Capped:
    """Collects a stream up to *limit* bytes and counts what is dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += len(chunk) - max(0, min(room, len(chunk)))


def _describe(cmd: Sequence[str]) -> str:
    text = " ".join(cmd)
    return repr(text if len(text) <= 200 else text[:200] + "…")


#: runc's words when the process it was to run (exec, or a container's
#: command) could not be started: not found, not executable.
RUNC_EXEC_FAILED = "unable to start container process: exec: "


async def exec_sync(reactor: Any, runtime: OCIRuntime, container_id: str, bundle: str, cmd: Sequence[str],
                    timeout: float, limit: int = EXEC_SYNC_OUTPUT_LIMIT) -> tuple[int, bytes, bytes]:
    """Run *cmd* in the running container and return ``(exit_code, stdout,
    stderr)`` as soon as it has ended (stdin is empty; no terminal).

    Each stream keeps its first *limit* bytes; a stream cut short gets a
    note appended to stderr. Cancelling the call kills the command.

    :param timeout: seconds; > 0 kills the command (its whole session) when
        it runs longer. 0 means no limit.
    :raises DeadlineExceeded: the command ran past *timeout* (it was killed).
    :raises RuntimeFailure: runc could not run the command (its message).
    :raises FailedPrecondition: the container's bundle is gone.
    """
    process = exec_process_spec(load_container_process(bundle), cmd, tty=False)
    files = _ExecFiles.write(bundle, process)
    out, err = _Capped(limit), _Capped(limit)
    proto = _spawn_piped(reactor, runtime, container_id, files, out.add, err.add)
    # Empty stdin: the pipe is closed at once (EOF), as CRI-O gives /dev/null.
    proto.transport.closeStdin()
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        proto.kill()

    timer = reactor.callLater(timeout, expire) if timeout and timeout > 0 else None
    waiting: Deferred[ExecResult] = Deferred(lambda _: proto.kill())
    proto.ended.addBoth(lambda r: None if waiting.called else waiting.callback(r))
    try:
        result = await waiting
    except CancelledError:
        log.info("exec in {id} cancelled by its caller: {cmd} killed", id=container_id, cmd=_describe(cmd))
        raise
    finally:
        if timer is not None and timer.active():
            timer.cancel()
    if timed_out:
        raise DeadlineExceeded(f"command {_describe(cmd)} timed out after {timeout:g}s")
    if result.runc_error:
        if RUNC_EXEC_FAILED in result.runc_error:
            # The command itself cannot be run (not found, not executable):
            # the request's fault, named by its field.
            raise InvalidArgument(f"cmd[0] {cmd[0]!r} cannot be run in container {container_id}: {result.runc_error}")
        raise RuntimeFailure(f"exec in container {container_id}: {result.runc_error}")
    stdout, stderr = bytes(out.data), bytes(err.data)
    cut_out = cut_err = False
    if limit:
        stdout, stderr, cut_out, cut_err = fit_response(stdout, stderr, min(EXEC_SYNC_RESPONSE_BUDGET, 2 * limit))
    notes = b""
    for name, stream, cut, kept in (("stdout", out, cut_out, stdout), ("stderr", err, cut_err, stderr)):
        if stream.dropped or cut:
            size = len(kept) if cut else limit
            notes += _TRUNCATED_NOTE.format(stream=name, limit=round(size / (1 << 20))).encode()
    return result.exit_code, stdout, stderr + notes


# ---------------------------------------------------------------------------
# Interactive exec
# ---------------------------------------------------------------------------

@implementer(IPushProducer)
class _OutputProducer:
    """What the streaming side pauses when its client reads slowly."""

    def __init__(self, session: "ExecSession") -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session._pause_output()

    def resumeProducing(self) -> None:
        self._session._resume_output()

    def stopProducing(self) -> None:
        self._session.terminate()


@implementer(IPushProducer)
class InputFlow:
    """Registered with what takes a session's input (a process's stdin pipe,
    conmon's attach socket): when it cannot take more, the client's input is
    paused."""

    def __init__(self, terminal: Any) -> None:
        self._terminal = terminal

    def pauseProducing(self) -> None:
        self._terminal.pause_input()

    def resumeProducing(self) -> None:
        self._terminal.resume_input()

    def stopProducing(self) -> None:
        pass  # stdin is gone; the session's end is reported through `done`


class ExecSession:
    """One interactive exec (a :class:`~rktlet.stream.session.ProcessIO`).

    Made by :func:`start_exec`. :attr:`done` fires with the exit code (128 +
    N after signal N) once the command has ended and its output has been
    delivered to the terminal; it fails with :class:`RuntimeFailure` when
    runc could not run the command.
    """

    def __init__(self, reactor: Any, terminal: Any, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.done: Deferred[int] = Deferred()
        self._reactor = reactor
        self._terminal = terminal
        self.tty = tty
        self._want_stdin = stdin
        self._want_stdout = stdout
        self._want_stderr = stderr and not tty
        self._proto: _ExecProtocol | None = None
        self._stdin_closed = not stdin
        self._window: tuple[int, int] | None = None

    # -- start ------------------------------------------------------------------

    def _start(self, runtime: OCIRuntime, container_id: str, bundle: str, cmd: Sequence[str]) -> None:
        process = exec_process_spec(load_container_process(bundle), cmd, tty=self.tty)
        files = _ExecFiles.write(bundle, process)
        if not self.tty:
            proto = _spawn_piped(self._reactor, runtime, container_id, files, self._out, self._err)
        else:
            proto = _ExecProtocol(self._reactor, files, self._out, self._err, reaper=False)
            master, slave = pty.openpty()
            # Sized before runc starts: runc copies our size to the container's
            # console once at start, then on each SIGWINCH.
            _set_window(master, *DEFAULT_WINDOW)
            try:
                # Twisted forks for a pty (posix_spawn cannot give a controlling
                # terminal); it closes the slave in the parent and owns the master.
                _spawn(self._reactor, proto, _runc_argv(runtime, files, container_id, detach=False), files,
                       usePTY=(master, slave, os.ttyname(slave)))
            except BaseException:
                os.close(master)
                os.close(slave)
                raise
        self._proto = proto
        if self._want_stdin:
            proto.transport.registerProducer(InputFlow(self._terminal), True)
        elif not self.tty:
            proto.transport.closeStdin()
        self._terminal.set_output_producer(_OutputProducer(self))
        proto.ended.addCallback(self._ended)
        log.debug("exec in {id} started: {cmd} (tty={tty})", id=container_id, cmd=_describe(cmd), tty=self.tty)

    def _ended(self, result: ExecResult) -> None:
        self._terminal.set_output_producer(None)
        if result.runc_error and not result.killed:
            self.done.errback(Failure(RuntimeFailure(result.runc_error)))
        else:
            self.done.callback(result.exit_code)

    # -- output -----------------------------------------------------------------

    def _out(self, data: bytes) -> None:
        if self._want_stdout:
            self._terminal.stdout(data)

    def _err(self, data: bytes) -> None:
        if self._want_stderr:
            self._terminal.stderr(data)

    def _pause_output(self) -> None:
        if self._proto is not None and not self.done.called:
            self._proto.pause()

    def _resume_output(self) -> None:
        if self._proto is not None and not self.done.called:
            self._proto.resume()

    # -- ProcessIO ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the process rktlet spawned — runc (tty) or the reaper
        around it — None once it has been reaped."""
        transport = self._proto.transport if self._proto is not None else None
        return getattr(transport, "pid", None)

    def stdin(self, data: bytes) -> None:
        """Bytes for the command's stdin (dropped when stdin was not asked
        for, or after EOF)."""
        if self._proto is None or self._stdin_closed or self._proto.exited or not data:
            return
        self._proto.transport.write(data)

    def close_stdin(self) -> None:
        """EOF for the command. A tty has no EOF to send: the terminal stays
        open until the command or the client ends (CRI-O does the same)."""
        if self._stdin_closed or self._proto is None:
            return
        self._stdin_closed = True
        if not self.tty:
            # A writer whose registered producer is paused never closes:
            # unregister first (and let the client's input flow again).
            writer = getattr(self._proto.transport, "pipes", {}).get(0)
            if writer is not None and getattr(writer, "producer", None) is not None:
                writer.unregisterProducer()
                self._terminal.resume_input()
            self._proto.transport.closeStdin()

    def resize(self, width: int, height: int) -> None:
        """The client's window is *width* columns × *height* rows (tty only)."""
        if not self.tty or self._proto is None or self.done.called:
            return
        if width <= 0 or height <= 0 or width > 0xFFFF or height > 0xFFFF:
            return
        if self._window == (width, height):
            return
        fd = getattr(self._proto.transport, "fd", -1)
        if fd is None or fd < 0 or not getattr(self._proto.transport, "connected", False):
            return
        try:
            _set_window(fd, width, height)
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.EIO, errno.ENOTTY):
                raise
            return
        self._window = (width, height)

    def terminate(self) -> None:
        """The client went away: kill the command (its whole session) and
        runc, and reap them; :attr:`done` still fires."""
        if self._proto is None or self.done.called:
            return
        self._stdin_closed = True
        self._proto.kill()


def _set_window(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def start_exec(reactor: Any, runtime: OCIRuntime, container_id: str, bundle: str, cmd: Sequence[str],
               terminal: Any, tty: bool = False, stdin: bool = False, stdout: bool = True,
               stderr: bool = True) -> ExecSession:
    """Start *cmd* in the running container for a streaming session.

    :param terminal: the streaming side (:class:`rktlet.stream.session.Terminal`).
    :returns: the :class:`ExecSession`; when the command cannot be started,
        its ``done`` has already failed with the RktletError.
    """
    session = ExecSession(reactor, terminal, tty, stdin, stdout, stderr)
    try:
        session._start(runtime, container_id, bundle, cmd)
    except RktletError as e:
        session.done.errback(Failure(e))
    return session
