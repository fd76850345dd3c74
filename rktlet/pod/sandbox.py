"""A pod sandbox record: rkt's pod, the unit apps are added to.

States::

    CREATING ──(all steps done)──▶ READY ──(StopPodSandbox)──▶ NOTREADY ──(Remove)──▶ gone
        │                            │
        └─(step failed / crash)──▶ rolled back, record gone
                                     └─(namespaces lost, e.g. reboot)──▶ NOTREADY

``CREATING`` is persisted before the first step so that a daemon killed
mid-creation finds the half-made pod at start-up and undoes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rktlet.oci.userns import UserNamespace
from rktlet.pod import ids
from rktlet.pod.records import Record

CREATING = "creating"
READY = "ready"
NOTREADY = "notready"

# Namespace modes, as the CRI names them.
MODE_POD = "pod"
MODE_CONTAINER = "container"
MODE_NODE = "node"
MODE_TARGET = "target"


@dataclass
class Sandbox(Record):
    """Everything rktlet keeps about one pod sandbox (persisted as JSON).

    :ivar key: ``namespace/name/uid/attempt``: the kubelet's name for the pod
        attempt, reserved while the sandbox exists.
    :ivar fingerprint: digest of the config it was created from, to tell a
        retried RunPodSandbox from a conflicting one.
    :ivar steps: creation steps completed, in order (what rollback undoes).
    """

    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    fingerprint: str
    created_at: int
    handler: str
    state: str = CREATING
    hostname: str = ""
    log_directory: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    network_mode: str = MODE_POD
    pid_mode: str = MODE_CONTAINER
    ipc_mode: str = MODE_POD
    dir: str = ""
    namespaces: dict[str, str] = field(default_factory=dict)  # kind → pinned path
    shm: str = ""
    cgroup_parent: str = ""
    created_cgroups: list[str] = field(default_factory=list)
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    dns: dict[str, list[str]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    ips: list[str] = field(default_factory=list)
    network_name: str = ""
    network_attached: bool = False
    infra_pid: int = 0
    infra_start_time: int = 0
    steps: list[str] = field(default_factory=list)
    #: The pod's user namespace mappings (``UserNamespace.to_json``); empty:
    #: the host's.  Its pinned file is ``namespaces["user"]``.
    userns: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return ids.pod_key(self.namespace, self.name, self.uid, self.attempt)

    @property
    def netns(self) -> str:
        """The pinned network namespace path ('' for host network)."""
        return self.namespaces.get("net", "")

    @property
    def user_namespace(self) -> UserNamespace | None:
        """The pod's user namespace, or None (the host's)."""
        return UserNamespace.from_json(self.userns) if self.userns else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Sandbox":
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
