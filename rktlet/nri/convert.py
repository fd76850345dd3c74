"""Pod and container records → NRI messages.

rktlet.nri sits beside the drivers and imports nothing of the pod engine:
records are read by attribute (the engine's ``Sandbox`` and ``Container``
have these fields).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from rktlet.nri.api import nri_pb2


class PodRecord(Protocol):
    """What NRI reads of a pod (the engine's ``Sandbox`` snapshot)."""

    id: str
    name: str
    uid: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    handler: str
    infra_pid: int
    ips: Sequence[str]
    cgroup_parent: str
    namespaces: Mapping[str, str]


class ContainerRecord(Protocol):
    """What NRI reads of a container (the engine's ``Container`` snapshot)."""

    id: str
    sandbox_id: str
    name: str
    state: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    container_pid: int
    created_at: int
    started_at: int
    finished_at: int
    exit_code: int
    reason: str
    message: str
    image: str
    image_name: str
    image_ref: str
    image_digest_ref: str

# rktlet's pinned namespace kinds → OCI namespace types.
_NAMESPACE_TYPES = {"net": "network", "ipc": "ipc", "uts": "uts", "pid": "pid"}

_STATES = {
    "created": nri_pb2.CONTAINER_CREATED,
    "running": nri_pb2.CONTAINER_RUNNING,
    "exited": nri_pb2.CONTAINER_STOPPED,
}


def pod_sandbox(sb: PodRecord) -> nri_pb2.PodSandbox:
    """The NRI ``PodSandbox`` of a sandbox record."""
    pod = nri_pb2.PodSandbox(
        id=sb.id, name=sb.name, uid=sb.uid, namespace=sb.namespace,
        labels=dict(sb.labels), annotations=dict(sb.annotations),
        runtime_handler=sb.handler, pid=sb.infra_pid or 0, ips=list(sb.ips),
    )
    pod.linux.cgroup_parent = sb.cgroup_parent
    for kind, path in sorted(sb.namespaces.items()):
        pod.linux.namespaces.add(type=_NAMESPACE_TYPES.get(kind, kind), path=path)
    return pod


def container(c: ContainerRecord, spec: dict[str, Any] | None = None) -> nri_pb2.Container:
    """The NRI ``Container`` of a container record; *spec* (its OCI runtime
    spec, where the caller has it in hand) adds args, env and mounts."""
    out = nri_pb2.Container(
        id=c.id, pod_sandbox_id=c.sandbox_id, name=c.name, state=_STATES.get(c.state, nri_pb2.CONTAINER_UNKNOWN),
        labels=dict(c.labels), annotations=dict(c.annotations), pid=c.container_pid or 0,
        created_at=c.created_at, started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
        status_reason=c.reason, status_message=c.message,
    )
    out.image.name = c.image_name or c.image
    out.image.digest = c.image_digest_ref.partition("@")[2]
    out.image.config_digest = c.image_ref if c.image_ref.startswith("sha256:") else ""
    if spec:
        process = spec.get("process", {})
        out.args.extend(process.get("args", []))
        out.env.extend(process.get("env", []))
        for m in spec.get("mounts", []):
            out.mounts.add(destination=m.get("destination", ""), type=m.get("type", ""),
                           source=m.get("source", ""), options=m.get("options", []))
    return out
