"""ExecSync: run a command to its end and return its capped output
(probes, ``crictl exec -s``)."""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import CancelledError, Deferred

from rktlet.errors import DeadlineExceeded, InvalidArgument, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.exec.process import ExecFiles, ExecResult, describe_cmd, spawn_piped
from rktlet.oci.exec.spec import exec_process_spec, load_container_process
from rktlet.oci.runtime import OCIRuntime

log = logger("rktlet.oci.exec")

#: ExecSync keeps at most this much of each of stdout and stderr (CRI-O and
#: containerd cap at 16 MiB since CVE-2022-1708).
EXEC_SYNC_OUTPUT_LIMIT = 16 << 20

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
    files = ExecFiles.write(bundle, process)
    out, err = _Capped(limit), _Capped(limit)
    proto = spawn_piped(reactor, runtime, container_id, files, out.add, err.add)
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
        log.info("exec in {id} cancelled by its caller: {cmd} killed", id=container_id, cmd=describe_cmd(cmd))
        raise
    finally:
        if timer is not None and timer.active():
            timer.cancel()
    if timed_out:
        raise DeadlineExceeded(f"command {describe_cmd(cmd)} timed out after {timeout:g}s")
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

