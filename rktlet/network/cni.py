"""Attaching pod sandboxes to the CNI network: the chain side of the CNI
exec protocol (spec 1.0, also 0.4.0 and 0.3.x configurations).

``add`` runs the network's plugin chain with ``ADD`` in order, each plugin
getting the previous one's result as ``prevResult``; if any plugin fails,
the whole chain is undone with ``DEL`` before the error is raised, so a
failed attachment leaves no IP allocation, interface or iptables rule.  A
successful ``ADD`` is cached on disk (configuration *and* result) so that the
``DEL`` of that sandbox later runs with the very configuration it was added
with, even if the conf dir has changed since — as the spec requires.

The process side (spawning one plugin, timeouts, error objects, VERSION) is
in :mod:`rktlet.network.cni_exec`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.internet.defer import Deferred, ensureDeferred

from rktlet import fsutil
from rktlet.errors import FailedPrecondition, InvalidArgument, RuntimeFailure
from rktlet.logs import logger
from rktlet.network import cni_config
from rktlet.network.cni_config import NetworkConfig
from rktlet.network.cni_exec import PluginError, VersionCache, invoke, plugin_env, result_ips, version_key

log = logger("rktlet.network.cni")

#: Container ids and interface names become file names and CNI_ARGS values.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: CNI_ARGS is ``K=V;K=V``: values cannot hold these.
_ARGS_UNSAFE = re.compile(r"[;=\x00]")
#: DEL of something already gone is success (spec: plugins should not fail
#: then, but not all comply).  Code 3 is "unknown container"; the message
#: patterns catch plugins that report it in words.  "executable file not
#: found" is Go's complaint about a missing tool (iptables): a real failure.
_GONE = re.compile(r"not found|does not exist|doesn't exist|no such", re.IGNORECASE)
_MISSING_TOOL = re.compile(r"executable file not found", re.IGNORECASE)
_PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PortMapping:
    """A host port forwarded to the pod (the ``portMappings`` capability).

    :ivar protocol: ``tcp``, ``udp`` or ``sctp`` (lower case).
    :ivar host_ip: the host address to bind; empty means all.
    """

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class Attachment:
    """One sandbox's attachment to the network.

    :ivar container_id: the sandbox id (64 hex), CNI_CONTAINERID.
    :ivar netns: the path of the pinned network namespace, CNI_NETNS.
    :ivar dns: the ``dns`` capability: ``{"servers", "searches", "options"}``.
    """

    container_id: str
    netns: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    ifname: str = "eth0"
    port_mappings: tuple[PortMapping, ...] = ()
    dns: dict | None = None

    def as_json(self) -> dict[str, Any]:
        """The fields as JSON (for the cache file)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Attachment":
        """An attachment as :meth:`as_json` wrote it.

        :raises TypeError, ValueError: *doc* has another shape.
        """
        fields = dict(doc)
        fields["port_mappings"] = tuple(PortMapping(**p) for p in fields.get("port_mappings") or ())
        return cls(**fields)


@dataclass(frozen=True)
class NetworkResult:
    """A successful attachment.

    :ivar ips: the pod's addresses without prefix length, IPv4 first.
    :ivar result: the final CNI result (shown in verbose sandbox status).
    """

    network_name: str
    ips: tuple[str, ...]
    result: dict


def _validate(att: Attachment) -> None:
    if not _SAFE_NAME.match(att.container_id):
        raise InvalidArgument(f"CNI: invalid sandbox id {att.container_id!r}")
    if not _SAFE_NAME.match(att.ifname) or len(att.ifname) > 15:
        raise InvalidArgument(f"CNI: invalid interface name {att.ifname!r}")
    for field in ("pod_name", "pod_namespace", "pod_uid"):
        if _ARGS_UNSAFE.search(getattr(att, field)):
            raise InvalidArgument(f"CNI: {field} {getattr(att, field)!r} contains ';', '=' or NUL")
    for pm in att.port_mappings:
        if pm.protocol not in _PROTOCOLS:
            raise InvalidArgument(f"CNI: port mapping protocol {pm.protocol!r} is not one of {', '.join(_PROTOCOLS)}")
        if not (0 < pm.host_port < 65536 and 0 < pm.container_port < 65536):
            raise InvalidArgument(f"CNI: port mapping {pm.host_port}->{pm.container_port} out of range")


def cni_args(att: Attachment) -> str:
    """CNI_ARGS as the kubelet's CNI network plugin passed them.

    ``IgnoreUnknown=1`` tells plugins that do not know the K8S_* keys not to
    fail on them.
    """
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={att.pod_namespace};K8S_POD_NAME={att.pod_name};"
        f"K8S_POD_INFRA_CONTAINER_ID={att.container_id};K8S_POD_UID={att.pod_uid}"
    )


def _runtime_config(plugin: dict[str, Any], att: Attachment) -> dict[str, Any]:
    """The capability arguments this plugin declared it understands, and
    only those (spec: runtimeConfig keys must match declared capabilities)."""
    declared = plugin.get("capabilities") or {}
    config: dict[str, Any] = {}
    if declared.get("portMappings") and att.port_mappings:
        mappings = []
        for pm in att.port_mappings:
            entry: dict[str, Any] = {"hostPort": pm.host_port, "containerPort": pm.container_port, "protocol": pm.protocol}
            if pm.host_ip:
                entry["hostIP"] = pm.host_ip
            mappings.append(entry)
        config["portMappings"] = mappings
    if declared.get("dns") and att.dns is not None:
        config["dns"] = att.dns
    return config


def _exec_config(
    network: NetworkConfig, plugin: dict[str, Any], att: Attachment, prev_result: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON one plugin gets on stdin: its own configuration with the
    list's ``name`` and ``cniVersion``, ``prevResult`` and ``runtimeConfig``
    added and ``capabilities`` removed (all as the spec says)."""
    config = {k: v for k, v in plugin.items() if k not in ("capabilities", "runtimeConfig", "prevResult")}
    config["cniVersion"] = network.cni_version
    config["name"] = network.name
    runtime = _runtime_config(plugin, att)
    if runtime:
        config["runtimeConfig"] = runtime
    if prev_result is not None:
        config["prevResult"] = prev_result
    return config


class CNI:
    """Runs the CNI network's plugin chain for sandboxes.

    :param reactor: spawns the plugins and times them out.
    :param conf_dir: where the network configuration is found.
    :param bin_dirs: where plugins are looked up (also CNI_PATH).
    :param cache_dir: where successful ADDs are remembered.
    :param timeout: seconds one plugin call may take before it is killed.
    """

    def __init__(
        self, reactor: Any, conf_dir: str, bin_dirs: Sequence[str], cache_dir: str, timeout: float = 60.0
    ) -> None:
        self._reactor = reactor
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout
        self._versions = VersionCache(reactor, timeout)

    # -- public API ---------------------------------------------------------

    def add(self, attachment: Attachment) -> Deferred[NetworkResult]:
        """Attach the sandbox: ADD through the chain, undone on failure.

        :raises FailedPrecondition: no usable network config, or a plugin is
            not installed.
        :raises RuntimeFailure: a plugin refused the config's version, failed
            or timed out (after the chain was rolled back).
        """
        return ensureDeferred(self._add(attachment))

    def delete(self, attachment: Attachment) -> Deferred[None]:
        """Detach the sandbox: DEL through the chain in reverse, with the
        configuration it was added with when known.  Idempotent.

        :raises RuntimeFailure: naming every plugin that failed (the others
            still ran); the cache is then kept so that a retry can finish.
        """
        return ensureDeferred(self._delete(attachment))

    def cached_ids(self) -> list[str]:
        """The sandbox ids with a cached ADD: attached, or whose DEL failed
        (a DEL that succeeded drops the entry)."""
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted({n.rsplit("-", 1)[0] for n in names if n.endswith(".json") and "-" in n})

    def cached_attachments(self) -> dict[str, Attachment]:
        """Blocking: the attachment of every cached ADD, by sandbox id (what
        a DEL needs when the sandbox record is gone); unusable entries are
        logged and left out."""
        out = {}
        for container_id in self.cached_ids():
            entry = self.cached(container_id)
            try:
                out[container_id] = Attachment.from_json((entry or {})["attachment"])
            except (KeyError, TypeError, ValueError) as e:
                log.warn("CNI cache of {pod_id} has no usable attachment: {error}", pod_id=container_id, error=repr(e))
        return out

    def cached(self, container_id: str) -> dict | None:
        """The cached ADD of a sandbox (``network``, ``result``,
        ``attachment``), if any; the ``eth0`` attachment is preferred when
        there are several interfaces."""
        if not _SAFE_NAME.match(container_id):
            return None
        paths = sorted(glob.glob(os.path.join(glob.escape(self.cache_dir), f"{glob.escape(container_id)}-*.json")))
        preferred = self._cache_path(container_id, "eth0")
        if preferred in paths:
            paths.remove(preferred)
            paths.insert(0, preferred)
        for path in paths:
            entry = self._read_cache(path)
            if entry is not None:
                return entry
        return None

    # -- ADD ----------------------------------------------------------------

    async def _add(self, att: Attachment) -> NetworkResult:
        _validate(att)
        try:
            network = cni_config.find_network(self.conf_dir)
        except cni_config.CNIConfigError as e:
            raise FailedPrecondition(f"CNI network config unusable: {e}") from None
        if network is None:
            raise FailedPrecondition(f"no CNI network config in {self.conf_dir}")
        chain = self._locate(network)
        for path in chain:
            await self._versions.check(path, network.cni_version, network.name)

        env = plugin_env("ADD", att.container_id, att.netns, att.ifname, cni_args(att), self.bin_dirs)
        result: dict[str, Any] | None = None
        log.debug("CNI ADD {id} to network {network}", id=att.container_id, network=network.name)
        try:
            for plugin, path in zip(network.plugins, chain):
                out = await invoke(
                    self._reactor, path, "ADD", env, _exec_config(network, plugin, att, result), network.name, self.timeout
                )
                if out is None:
                    # A plugin must print a result; tolerate one that only
                    # printed nothing by keeping the previous result.
                    log.warn("CNI plugin {plugin} printed no result for ADD", plugin=plugin["type"])
                else:
                    result = out
            result = result or {}
            self._write_cache(network, att, result)
        except Exception as e:
            # The caller (the pod engine) logs the failure, with the pod's ids.
            log.debug(
                "CNI ADD {pod_id} to network {network} failed, removing what the chain made: {error}",
                pod_id=att.container_id,
                network=network.name,
                error=str(e),
            )
            await self._rollback(network, att)
            if isinstance(e, OSError):  # the cache write
                raise RuntimeFailure(f"CNI ADD to network {network.name!r}: cannot write the cache: {e}") from None
            raise
        ips = result_ips(result, att.ifname)
        # Debug: the pod's "ready" line names the addresses.
        log.debug("CNI ADD {pod_id}: network {network}, addresses {ips}", pod_id=att.container_id, network=network.name,
                  ips=list(ips))
        return NetworkResult(network.name, ips, result)

    def _locate(self, network: NetworkConfig) -> list[str]:
        """The executable of every plugin in the chain.

        :raises FailedPrecondition: naming all the missing ones.
        """
        paths = [cni_config.find_plugin(t, self.bin_dirs) for t in network.plugin_types]
        missing = [t for t, p in zip(network.plugin_types, paths) if p is None]
        if missing:
            raise FailedPrecondition(
                f"CNI plugin(s) {', '.join(missing)} of network {network.name!r} ({network.path}) "
                f"not found in {':'.join(self.bin_dirs)}"
            )
        return [p for p in paths if p is not None]

    async def _rollback(self, network: NetworkConfig, att: Attachment) -> None:
        """DEL for the whole chain after a failed ADD, even for plugins that
        never ran (spec: their DEL must be harmless).  Best effort: errors
        are logged, not raised — the ADD error is the one that matters.  No
        ``prevResult``: there is no result of a completed ADD to give."""
        try:
            errors: list[Exception] = list(await self._del_chain(network, att, None))
        except Exception as e:  # e.g. cancelled again: still report the ADD error
            errors = [e]
        for error in errors:
            log.warn("CNI rollback of {pod_id}: {error}", pod_id=att.container_id, error=str(error))
        self._remove_cache(att)

    # -- DEL ----------------------------------------------------------------

    async def _delete(self, att: Attachment) -> None:
        _validate(att)
        path = self._cache_path(att.container_id, att.ifname)
        entry = self._read_cache(path)
        network: NetworkConfig | None = None
        prev_result = None
        if entry is not None:
            try:
                network = cni_config.parse_network(path, json.dumps(entry["network"]).encode())
                prev_result = entry.get("result")
            except (cni_config.CNIConfigError, KeyError) as e:
                log.warn("CNI cache {path} unusable ({error}); using the conf dir", path=path, error=str(e))
        if network is None:
            try:
                network = cni_config.find_network(self.conf_dir)
            except cni_config.CNIConfigError as e:
                raise FailedPrecondition(f"CNI DEL of {att.container_id}: network config unusable: {e}") from None
        if network is None:
            log.info(
                "CNI DEL {id}: no cached attachment and no network config in {dir}; nothing to do",
                id=att.container_id,
                dir=self.conf_dir,
            )
            return
        # prevResult on DEL arrived with spec 0.4.0; older plugins don't expect it.
        if version_key(network.cni_version) < (0, 4, 0):
            prev_result = None
        errors = await self._del_chain(network, att, prev_result)
        if errors:
            raise RuntimeFailure(
                f"CNI DEL of {att.container_id} from network {network.name!r} failed: "
                + "; ".join(str(e) for e in errors)
            )
        self._remove_cache(att)
        # Debug: the pod's "stopped" and "removed" lines tell of it.
        log.debug("CNI DEL {pod_id} from network {network}", pod_id=att.container_id, network=network.name)

    async def _del_chain(
        self, network: NetworkConfig, att: Attachment, prev_result: dict[str, Any] | None
    ) -> list[RuntimeFailure]:
        """Run DEL for every plugin in reverse chain order, carrying on past
        failures so each plugin releases what it can.

        :return: the failures (missing plugins, errors other than "already
            gone").
        """
        env = plugin_env("DEL", att.container_id, att.netns, att.ifname, cni_args(att), self.bin_dirs)
        errors: list[RuntimeFailure] = []
        for plugin in reversed(network.plugins):
            path = cni_config.find_plugin(plugin["type"], self.bin_dirs)
            if path is None:
                errors.append(
                    RuntimeFailure(f"CNI plugin {plugin['type']} not found in {':'.join(self.bin_dirs)}")
                )
                continue
            try:
                await invoke(
                    self._reactor,
                    path,
                    "DEL",
                    env,
                    _exec_config(network, plugin, att, prev_result),
                    network.name,
                    self.timeout,
                )
            except PluginError as e:
                if _already_gone(e):
                    log.debug("CNI DEL {pod_id}: {error} (already gone; ignored)", pod_id=att.container_id, error=str(e))
                    continue
                errors.append(e)
        return errors

    # -- cache --------------------------------------------------------------

    def _cache_path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, f"{container_id}-{ifname}.json")

    def _read_cache(self, path: str) -> dict | None:
        try:
            entry = fsutil.read_json(path)
        except (OSError, ValueError) as e:
            log.warn("CNI cache {path} unreadable: {error}", path=path, error=str(e))
            return None
        return entry if isinstance(entry, dict) else None

    def _write_cache(self, network: NetworkConfig, att: Attachment, result: dict[str, Any]) -> None:
        # Small and written once per sandbox: inline on the reactor is fine.
        fsutil.make_dir(self.cache_dir, fsutil.PRIVATE_DIR)
        fsutil.write_json_atomic(
            self._cache_path(att.container_id, att.ifname),
            {"network": network.as_json(), "result": result, "attachment": att.as_json()},
            mode=0o600,
        )

    def _remove_cache(self, att: Attachment) -> None:
        try:
            os.unlink(self._cache_path(att.container_id, att.ifname))
        except FileNotFoundError:
            pass


def _already_gone(error: PluginError) -> bool:
    """Whether a DEL failure only says the thing to delete is not there."""
    if error.code == 3:
        return True
    text = f"{error.msg} {error.details}"
    return bool(_GONE.search(text)) and not _MISSING_TOOL.search(text) and error.code is not None
