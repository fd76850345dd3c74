"""What RunPodSandbox asks for, in the engine's terms (the CRI boundary
converts the protobuf request into this; the engine never sees protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rktlet.oci.userns import UserNamespace
from rktlet.pod import ids
from rktlet.pod.sandbox import MODE_CONTAINER, MODE_POD


@dataclass(frozen=True)
class PortSpec:
    """One port mapping: a host port (0: none) to a pod port."""

    container_port: int
    host_port: int = 0
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxSpec:
    """A validated RunPodSandbox request.

    :ivar fingerprint: identifies the exact config (and handler), so that a
        kubelet retry can be told from a conflicting request.
    """

    name: str
    namespace: str
    uid: str
    attempt: int
    fingerprint: str
    handler: str = ""
    hostname: str = ""
    log_directory: str = ""
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    port_mappings: tuple[PortSpec, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    network_mode: str = MODE_POD
    pid_mode: str = MODE_CONTAINER
    ipc_mode: str = MODE_POD
    shm_size: int = 64 * 1024 * 1024
    #: The pod's own user namespace (``hostUsers: false``), or None: the host's.
    userns: UserNamespace | None = None

    @property
    def key(self) -> str:
        """The pod attempt's reserved name (as in :class:`Sandbox`)."""
        return ids.pod_key(self.namespace, self.name, self.uid, self.attempt)
