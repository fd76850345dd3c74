"""What CreateContainer asks for, in the OCI layer's terms.

The CRI boundary converts the protobuf ``ContainerConfig`` (and the pod's
state) into these frozen records; :func:`rktlet.oci.spec.build_spec` turns
them into an OCI runtime spec.  Nothing here knows about protobuf or runc.

Conventions:

* "unset" is the zero value (``0``, ``""``, ``()``), as in the CRI, except
  where ``None`` has to be told apart from an empty tuple: a ``None``
  ``masked_paths`` means "the runtime's defaults", an empty tuple means
  "none at all" and is honoured.
* Key/value maps are tuples of pairs so that the records stay hashable and
  keep the order the request gave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rktlet.oci.userns import IDMapping, UserNamespace

__all__ = [
    "Mount",
    "Device",
    "Resources",
    "Profile",
    "Security",
    "ContainerConfig",
    "ImageDefaults",
    "PodContext",
    "ResolvedUser",
    "PROPAGATIONS",
    "PROFILE_KINDS",
]

#: Mount propagation modes a :class:`Mount` may ask for (the CRI's
#: PROPAGATION_PRIVATE, PROPAGATION_HOST_TO_CONTAINER, PROPAGATION_BIDIRECTIONAL).
PROPAGATIONS = ("private", "rslave", "rshared")

#: The kinds of :class:`Profile` (the CRI's SecurityProfile.ProfileType).
PROFILE_KINDS = ("runtime_default", "unconfined", "localhost")


@dataclass(frozen=True)
class Mount:
    """A bind mount of *host_path* at *container_path*.

    :ivar propagation: ``"private"``, ``"rslave"`` or ``"rshared"``.
    :ivar recursive_read_only: read-only all the way down: mounts under
        *host_path* too (runc's ``rro``; needs *readonly* and private
        propagation).
    :ivar image: an image volume (the CRI's ``Mount.image``): the image
        (id or reference) whose file system is mounted, read-only; the pod
        engine mounts it and sets *host_path* to it before the spec is built.
    :ivar image_sub_path: a directory of that image to mount instead of its
        root (checked: relative, not above the root).
    :ivar user_specified_image: the image as the pod's author wrote it.
    :ivar uid_mappings: with *gid_mappings*, an idmapped mount: a file
        owned by host id H appears owned by the container id these ranges
        map onto H (what the kubelet sends for pods with their own user
        namespace: the pod's mappings).
    """

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "private"
    recursive_read_only: bool = False
    image: str = ""
    image_sub_path: str = ""
    user_specified_image: str = ""
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()


@dataclass(frozen=True)
class Device:
    """A host device node made available at *container_path*.

    :ivar permissions: the cgroup access letters, a non-empty subset of ``rwm``.
    """

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class Resources:
    """The CRI ``LinuxContainerResources``; 0 / "" / () mean "not set".

    :ivar hugepage_limits: (page size as the CRI spells it, e.g. ``"2MB"``, limit in bytes).
    :ivar unified: cgroup v2 file name → value.
    """

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    memory_swap_limit: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[tuple[str, int], ...] = ()
    unified: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Profile:
    """A seccomp or AppArmor profile choice.

    :ivar kind: ``"runtime_default"``, ``"unconfined"`` or ``"localhost"``.
    :ivar localhost_ref: for ``"localhost"``: the seccomp profile's absolute
        path, or the name of a loaded AppArmor profile.
    """

    kind: str
    localhost_ref: str = ""


@dataclass(frozen=True)
class Security:
    """The CRI ``LinuxContainerSecurityContext``.

    ``masked_paths`` / ``readonly_paths``: ``None`` means the runtime's
    defaults; an empty tuple means none (honoured).  ``seccomp`` /
    ``apparmor``: ``None`` means not set, i.e. unconfined.
    """

    privileged: bool = False
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    no_new_privs: bool = False
    readonly_rootfs: bool = False
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    seccomp: Profile | None = None
    apparmor: Profile | None = None
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    #: ``"merge"`` (the image's /etc/group memberships of the user are added
    #: to *supplemental_groups*) or ``"strict"`` (only those given).
    supplemental_groups_policy: str = "merge"


@dataclass(frozen=True)
class ContainerConfig:
    """A validated CreateContainer request (the Linux parts rktlet uses)."""

    name: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    resources: Resources = Resources()
    security: Security = Security()
    sysctls: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    #: The user namespace the request names: "" (none), "node" or "pod"
    #: (the pod's: a container always joins its pod's user namespace).
    userns_mode: str = ""


@dataclass(frozen=True)
class ImageDefaults:
    """What the image config contributes (``Entrypoint``, ``Cmd``, ``Env`` as
    ``KEY=value`` strings, ``WorkingDir``, ``User``)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True)
class PodContext:
    """The pod a container joins.

    :ivar namespaces: kind (``"net"``, ``"ipc"``, ``"uts"``) → the pinned
        namespace file the container joins.
    :ivar host: kinds the pod shares with the host (``"net"``, ``"ipc"``,
        ``"pid"``; ``"uts"`` too, though a host-network pod implies it).
    :ivar pid_mode: ``"pod"`` (join ``/proc/<infra_pid>/ns/pid``),
        ``"container"`` (a new PID namespace) or ``"node"`` (the host's).
    :ivar infra_pid: the pod's infra process, for ``pid_mode == "pod"``.
    :ivar hostname: the pod's host name.
    :ivar files: container path (``/etc/resolv.conf``, ``/etc/hosts``,
        ``/etc/hostname``) → the pod's file to bind there.
    :ivar shm: the pod's /dev/shm directory; ``""`` means the host's
        /dev/shm when the pod shares the host's IPC namespace.
    :ivar cgroup_parent: the pod's cgroup (cgroupfs path).
    :ivar sysctls: the pod's sysctls (the container's own are added to them).
    :ivar userns: the pod's user namespace (its file is
        ``namespaces["user"]``), or None: the host's.
    """

    namespaces: Mapping[str, str]
    host: frozenset[str]
    pid_mode: str
    infra_pid: int
    hostname: str
    files: Mapping[str, str]
    shm: str
    cgroup_parent: str
    sysctls: Mapping[str, str] = field(default_factory=dict)
    userns: UserNamespace | None = None


@dataclass(frozen=True)
class ResolvedUser:
    """The identity the container's process runs as (see
    :func:`rktlet.oci.users.resolve_user`)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    username: str = ""
    home: str = ""
