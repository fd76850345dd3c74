"""StreamingBackend's checks, with fake managers."""

from __future__ import annotations

from typing import Any

import pytest

from rktlet.errors import FailedPrecondition, InvalidArgument, NotFound
from rktlet.pod.sandbox import MODE_NODE, MODE_POD, NOTREADY, READY, Sandbox
from rktlet.pod.streaming import StreamingBackend
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest

RUNNING_ID = "a" * 64
EXITED_ID = "b" * 64


class Containers:
    def running(self, container_id: str) -> Any:
        if RUNNING_ID.startswith(container_id):
            return object()
        if EXITED_ID.startswith(container_id):
            raise FailedPrecondition(f"container {EXITED_ID} is not running (state exited)")
        raise NotFound(f"container {container_id!r} not found")


class Sandboxes:
    def __init__(self, *sandboxes: Sandbox) -> None:
        self.sandboxes = {sb.id: sb for sb in sandboxes}

    def get(self, sandbox_id: str) -> Sandbox:
        if sandbox_id not in self.sandboxes:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return self.sandboxes[sandbox_id]


def sandbox(sandbox_id: str, state: str = READY, mode: str = MODE_POD, netns: str = "/run/x/netns") -> Sandbox:
    return Sandbox(id=sandbox_id, name="p", namespace="n", uid="u", attempt=0, fingerprint="", created_at=0,
                   handler="runc", state=state, network_mode=mode, namespaces={"net": netns} if netns else {})


@pytest.fixture
def backend():
    pods = Sandboxes(sandbox("ready"), sandbox("stopped", state=NOTREADY), sandbox("host", mode=MODE_NODE, netns=""),
                     sandbox("broken", netns=""))
    return StreamingBackend(reactor=None, threadpool=None, containers=Containers(), sandboxes=pods)


def test_exec_and_attach_targets(backend):
    backend.validate(ExecRequest(container_id=RUNNING_ID[:8], cmd=("ls",)))
    backend.validate(AttachRequest(container_id=RUNNING_ID, stdin=True, tty=True, stdout=True, stderr=False))
    with pytest.raises(NotFound):
        backend.validate(ExecRequest(container_id="c" * 64, cmd=("ls",)))
    with pytest.raises(FailedPrecondition) as e:
        backend.validate(AttachRequest(container_id=EXITED_ID))
    assert EXITED_ID in str(e.value)
    with pytest.raises(InvalidArgument):
        backend.validate(AttachRequest(container_id=""))


@pytest.mark.parametrize("request_, field", [
    (ExecRequest(container_id=RUNNING_ID, cmd=()), "cmd"),
    (ExecRequest(container_id=RUNNING_ID, cmd=("sh",), tty=True, stderr=True), "stderr"),
    (AttachRequest(container_id=RUNNING_ID, stdin=False, stdout=False, stderr=False), "stdin"),
])
def test_bad_stream_requests(backend, request_, field):
    with pytest.raises(InvalidArgument) as e:
        backend.validate(request_)
    assert field in str(e.value)


def test_port_forward_targets(backend):
    backend.validate(PortForwardRequest(sandbox_id="ready", ports=(80, 8080)))
    backend.validate(PortForwardRequest(sandbox_id="host"))  # host network: no netns needed
    with pytest.raises(NotFound):
        backend.validate(PortForwardRequest(sandbox_id="gone"))
    with pytest.raises(FailedPrecondition) as e:
        backend.validate(PortForwardRequest(sandbox_id="stopped"))
    assert "stopped" in str(e.value) and "not ready" in str(e.value)
    with pytest.raises(FailedPrecondition) as e:
        backend.validate(PortForwardRequest(sandbox_id="broken"))
    assert "network namespace" in str(e.value)
    for port in (0, 65536, -1, True):
        with pytest.raises(InvalidArgument):
            backend.validate(PortForwardRequest(sandbox_id="ready", ports=(port,)))


def test_port_forward_failures_come_as_failed_deferreds(backend):
    failures = []
    backend.port_forward("stopped", 80, None).addErrback(failures.append)
    backend.port_forward("ready", 0, None).addErrback(failures.append)
    assert [f.type for f in failures] == [FailedPrecondition, InvalidArgument]


def test_unknown_request(backend):
    with pytest.raises(InvalidArgument):
        backend.validate(object())
