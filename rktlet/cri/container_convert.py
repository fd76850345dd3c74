"""Container messages ⇄ the engine's terms: validation and conversion of
CreateContainer requests, records into CRI container status messages."""

from __future__ import annotations

import hashlib
import os
import re

from rktlet.cri.proto import known, pb
from rktlet.errors import InvalidArgument
from rktlet.cri.sandbox_convert import mappings as id_mappings, user_namespace
from rktlet.oci import image_volumes
from rktlet.oci.container_config import ContainerConfig, Device, Mount, Profile, Resources, Security
from rktlet.oci.userns import MAX_ID
from rktlet.pod.container import CREATED, EXITED, RUNNING, Container

STATES = {CREATED: pb.CONTAINER_CREATED, RUNNING: pb.CONTAINER_RUNNING, EXITED: pb.CONTAINER_EXITED}
STATE_NAMES = {v: k for k, v in STATES.items()}
_PROPAGATION = {pb.PROPAGATION_PRIVATE: "private", pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                pb.PROPAGATION_BIDIRECTIONAL: "rshared"}
_PROPAGATION_ENUMS = {v: k for k, v in _PROPAGATION.items()}
_GROUPS_POLICIES = {pb.SupplementalGroupsPolicy.Merge: "merge", pb.SupplementalGroupsPolicy.Strict: "strict"}
_PROFILE_KINDS = {pb.SecurityProfile.RuntimeDefault: "runtime_default", pb.SecurityProfile.Unconfined: "unconfined",
                  pb.SecurityProfile.Localhost: "localhost"}


def _profile(message: pb.SecurityProfile, present: bool, field: str) -> Profile | None:
    if not present:
        return None
    kind = known(_PROFILE_KINDS, message.profile_type, f"{field}.profile_type", pb.SecurityProfile.ProfileType)
    if kind == "localhost" and not message.localhost_ref:
        raise InvalidArgument(f"{field}.localhost_ref is required for a Localhost profile")
    return Profile(kind, message.localhost_ref)


_CPU_LIST = re.compile(r"^\s*\d+(-\d+)?(,\d+(-\d+)?)*\s*$")


def resources(r: pb.LinuxContainerResources, field: str = "resources") -> Resources:
    """CRI resources as the spec builder takes them.

    :raises InvalidArgument: a value no kernel takes (a CFS period outside
        1 ms – 1 s, a CPU or memory node list that is not a list).
    """
    if r.cpu_period and not 1000 <= r.cpu_period <= 1_000_000:
        raise InvalidArgument(f"{field}.cpu_period: {r.cpu_period} is not between 1000 and 1000000 (µs)")
    if 0 < r.cpu_quota < 1000:
        raise InvalidArgument(f"{field}.cpu_quota: {r.cpu_quota} is below the kernel's minimum of 1000 (µs)")
    if r.cpu_shares and not 2 <= r.cpu_shares <= 262144:
        raise InvalidArgument(f"{field}.cpu_shares: {r.cpu_shares} is not between 2 and 262144")
    if 0 < r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes: {r.memory_swap_limit_in_bytes} is below "
                              f"memory_limit_in_bytes {r.memory_limit_in_bytes} (the limit covers memory and swap)")
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, name)
        if value and not _CPU_LIST.match(value):
            raise InvalidArgument(f"{field}.{name}: {value!r} is not a list like 0-3,5")
    return Resources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit=r.memory_limit_in_bytes, memory_swap_limit=r.memory_swap_limit_in_bytes,
        oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple((h.page_size, h.limit) for h in r.hugepage_limits),
        unified=tuple(sorted(r.unified.items())),
    )


def _image_volume(m: pb.Mount, field: str) -> tuple[str, str]:
    """An image volume's image and sub path, checked as containerd does
    (``("", "")`` for a host path mount): no host path, read-only, a sub
    path relative to the image's root."""
    if not (m.HasField("image") and (m.image.image or not m.host_path)):
        if m.image_sub_path:
            raise InvalidArgument(f"{field}.image_sub_path is for image volumes: {field}.image is not set")
        return "", ""
    if not m.image.image:
        raise InvalidArgument(f"{field}.image.image is required (or a host_path instead of an image)")
    if m.host_path:
        raise InvalidArgument(f"{field}.host_path must be empty for an image volume ({field}.image is "
                              f"{m.image.image!r})")
    if not m.readonly:
        # The KEP: image volumes are read-only; containerd refuses a request
        # that says otherwise rather than mounting it read-only silently.
        raise InvalidArgument(f"{field}.readonly must be true: image volume {m.image.image!r} is read-only")
    return m.image.image, image_volumes.check_sub_path(m.image_sub_path, f"{field}.image_sub_path")


def container_config(request: pb.CreateContainerRequest) -> tuple[ContainerConfig, str]:
    """Validate a CreateContainer request; returns the config and the log
    path, relative to the pod's log directory ('' for none)."""
    if not request.pod_sandbox_id:
        raise InvalidArgument("pod_sandbox_id is required")
    if not request.HasField("config"):
        raise InvalidArgument("config is required")
    c = request.config
    if not c.metadata.name:
        raise InvalidArgument("config.metadata.name is required")
    if not c.image.image:
        raise InvalidArgument("config.image.image is required")
    # Relative to the pod's log directory as RunPodSandbox recorded it (the
    # engine joins them): never the request's sandbox_config, which a client
    # may fill with any directory.
    log_path = c.log_path
    if log_path and (os.path.isabs(log_path) or ".." in log_path.split("/") or "\0" in log_path):
        raise InvalidArgument(f"config.log_path {log_path!r} must be relative to the pod's log directory, without '..'")
    mounts = []
    for i, m in enumerate(c.mounts):
        if not m.container_path or not os.path.isabs(m.container_path):
            raise InvalidArgument(f"config.mounts[{i}].container_path {m.container_path!r} must be an absolute path")
        image, sub_path = _image_volume(m, f"config.mounts[{i}]")
        propagation = known(_PROPAGATION, m.propagation, f"config.mounts[{i}].propagation", pb.MountPropagation)
        if m.recursive_read_only and not m.readonly:
            raise InvalidArgument(f"config.mounts[{i}].recursive_read_only needs readonly: true")
        if m.recursive_read_only and propagation != "private":
            raise InvalidArgument(f"config.mounts[{i}].recursive_read_only needs PROPAGATION_PRIVATE, "
                                  f"not {pb.MountPropagation.Name(m.propagation)}")
        uids, gids = id_mappings(m.uidMappings), id_mappings(m.gidMappings)
        if bool(uids) != bool(gids):
            raise InvalidArgument(f"config.mounts[{i}]: an idmapped mount needs both uidMappings and gidMappings")
        for name, ranges in (("uidMappings", uids), ("gidMappings", gids)):
            for j, r in enumerate(ranges):
                if r.length < 1 or max(r.container_id, r.host_id) + r.length - 1 > MAX_ID:
                    raise InvalidArgument(f"config.mounts[{i}].{name}[{j}]: {r.container_id} {r.host_id} {r.length} "
                                          "is not a range of valid ids")
        if image:
            # An image volume is an overlay, which this kernel cannot
            # idmap: its files (root's) appear as the overflow id inside a
            # user-namespaced pod, readable as the image made them.
            uids, gids = (), ()
        mounts.append(Mount(m.container_path, m.host_path, m.readonly, propagation, m.recursive_read_only,
                            image=image, image_sub_path=sub_path,
                            user_specified_image=m.image.user_specified_image if image else "",
                            uid_mappings=uids, gid_mappings=gids))
    devices = tuple(Device(d.container_path, d.host_path, d.permissions or "rwm") for d in c.devices)
    sc = c.linux.security_context
    security = Security(
        privileged=sc.privileged,
        capabilities_add=tuple(sc.capabilities.add_capabilities),
        capabilities_drop=tuple(sc.capabilities.drop_capabilities),
        no_new_privs=sc.no_new_privs,
        readonly_rootfs=sc.readonly_rootfs,
        # The kubelet sends the defaults or [] (procMount: Unmasked); an
        # unset list here means "the runtime's defaults".
        masked_paths=tuple(sc.masked_paths) if sc.masked_paths else None,
        readonly_paths=tuple(sc.readonly_paths) if sc.readonly_paths else None,
        seccomp=_profile(sc.seccomp, sc.HasField("seccomp"), "config.linux.security_context.seccomp"),
        apparmor=_profile(sc.apparmor, sc.HasField("apparmor"), "config.linux.security_context.apparmor"),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_username=sc.run_as_username,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=known(_GROUPS_POLICIES, sc.supplemental_groups_policy,
                                         "config.linux.security_context.supplemental_groups_policy",
                                         pb.SupplementalGroupsPolicy),
    )
    where = "config.linux.security_context.namespace_options.userns_options"
    ns = sc.namespace_options
    userns_mode = "" if not ns.HasField("userns_options") else "pod" if user_namespace(ns, where) else "node"
    config = ContainerConfig(
        name=c.metadata.name,
        command=tuple(c.command),
        args=tuple(c.args),
        working_dir=c.working_dir,
        envs=tuple((kv.key, kv.value.decode("utf-8", "replace") if isinstance(kv.value, bytes) else kv.value) for kv in c.envs),
        mounts=tuple(mounts),
        devices=devices,
        tty=c.tty,
        stdin=c.stdin,
        stdin_once=c.stdin_once,
        resources=resources(c.linux.resources, "config.linux.resources"),
        security=security,
        annotations=tuple(sorted(c.annotations.items())),
        userns_mode=userns_mode,
    )
    return config, log_path


def stop_signal(c: pb.ContainerConfig) -> str:
    """The config's stop signal name ('' for the image's / the default)."""
    if c.stop_signal == pb.SIGNAL_RUNTIME_DEFAULT:
        return ""
    if c.stop_signal not in pb.Signal.values():
        raise InvalidArgument(f"config.stop_signal: unknown signal {c.stop_signal}")
    return pb.Signal.Name(c.stop_signal).removeprefix("SIGNAL_")


def fingerprint(request: pb.CreateContainerRequest) -> str:
    """Identifies the exact config, to tell a retry from a conflict."""
    return hashlib.sha256(request.config.SerializeToString(deterministic=True)).hexdigest()


def _metadata(c: Container) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=c.name, attempt=c.attempt)


def _image_ref(c: Container) -> str:
    """The digest-qualified name of the image (``repo@sha256:…``) when it
    has one, else its id — as containerd reports it."""
    return c.image_digest_ref or (c.image_name if "@" in c.image_name else c.image_ref)


def _image_spec(c: Container) -> pb.ImageSpec:
    """The image as a person reads it: the kubelet creates containers from
    image ids and shows what this returns in the pod status, so it is the
    image's first tag (as containerd does), else what the request named;
    with the image the pod's author wrote kept as the kubelet sent it."""
    tagged = c.image_name if c.image_name and "@" not in c.image_name and c.image_name != c.image_ref else ""
    return pb.ImageSpec(image=tagged or c.image, user_specified_image=c.user_specified_image)


def container_summary(c: Container) -> pb.Container:
    """A record as ListContainers reports it."""
    return pb.Container(
        id=c.id, pod_sandbox_id=c.sandbox_id, metadata=_metadata(c), image=_image_spec(c),
        image_ref=_image_ref(c), image_id=c.image_ref, state=STATES[c.state], created_at=c.created_at,
        labels=c.labels, annotations=c.annotations,
    )


class SummaryCache:
    """ListContainers' message for each container snapshot, made once per
    snapshot (rktlet.pod.records: a snapshot is a version of its record).

    The kubelet lists every container every second; building 200 messages
    with their label and annotation maps is most of such a call's cost.
    Used from gRPC worker threads at once without a lock: entries are only
    replaced whole, never iterated, and a cached message is never changed
    (responses copy it); two threads missing at once both build it.
    """

    #: Entries kept at most between complete lists (which drop removed
    #: containers' entries).
    LIMIT = 20_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Container, pb.Container]] = {}

    def summaries(self, containers: list[Container], complete: bool) -> list[pb.Container]:
        """The messages of the snapshots *containers*; *complete*: they are
        all there are (an unfiltered list), so entries of any other are dropped."""
        entries = self._entries
        if len(entries) > self.LIMIT:
            entries = self._entries = {}
        kept: dict[str, tuple[Container, pb.Container]] = {}
        out = []
        for c in containers:
            entry = entries.get(c.id)
            if entry is None or entry[0] is not c:
                entry = entries[c.id] = (c, container_summary(c))
            kept[c.id] = entry
            out.append(entry[1])
        if complete:
            self._entries = kept
        return out


def _mount_status(m: dict) -> pb.Mount:
    """A recorded mount as ContainerStatus reports it. An image volume
    names its image by id, in ``image.image`` (the kubelet's image garbage
    collection keeps the images it finds there) and ``image.image_ref``
    (the image's digest, as PullImage answered it), and its mount point as
    ``host_path``."""
    out = pb.Mount(container_path=m["container_path"], host_path=m["host_path"], readonly=m["readonly"],
                   propagation=_PROPAGATION_ENUMS.get(m["propagation"], pb.PROPAGATION_PRIVATE),
                   recursive_read_only=bool(m.get("recursive_read_only")),
                   uidMappings=[pb.IDMapping(**r) for r in m.get("uid_mappings", ())],
                   gidMappings=[pb.IDMapping(**r) for r in m.get("gid_mappings", ())])
    if m.get("image_ref"):
        out.image.image = m["image_ref"]
        out.image.image_ref = m["image_ref"]
        out.image.user_specified_image = m.get("user_specified_image", "")
        out.image_sub_path = m.get("image_sub_path", "")
    return out


def container_status(c: Container) -> pb.ContainerStatus:
    """A record as ContainerStatus reports it (labels and annotations
    exactly as given: the kubelet reads its own keys back)."""
    status = pb.ContainerStatus(
        id=c.id, metadata=_metadata(c), state=STATES[c.state], created_at=c.created_at,
        started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
        image=_image_spec(c), image_ref=_image_ref(c), image_id=c.image_ref,
        reason=c.reason, message=c.message, labels=c.labels, annotations=c.annotations, log_path=c.log_path,
        mounts=[_mount_status(m) for m in c.mounts],
    )
    r = c.resources
    linux = status.resources.linux
    cpu, memory = r.get("cpu", {}), r.get("memory", {})
    linux.cpu_shares = cpu.get("shares", 0) or 0
    linux.cpu_quota = cpu.get("quota", 0) or 0
    linux.cpu_period = cpu.get("period", 0) or 0
    linux.cpuset_cpus = cpu.get("cpus", "") or ""
    linux.cpuset_mems = cpu.get("mems", "") or ""
    linux.memory_limit_in_bytes = memory.get("limit", 0) or 0
    if c.user:
        status.user.linux.uid = c.user.get("uid", 0)
        status.user.linux.gid = c.user.get("gid", 0)
        # The primary gid first, as containerd reports them (and as the
        # kubelet shows them in the pod's status).
        gid = c.user.get("gid", 0)
        status.user.linux.supplemental_groups.extend(
            [gid] + [g for g in c.user.get("additional_gids", []) if g != gid])
    return status
