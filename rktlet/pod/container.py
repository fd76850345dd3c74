"""A container record: rkt's app inside a pod.

States (as the CRI names them)::

    CREATED ──StartContainer──▶ RUNNING ──(process ends)──▶ EXITED ──Remove──▶ gone
       │                                                       ▲
       └──────────(start fails: reason StartError, 128)────────┘

The record is persisted at each transition, before the RPC that caused it
returns; the exit of a container is learnt from conmon's exit file, also when
it happened while the daemon was down.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rktlet.pod.records import Record

CREATED = "created"
RUNNING = "running"
EXITED = "exited"


@dataclass
class Container(Record):
    """Everything rktlet keeps about one container (persisted as JSON)."""

    id: str
    sandbox_id: str
    name: str
    attempt: int
    fingerprint: str
    created_at: int
    image: str  # as the request named it
    image_ref: str  # the image id
    image_name: str = ""  # a repo tag or digest of that image, for status
    image_digest_ref: str = ""  # a repo digest of that image (name@sha256:…), if it has one
    user_specified_image: str = ""  # the image as the pod's author wrote it (the kubelet sends it)
    state: str = CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    mounts: list[dict[str, Any]] = field(default_factory=list)
    bundle: str = ""
    layer_dir: str = ""  # upper + work dirs of the writable layer
    chain_ids: list[str] = field(default_factory=list)
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    stop_signal: str = "SIGTERM"
    conmon_pid: int = 0
    container_pid: int = 0
    resources: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``pod/name/attempt``: reserved while the container exists."""
        return f"{self.sandbox_id}/{self.name}/{self.attempt}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Container":
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
