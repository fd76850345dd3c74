"""Pod sandbox messages ⇄ the engine's terms: request validation and
conversion into a :class:`SandboxSpec`, records into CRI status messages."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from rktlet.cri.proto import enum_name, known, pb
from rktlet.errors import InvalidArgument
from rktlet.oci.userns import IDMapping, UserNamespace, check_mappings
from rktlet.pod.sandbox import MODE_CONTAINER, MODE_NODE, MODE_POD, MODE_TARGET, NOTREADY, READY, Sandbox
from rktlet.pod.spec import PortSpec, SandboxSpec

_MODES = {pb.POD: MODE_POD, pb.CONTAINER: MODE_CONTAINER, pb.NODE: MODE_NODE, pb.TARGET: MODE_TARGET}
_MODE_ENUMS = {v: k for k, v in _MODES.items()}
_PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}
STATES = {READY: pb.SANDBOX_READY, NOTREADY: pb.SANDBOX_NOTREADY}
STATE_NAMES = {v: k for k, v in STATES.items()}


def _require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


def sandbox_spec(request: pb.RunPodSandboxRequest) -> SandboxSpec:
    """Validate a RunPodSandbox request; every error names its field."""
    if not request.HasField("config"):
        raise InvalidArgument("config is required")
    config = request.config
    meta = config.metadata
    _require(meta.name, "config.metadata.name")
    _require(meta.uid, "config.metadata.uid")
    _require(meta.namespace, "config.metadata.namespace")
    ns = config.linux.security_context.namespace_options
    modes = {}
    for field in ("network", "pid", "ipc"):
        mode = _MODES.get(getattr(ns, field))
        if mode == MODE_TARGET or mode is None or (field != "pid" and mode == MODE_CONTAINER):
            raise InvalidArgument(
                f"config.linux.security_context.namespace_options.{field}: {enum_name(pb.NamespaceMode, getattr(ns, field))} "
                "is not a mode a pod can have"
            )
        modes[field] = mode
    userns = user_namespace(ns, "config.linux.security_context.namespace_options.userns_options")
    if userns is not None:
        shared = [f for f in ("network", "pid", "ipc") if modes[f] == MODE_NODE]
        if shared:
            # The pod's root would hold capabilities over host namespaces
            # it cannot own (the kubelet refuses hostUsers: false with them).
            raise InvalidArgument(
                "config.linux.security_context.namespace_options: a pod with its own user namespace cannot "
                f"share the host's {', '.join(shared)} namespace"
            )
    ports = []
    for i, p in enumerate(config.port_mappings):
        where = f"config.port_mappings[{i}]"
        if not 0 < p.container_port < 65536:
            raise InvalidArgument(f"{where}.container_port: {p.container_port} is not a port number")
        if not 0 <= p.host_port < 65536:
            raise InvalidArgument(f"{where}.host_port: {p.host_port} is not a port number")
        if p.host_ip:
            try:
                ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise InvalidArgument(f"{where}.host_ip: {p.host_ip!r} is not an IP address") from None
        ports.append(PortSpec(p.container_port, p.host_port, known(_PROTOCOLS, p.protocol, f"{where}.protocol", pb.Protocol),
                              p.host_ip))
    directory = config.log_directory
    if directory and (not directory.startswith("/") or ".." in directory.split("/") or "\0" in directory):
        raise InvalidArgument(f"config.log_directory {directory!r} must be an absolute path without '..'")
    digest = hashlib.sha256(config.SerializeToString(deterministic=True))
    digest.update(request.runtime_handler.encode())
    return SandboxSpec(
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid,
        attempt=meta.attempt,
        fingerprint=digest.hexdigest(),
        handler=request.runtime_handler,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns_servers=tuple(config.dns_config.servers),
        dns_searches=tuple(config.dns_config.searches),
        dns_options=tuple(config.dns_config.options),
        port_mappings=tuple(ports),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=config.linux.cgroup_parent,
        sysctls=dict(config.linux.sysctls),
        network_mode=modes["network"],
        pid_mode=modes["pid"],
        ipc_mode=modes["ipc"],
        userns=userns,
    )


def mappings(items: Any) -> tuple[IDMapping, ...]:
    """CRI ``IDMapping`` messages as :class:`IDMapping` records."""
    return tuple(IDMapping(m.container_id, m.host_id, m.length) for m in items)


def user_namespace(ns: pb.NamespaceOption, where: str) -> UserNamespace | None:
    """The pod's user namespace from ``NamespaceOption.userns_options``:
    None for NODE (or unset: the host's, what the kubelet sends for
    ``hostUsers: true``), the checked mappings for POD; CONTAINER and
    TARGET are refused, as by containerd and CRI-O.

    :raises InvalidArgument: naming the field.
    """
    if not ns.HasField("userns_options"):
        return None
    options = ns.userns_options
    if options.mode == pb.NODE:
        if options.uids or options.gids:
            raise InvalidArgument(f"{where}: mode NODE (the host's user namespace) takes no uid or gid mappings")
        return None
    if options.mode != pb.POD:
        raise InvalidArgument(f"{where}.mode: {enum_name(pb.NamespaceMode, options.mode)} is not supported "
                              "(only POD, a user namespace per pod, or NODE, the host's)")
    return check_mappings(mappings(options.uids), mappings(options.gids), where)


def metadata(sb: Sandbox) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=sb.name, uid=sb.uid, namespace=sb.namespace, attempt=sb.attempt)


def _identity(sb: Sandbox) -> dict:
    """The fields PodSandbox and PodSandboxStatus share."""
    return dict(
        id=sb.id,
        metadata=metadata(sb),
        state=STATES.get(sb.state, pb.SANDBOX_NOTREADY),
        created_at=sb.created_at,
        labels=sb.labels,
        annotations=sb.annotations,
        runtime_handler=sb.handler,
    )


def sandbox_summary(sb: Sandbox) -> pb.PodSandbox:
    """A record as ListPodSandbox reports it."""
    return pb.PodSandbox(**_identity(sb))


def sandbox_status(sb: Sandbox) -> pb.PodSandboxStatus:
    """A record as PodSandboxStatus reports it. The namespace modes must be
    right: the kubelet recreates a sandbox whose network mode looks changed."""
    status = pb.PodSandboxStatus(
        **_identity(sb),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=pb.NamespaceOption(
                    network=_MODE_ENUMS[sb.network_mode],
                    pid=_MODE_ENUMS[sb.pid_mode],
                    ipc=_MODE_ENUMS[sb.ipc_mode],
                )
            )
        ),
    )
    userns = sb.user_namespace
    if userns is not None:
        options = status.linux.namespaces.options.userns_options
        options.mode = pb.POD
        options.uids.extend(pb.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)
                            for m in userns.uids)
        options.gids.extend(pb.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)
                            for m in userns.gids)
    if sb.ips and sb.network_mode != MODE_NODE:
        status.network.ip = sb.ips[0]
        status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in sb.ips[1:])
    return status
