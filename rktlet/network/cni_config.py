"""Finding the CNI network configuration in use and whether it can work.

Like the kubelet's CNI support and containerd, rktlet uses the first file in
lexical order in the conf dir with the extension ``.conflist``, ``.conf`` or
``.json``; a ``.conf`` holds one plugin and is treated as a list of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

CONF_EXTENSIONS = (".conflist", ".conf", ".json")


class CNIConfigError(ValueError):
    """A network configuration file exists but cannot be used."""


@dataclass(frozen=True)
class NetworkConfig:
    """One CNI network configuration list as loaded from a file.

    :ivar name: the network name (``rkt.kubernetes.io`` for rktlet's default).
    :ivar path: the file it came from.
    :ivar cni_version: the ``cniVersion`` of the list.
    :ivar plugins: the plugin configurations, in chain order.
    """

    name: str
    path: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]

    @property
    def plugin_types(self) -> tuple[str, ...]:
        """The plugin binaries the chain runs, in order."""
        return tuple(p["type"] for p in self.plugins)

    def as_json(self) -> dict[str, Any]:
        """The configuration list as CNI expects it on disk."""
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins)}


def parse_network(path: str, data: bytes) -> NetworkConfig:
    """Parse one configuration file's bytes into a :class:`NetworkConfig`."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CNIConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CNIConfigError(f"{path}: expected a JSON object")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise CNIConfigError(f"{path}: 'plugins' must be a non-empty list")
    elif path.endswith(".conflist"):
        raise CNIConfigError(f"{path}: a .conflist needs a 'plugins' list")
    else:
        plugins = [{k: v for k, v in doc.items() if k not in ("cniVersion", "name")}]
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CNIConfigError(f"{path}: missing network 'name'")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CNIConfigError(f"{path}: plugin {i} has no 'type'")
        if any(c in plugin["type"] for c in "/\\") or plugin["type"] in (".", ".."):
            # A type names a program in the plugin directories, never a path
            # (as libcni refuses it): "../../bin/x" must not run anything else.
            raise CNIConfigError(f"{path}: plugin {i} type {plugin['type']!r} is not a plugin name")
    return NetworkConfig(name=name, path=path, cni_version=str(doc.get("cniVersion", "0.4.0")), plugins=tuple(plugins))


def config_files(conf_dir: str) -> list[str]:
    """The configuration files in *conf_dir*, in the order they are tried."""
    try:
        names = sorted(os.listdir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(conf_dir, n) for n in names if n.endswith(CONF_EXTENSIONS)]


def find_network(conf_dir: str) -> NetworkConfig | None:
    """The network in use: the first file in *conf_dir* (lexical order).

    :raises CNIConfigError: the first file is there but unusable (rktlet does
        not skip to the next file: a broken config is an operator error that
        should be seen, not silently replaced by another network).
    """
    files = config_files(conf_dir)
    if not files:
        return None
    path = files[0]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CNIConfigError(f"{path}: {e.strerror}") from None
    return parse_network(path, data)


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> str | None:
    """The path of the executable for *plugin_type* in *bin_dirs*, if any."""
    for directory in bin_dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class Readiness:
    """Whether pod networking can work; feeds the NetworkReady condition."""

    ready: bool
    reason: str = ""
    message: str = ""
    network: NetworkConfig | None = None


NOT_READY_REASON = "NetworkPluginNotReady"


def check_readiness(conf_dir: str, bin_dirs: Sequence[str]) -> Readiness:
    """Check that a usable network configuration exists and all its plugins
    are installed."""
    try:
        network = find_network(conf_dir)
    except CNIConfigError as e:
        return Readiness(False, NOT_READY_REASON, f"CNI network config unusable: {e}")
    if network is None:
        return Readiness(False, NOT_READY_REASON, f"no CNI network config found in {conf_dir}")
    missing = [t for t in network.plugin_types if find_plugin(t, bin_dirs) is None]
    if missing:
        return Readiness(
            False,
            NOT_READY_REASON,
            f"CNI plugin(s) {', '.join(missing)} of network {network.name!r} ({network.path}) "
            f"not found in {':'.join(bin_dirs)}",
            network,
        )
    return Readiness(True, network=network)
