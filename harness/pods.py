"""Helpers to make CRI pod sandbox requests in tests."""

from __future__ import annotations

import subprocess
import uuid
from typing import Callable

import grpc

from rktlet.cri.proto import pb


def pod_config(name: str = "web", namespace: str = "default", uid: str | None = None, attempt: int = 0,
               pid: int = pb.CONTAINER, network: int = pb.POD, ipc: int = pb.POD, **fields) -> pb.PodSandboxConfig:
    """A PodSandboxConfig like the kubelet sends (own PID namespace per
    container unless *pid* says otherwise)."""
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or uuid.uuid4().hex, attempt=attempt),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network, pid=pid, ipc=ipc)
            )
        ),
        **fields,
    )
    return config


def run_pod(daemon, config: pb.PodSandboxConfig, handler: str = "", timeout: float = 60) -> str:
    """RunPodSandbox; returns the sandbox id."""
    return daemon.runtime().RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=timeout
    ).pod_sandbox_id


def pod_status(daemon, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return daemon.runtime().PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose), timeout=10
    )


def remove_everything(runtime, timeout: float = 30.0,
                      pod_failed: Callable[[str], None] | None = None) -> list[str]:
    """Stop and remove every container, then every pod sandbox, through the
    CRI *runtime* stub (any runtime's); the errors, as text.  *pod_failed*
    is told the id of each sandbox that could not be removed."""
    errors: list[str] = []
    try:
        containers = runtime.ListContainers(pb.ListContainersRequest(), timeout=timeout).containers
        pods = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=timeout).items
    except grpc.RpcError as e:
        return [f"list: {e.code().name}: {e.details()}"]
    for c in containers:
        try:
            runtime.StopContainer(pb.StopContainerRequest(container_id=c.id, timeout=0), timeout=timeout)
            runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=timeout)
        except grpc.RpcError as e:
            errors.append(f"container {c.id[:13]}: {e.code().name}: {e.details()}")
    for pod in pods:
        try:
            runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)
        except grpc.RpcError as e:
            errors.append(f"pod sandbox {pod.id[:13]}: {e.code().name}: {e.details()}")
            if pod_failed is not None:
                pod_failed(pod.id)
    return errors


def remove_all_pods(daemon) -> None:
    """Stop and remove every container and sandbox of a test daemon (a
    finalizer's job; errors ignored)."""
    try:
        remove_everything(daemon.runtime())
    except Exception:
        pass


def in_netns(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run a command inside a pinned network namespace."""
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout)
