"""Helpers to make containers in tests and read their CRI logs."""

from __future__ import annotations

import time

from rktlet.cri.proto import pb


def container_config(name: str, image: str, command=(), args=(), log_path: str | None = None, **fields) -> pb.ContainerConfig:
    """A ContainerConfig with the given command; the log goes to ``<name>.log``."""
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        log_path=log_path if log_path is not None else f"{name}.log",
        **fields,
    )


def create(daemon, pod_id: str, pod: pb.PodSandboxConfig, config: pb.ContainerConfig) -> str:
    return daemon.runtime().CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=60
    ).container_id


def start(daemon, container_id: str) -> None:
    daemon.runtime().StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)


def status(daemon, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
    return daemon.runtime().ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id, verbose=verbose), timeout=10
    )


def wait_exited(daemon, container_id: str, timeout: float = 20) -> pb.ContainerStatus:
    """Poll ContainerStatus until the container has exited."""
    deadline = time.monotonic() + timeout
    while True:
        s = status(daemon, container_id).status
        if s.state == pb.CONTAINER_EXITED:
            return s
        assert time.monotonic() < deadline, f"container {container_id} still {pb.ContainerState.Name(s.state)}"
        time.sleep(0.05)


def run_to_exit(daemon, pod_id, pod, config, timeout: float = 20) -> pb.ContainerStatus:
    """Create, start and wait for a container; returns its final status."""
    cid = create(daemon, pod_id, pod, config)
    start(daemon, cid)
    return wait_exited(daemon, cid, timeout)


def read_log(path: str) -> list[tuple[str, str, str, bytes]]:
    """The CRI log records: (timestamp, stream, tag, content)."""
    records = []
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            if not line:
                continue
            ts, stream, tag, content = line.split(b" ", 3) if line.count(b" ") >= 3 else (*line.split(b" ", 2), b"")
            records.append((ts.decode(), stream.decode(), tag.decode(), content))
    return records


def log_text(path: str, stream: str = "stdout") -> bytes:
    """The stream's content reassembled from the log's P/F records."""
    out = b""
    for _, s, tag, content in read_log(path):
        if s != stream:
            continue
        out += content + (b"\n" if tag == "F" else b"")
    return out
