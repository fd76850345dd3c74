"""One exec's process: its files beside the bundle (process spec, pid file,
runc log), the runc or reaper command line, and the protocol that reads
its output, drains it after the command's end and kills it."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from rktlet.errors import FailedPrecondition, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.exec.kill import kill_session
from rktlet.oci.exec.reaper import parse_reaper_report, reaper_command
from rktlet.oci.runtime import DEFAULT_PATH, OCIRuntime
from rktlet.process import widen_pipe_reads

log = logger("rktlet.oci.exec")

#: After the command has ended, how long output is still read before our
#: pipe ends are closed (a background child may hold the others forever).
DRAIN_GRACE = 0.2

#: After the exec'd processes were killed, how long runc (or the reaper)
#: gets to exit before it is killed too; also how long a kill waits for
#: runc to write the command's pid.
KILL_GRACE = 2.0

#: How often a kill looks for the pid file runc has not written yet.
_PID_POLL = 0.02


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


def exit_code_of(reason: Failure) -> int:
    """The exit status of an ended process in shell terms: its exit code, or
    128 + N when signal N killed it."""
    value = reason.value
    code = getattr(value, "exitCode", None)
    if code is not None:
        return code
    sig = getattr(value, "signal", None)
    return 128 + sig if sig else 255


@dataclass(frozen=True)
class ExecFiles:
    """The process spec, pid file and runc log of one exec, beside the
    container's bundle (on the run dir's tmpfs; removed when the exec ends,
    and with the bundle at the latest)."""

    process: str
    pid: str
    log: str

    @classmethod
    def write(cls, bundle: str, process: dict[str, Any]) -> "ExecFiles":
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


def runc_argv(runtime: OCIRuntime, files: ExecFiles, container_id: str, detach: bool) -> list[str]:
    return [
        runtime.binary, *runtime.global_args,
        "--log", files.log, "--log-format", "json",
        "exec", *(["--detach"] if detach else []),
        "--process", files.process, "--pid-file", files.pid,
        container_id,
    ]  # fmt: skip


def _reaper_argv(runtime: OCIRuntime, files: ExecFiles, container_id: str) -> list[str]:
    return [*reaper_command(), files.pid, *runc_argv(runtime, files, container_id, True)]


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


class ExecProtocol(ProcessProtocol):
    """Our side of one exec — the reaper around ``runc exec --detach``
    (pipes), or a foreground ``runc exec`` (pty): output to callbacks, the
    drain after the command's end, killing, the files' removal.

    :ivar ended: fires with an :class:`ExecResult` once the process has been
        reaped, our pipe ends are closed and the exec's files are removed.
    """

    def __init__(self, reactor: Any, threadpool: ThreadPool, files: ExecFiles, on_stdout: Callable[[bytes], None],
                 on_stderr: Callable[[bytes], None], reaper: bool, drain_grace: float = DRAIN_GRACE) -> None:
        self.ended: Deferred[ExecResult] = Deferred()
        self._reactor = reactor
        self._threadpool = threadpool
        # Session kills under way (their /proc scans run in threads): the
        # exec has ended only once they are done.
        self._kills: list[Deferred[None]] = []
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
                self._kill_session(pid)
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
        kills, self._kills = self._kills, []
        DeferredList(kills).addCallback(lambda _: self.ended.callback(result))

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
            self._kill_session(pid)
            self._kill_timer = self._reactor.callLater(
                max(0.0, self._kill_deadline - self._reactor.seconds()), self._kill_process)
        elif self._reactor.seconds() < self._kill_deadline:
            # runc has not started the command (or written its pid) yet.
            self._kill_timer = self._reactor.callLater(_PID_POLL, self._kill_command)
        else:
            self._kill_process()

    def _kill_session(self, pid: int) -> None:
        self._kills.append(kill_session(self._reactor, self._threadpool, pid))

    def _kill_process(self) -> None:
        self._kill_timer = None
        self._process_killed = True
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def spawn(reactor: Any, proto: ExecProtocol, argv: list[str], files: ExecFiles, **kwargs: Any) -> None:
    try:
        transport = reactor.spawnProcess(proto, argv[0], argv, env=_env(), **kwargs)
    except OSError as e:
        files.remove()
        raise RuntimeFailure(f"exec: cannot run {argv[0]}: {os.strerror(e.errno or 0)}") from e
    widen_pipe_reads(transport)


def spawn_piped(reactor: Any, runtime: OCIRuntime, container_id: str, files: ExecFiles,
                on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> ExecProtocol:
    """The command with our pipes as its stdin, stdout and stderr, under the reaper."""
    proto = ExecProtocol(reactor, runtime.threadpool, files, on_stdout, on_stderr, reaper=True)
    spawn(reactor, proto, _reaper_argv(runtime, files, container_id), files,
          childFDs={0: "w", 1: "r", 2: "r", 3: "r"})
    return proto


def describe_cmd(cmd: Sequence[str]) -> str:
    """*cmd* for messages: one line, at most 200 characters, quoted."""
    text = " ".join(cmd)
    return repr(text if len(text) <= 200 else text[:200] + "…")


