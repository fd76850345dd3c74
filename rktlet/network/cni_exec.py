"""Running one CNI plugin binary: the process side of the CNI exec protocol.

A plugin is an executable that reads its configuration as JSON on stdin,
its parameters from ``CNI_*`` environment variables, and answers with JSON on
stdout: a result on success, an error object ``{"code", "msg", "details"}``
with a non-zero exit status on failure (stderr is free-form logging).

Everything here runs on the reactor: plugins are spawned with
``reactor.spawnProcess`` and watched by a :class:`ProcessProtocol`; a plugin
that outlives its timeout is killed with SIGKILL.  :mod:`rktlet.network.cni`
builds chains of these calls.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, Mapping

from twisted.internet.defer import Deferred

from rktlet.errors import RuntimeFailure
from rktlet.logs import logger
from rktlet.process import OUTPUT_LIMIT, ProcessOutput, run_process

log = logger("rktlet.network.cni")

# Plugins answer with a few KiB; more than OUTPUT_LIMIT is a broken plugin,
# and keeping it all would let one fill the daemon's memory.

#: Used when the daemon's own environment has no PATH: plugins run tools
#: (iptables, ip) found through it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# What a finished plugin process left behind.
PluginOutput = ProcessOutput


class PluginError(RuntimeFailure):
    """A CNI plugin failed; the message names the plugin, the command, the
    network and carries the plugin's own ``msg``/``details``.

    :ivar code: the CNI error code the plugin reported (None when it printed
        no error object, was killed, or could not be run at all).
    """

    def __init__(
        self,
        plugin: str,
        command: str,
        network: str,
        msg: str,
        details: str = "",
        code: int | None = None,
    ) -> None:
        self.plugin = plugin
        self.command = command
        self.network = network
        self.msg = msg
        self.details = details
        self.code = code
        text = f"CNI plugin {plugin} failed ({command} on network {network!r}): {msg}"
        if details and details != msg:
            text += f": {details}"
        if code is not None:
            text += f" (CNI error code {code})"
        super().__init__(text)


class PluginTimeout(PluginError):
    """A plugin ran past its timeout and was killed."""

    def __init__(self, plugin: str, command: str, network: str, timeout: float) -> None:
        super().__init__(plugin, command, network, "timed out")
        # The brief wording callers and operators grep for, replacing the
        # generic text built above.
        self.args = (f"CNI plugin {plugin} timed out after {timeout:g}s ({command} on network {network!r}); killed",)


class IncompatibleVersion(PluginError):
    """The plugin does not support the network config's ``cniVersion``."""

    def __init__(self, path: str, network: str, cni_version: str, supported: tuple[str, ...]) -> None:
        super().__init__(os.path.basename(path), "VERSION", network, f"cniVersion {cni_version} not supported", code=1)
        self.args = (
            f"CNI plugin {self.plugin} ({path}) does not support cniVersion {cni_version} of network "
            f"{network!r}; it supports {', '.join(supported) or 'none'}",
        )


def spawn_plugin(reactor: Any, path: str, env: Mapping[str, str], stdin: bytes, timeout: float) -> Deferred[PluginOutput]:
    """Run the plugin at *path* with exactly *env* and *stdin*.

    :return: a Deferred firing with the :class:`PluginOutput` once the
        process has ended (cancelling it kills the plugin).
    """
    return run_process(reactor, [path], env, stdin, timeout, OUTPUT_LIMIT)


def plugin_env(
    command: str,
    container_id: str = "",
    netns: str = "",
    ifname: str = "",
    cni_args: str = "",
    bin_dirs: tuple[str, ...] = (),
) -> dict[str, str]:
    """The environment of one plugin call: the CNI parameters and PATH,
    nothing else of the daemon's environment (the plugin gets the same
    parameters whoever started the daemon)."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": cni_args,
        "CNI_PATH": ":".join(bin_dirs),
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
    }
    if command == "VERSION":
        env = {"CNI_COMMAND": command, "PATH": env["PATH"]}
    return env


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


async def invoke(
    reactor: Any,
    path: str,
    command: str,
    env: Mapping[str, str],
    config: Mapping[str, Any],
    network: str,
    timeout: float,
) -> dict[str, Any] | None:
    """Run one plugin call and interpret its answer.

    :return: the JSON object the plugin printed, or None when it printed
        nothing (DEL normally prints nothing).
    :raises PluginTimeout: it ran past *timeout* and was killed.
    :raises PluginError: it exited non-zero, or printed something that is not
        a JSON object.
    """
    plugin = os.path.basename(path)
    stdin = json.dumps(config).encode()
    try:
        out = await spawn_plugin(reactor, path, env, stdin, timeout)
    except OSError as e:  # spawnProcess could not even start it
        raise PluginError(plugin, command, network, f"cannot run {path}: {e.strerror or e}") from None
    stderr = out.stderr.decode("utf-8", "replace").strip()
    if stderr:
        log.debug("CNI plugin {plugin} {command} stderr: {stderr}", plugin=plugin, command=command, stderr=stderr)
    if out.timed_out:
        raise PluginTimeout(plugin, command, network, timeout)
    doc = _decode(out.stdout) if out.stdout.strip() else None
    if out.exit_code != 0:
        if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
            code = doc.get("code")
            raise PluginError(
                plugin,
                command,
                network,
                str(doc.get("msg") or "(no message)"),
                str(doc.get("details") or ""),
                code if isinstance(code, int) else None,
            )
        # Not a CNI error object: the plugin's own words are on stderr (a
        # crash, a shell script's complaint) or stdout.
        words = stderr or out.stdout.decode("utf-8", "replace").strip()
        how = f"exit status {out.exit_code}" if out.exit_code is not None else f"killed by signal {out.signal}"
        raise PluginError(plugin, command, network, f"{how}: {words}" if words else how)
    if doc is None and out.stdout.strip():
        raise PluginError(plugin, command, network, f"printed a result that is not JSON: {out.stdout[:200]!r}")
    if doc is not None and not isinstance(doc, dict):
        raise PluginError(plugin, command, network, f"printed a result that is not a JSON object: {out.stdout[:200]!r}")
    return doc


def version_key(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` → ``(0, 4, 0)``, for ordering spec versions (unknown
    shapes sort first)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


class VersionCache:
    """The spec versions each plugin binary supports, asked once per binary.

    A plugin is identified by its path and modification time, so that an
    upgraded plugin is asked again.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._known: dict[tuple[str, int], tuple[str, ...]] = {}

    async def supported(self, path: str, cni_version: str, network: str) -> tuple[str, ...]:
        """The ``supportedVersions`` of the plugin at *path*."""
        try:
            key = (path, os.stat(path).st_mtime_ns)
        except OSError as e:
            raise PluginError(os.path.basename(path), "VERSION", network, f"cannot run {path}: {e.strerror}") from None
        if key in self._known:
            return self._known[key]
        doc = await invoke(
            self._reactor,
            path,
            "VERSION",
            plugin_env("VERSION"),
            {"cniVersion": cni_version},
            network,
            self._timeout,
        )
        doc = doc or {}
        versions = doc.get("supportedVersions")
        if not isinstance(versions, list):
            # Plugins of the first spec (0.1.0) answered with their version only.
            versions = [doc.get("cniVersion", "0.1.0")]
        found = tuple(str(v) for v in versions)
        self._known[key] = found
        return found

    async def check(self, path: str, cni_version: str, network: str) -> None:
        """Refuse to run the plugin at *path* for a network whose
        *cni_version* it does not support.

        :raises IncompatibleVersion: it does not (code 1, "incompatible CNI
            version", as the plugin itself would say).
        :raises PluginError: the VERSION call failed.
        """
        versions = await self.supported(path, cni_version, network)
        if cni_version not in versions:
            raise IncompatibleVersion(path, network, cni_version, versions)


def result_ips(result: Mapping[str, Any], ifname: str) -> tuple[str, ...]:
    """The pod's addresses in a CNI result, without prefix length, IPv4 first.

    Understands the 0.3.x/0.4.0/1.x shape (``ips`` entries pointing into
    ``interfaces``; only addresses on the sandbox side count, not the
    gateway's on a host bridge) and the 0.2.0 shape (``ip4``/``ip6``).
    """
    interfaces = result.get("interfaces") or []
    found: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            iface = interfaces[index] or {}
            if not iface.get("sandbox") and iface.get("name") != ifname:
                continue
        found.append(entry["address"])
    for key in ("ip4", "ip6"):
        section = result.get(key)
        if isinstance(section, dict) and section.get("ip"):
            found.append(section["ip"])
    addresses = []
    for text in found:
        try:
            addresses.append(ipaddress.ip_interface(text).ip)
        except ValueError:
            log.warn("CNI result has an invalid address {address!r}", address=text)
    addresses.sort(key=lambda a: a.version)  # stable: plugin order within a family
    unique: list[str] = []
    for a in addresses:
        if str(a) not in unique:
            unique.append(str(a))
    return tuple(unique)
