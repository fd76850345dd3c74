"""The infra process of a pod that shares one PID namespace: ``catatonit -P``
as its PID 1, in the pod's network, IPC and UTS namespaces (and its user
namespace, which then owns the new PID namespace).

Started as ``setsid nsenter --net=… --ipc=… --uts=… unshare --pid --fork
--kill-child catatonit -P``: ``setsid`` keeps it out of the daemon's process
group (a Ctrl-C or a daemon restart never reaches it), ``unshare --fork``
makes catatonit PID 1 of a new PID namespace, which containers later join
through ``/proc/<pid>/ns/pid``. Pods without a shared PID namespace have no
infra process at all.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from rktlet import logs
from rktlet.errors import RuntimeFailure

log = logs.logger("rktlet.oci.infra")

CATATONIT = "catatonit"
# nsenter joins the user namespace first (then it is root in there, with the
# capabilities to join the others it owns and to make the PID namespace).
_NSENTER_FLAGS = {"user": "--user", "net": "--net", "ipc": "--ipc", "uts": "--uts"}


@dataclass(frozen=True)
class InfraProcess:
    """A running infra process: catatonit's host pid and its start time
    (field 22 of /proc/PID/stat), which together identify it across pid reuse."""

    pid: int
    start_time: int


def start_time(pid: int) -> int | None:
    """The start time of *pid* in clock ticks, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def alive(infra: InfraProcess) -> bool:
    """Whether that very process still runs."""
    return start_time(infra.pid) == infra.start_time


class _Launcher(ProcessProtocol):
    def __init__(self) -> None:
        self.stderr = b""
        self.ended: Deferred = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data[-4096:]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def _child_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


async def start(reactor: Any, namespaces: Mapping[str, str], poll: float = 0.002, timeout: float = 5.0) -> InfraProcess:
    """Start the infra process in the pinned *namespaces* (kind → path).

    :raises RuntimeFailure: with the tools' own message if it does not come up.
    """
    argv = ["setsid", "nsenter"]
    argv += [f"{_NSENTER_FLAGS[k]}={p}" for k, p in sorted(namespaces.items()) if k in _NSENTER_FLAGS]
    argv += ["unshare", "--pid", "--fork", "--kill-child", CATATONIT, "-P"]
    protocol = _Launcher()
    transport = reactor.spawnProcess(protocol, argv[0], argv, env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
    waited = 0.0
    while waited < timeout:
        if protocol.ended.called:
            raise RuntimeFailure(f"infra process exited at start: {protocol.stderr.decode(errors='replace').strip()}")
        child = _child_of(transport.pid)
        if child is not None:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() == CATATONIT:
                    ticks = start_time(child)
                    if ticks is not None:
                        return InfraProcess(child, ticks)
        d: Deferred = Deferred()
        reactor.callLater(poll, d.callback, None)
        await d
        waited += poll
        poll = min(poll * 2, 0.05)
    transport.signalProcess("KILL")
    raise RuntimeFailure(f"infra process did not start within {timeout}s: {protocol.stderr.decode(errors='replace').strip()}")


async def stop(reactor: Any, infra: InfraProcess, timeout: float = 5.0) -> None:
    """Kill the infra process (and so its PID namespace); idempotent."""
    if not alive(infra):
        return
    try:
        os.kill(infra.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    waited = 0.0
    while alive(infra) and waited < timeout:
        d: Deferred = Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
        waited += 0.01
    if alive(infra):
        raise RuntimeFailure(f"infra process {infra.pid} did not exit after SIGKILL")
