"""Checks of the programs rktlet runs: the OCI runtime of each handler
(runc), conmon, and the CNI plugins of the network pods will join."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from rktlet.config import Config
from rktlet.errors import RktletError
from rktlet.network import cni_config
from rktlet.network.cni_config import CNIConfigError
from rktlet.network.default_network import render as render_default_network
from rktlet.oci.conmon.launch import REQUIRED_OPTIONS as CONMON_OPTIONS
from rktlet.oci.handlers import DEFAULT_HANDLER
from rktlet.oci.runtime import RuntimeFeatures
from rktlet.preflight.host import Host
from rktlet.preflight.model import Result, fail, ok, warn

CONMON = "conmon"

#: The oldest runc rktlet drives: `runc features` (what Status reports per
#: handler, and what recursive read-only mounts are checked against) came in 1.1.
MIN_RUNC = (1, 1, 0)

_VERSION = re.compile(r"^(\S+) version v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(line: str) -> tuple[str, tuple[int, int, int]] | None:
    """``("runc", (1, 1, 5))`` from ``runc version 1.1.5+ds1`` (None when
    the line says no version)."""
    match = _VERSION.match(line.strip())
    if not match:
        return None
    name, major, minor, patch = match.groups()
    return name, (int(major), int(minor), int(patch or 0))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in version)


# -- OCI runtimes -------------------------------------------------------------

def check_runtimes(config: Config, host: Host) -> list[Result]:
    """Each handler's runtime is there, runs, is new enough, and says what it
    supports (``runc features``). The default handler's runtime missing keeps
    the daemon from starting; another handler's only makes that handler fail."""
    results: list[Result] = []
    for name, binary in config.handlers.items():
        results += _check_runtime(name, binary, host, required=name == DEFAULT_HANDLER)
    return results


def _check_runtime(handler: str, binary: str, host: Host, required: bool) -> list[Result]:
    check = f"runtime {handler}"
    flag = "--runtime" if handler == DEFAULT_HANDLER else f"--runtime-handler {handler}=PATH"
    bad = fail if required else warn
    path = host.find(binary)
    if path is None:
        where = "" if os.sep in binary else f" on PATH ({host.path})"
        install = "install runc (Debian: apt-get install runc) or point" if os.path.basename(binary) == "runc" else "point"
        return [bad(check, f"{binary} not found{where}", f"{install} {flag} at the runtime's path")]
    out = host.execute([path, "--version"])
    if out.exit_code != 0:
        return [bad(check, f"{path} --version failed: {out.first_line()}", f"check that {path} is an OCI runtime")]
    parsed = parse_version(out.first_line())
    if parsed and parsed[0] == "runc" and parsed[1] < MIN_RUNC:
        return [bad(check, f"{path} is runc {_dotted(parsed[1])}; rktlet needs runc {_dotted(MIN_RUNC[:2])} or newer",
                    "upgrade runc")]
    results = [ok(check, f"{out.first_line()} ({path})")]
    features = host.execute([path, "features"])
    doc: Any = None
    if features.exit_code == 0:
        try:
            doc = json.loads(features.stdout)
        except ValueError:
            doc = None
    if not isinstance(doc, dict):
        why = features.first_line() if features.exit_code != 0 else "its answer is not a JSON object"
        results.append(warn(f"{check} features", f"{path} features: {why}",
                            "recursive read-only mounts are refused for this handler; use runc 1.1 or newer"))
        return results
    # Read as the daemon reads it (rktlet.oci.runtime), so both agree.
    features = RuntimeFeatures.from_json(doc)
    results.append(ok(f"{check} features",
                      "recursive read-only mounts (rro) "
                      + ("supported" if features.recursive_read_only_mounts else "not supported")
                      + ", idmapped mounts " + ("supported" if features.idmap_mounts else "not supported")))
    return results


def runtime_version_lines(config: Config, host: Host) -> list[str]:
    """``runtime NAME: <first line of --version> (PATH)`` per handler."""
    lines = []
    for name, binary in config.handlers.items():
        path = host.find(binary)
        text = f"{host.execute([path, '--version']).first_line()} ({path})" if path else f"{binary} not found"
        lines.append(f"runtime {name}: {text}")
    return lines


# -- conmon -------------------------------------------------------------------

def check_conmon(config: Config, host: Host) -> list[Result]:
    """conmon is there and knows every option rktlet passes it."""
    path = host.find(CONMON)
    if path is None:
        return [fail("conmon", f"conmon not found on PATH ({host.path})",
                     "install conmon (Debian: apt-get install conmon)")]
    version = host.execute([path, "--version"])
    if version.exit_code != 0:
        return [fail("conmon", f"{path} --version failed: {version.first_line()}", "reinstall conmon")]
    usage = host.execute([path, "--help"])
    text = usage.stdout.decode("utf-8", "replace") + usage.stderr.decode("utf-8", "replace")
    known = set(re.findall(r"--[a-z][a-z-]*", text))
    missing = [o for o in CONMON_OPTIONS if o not in known]
    if missing:
        return [fail("conmon", f"{path} ({version.first_line()}) lacks the option(s) {', '.join(missing)} rktlet "
                     "passes", "install conmon 2.1 or newer")]
    return [ok("conmon", f"{version.first_line()} ({path})")]


def conmon_version_line(host: Host) -> str:
    """``conmon: <first line of --version> (PATH)``."""
    path = host.find(CONMON)
    return f"conmon: {host.execute([path, '--version']).first_line()} ({path})" if path else "conmon: not found"


# -- CNI ------------------------------------------------------------------------

def network_in_use(config: Config) -> cni_config.NetworkConfig:
    """The network pods will join: the first file in the conf dir, or
    rktlet's default network, written there at start when it is empty.

    :raises CNIConfigError: the first file is there but unusable.
    """
    network = cni_config.find_network(config.cni_conf_dir)
    if network is not None:
        return network
    about = f"rktlet's default, written into {config.cni_conf_dir} at start"
    return cni_config.parse_network(about, render_default_network(config.default_network_subnet).encode())


def plugin_types(network: cni_config.NetworkConfig) -> list[str]:
    """The plugin binaries *network* runs: each chained plugin, then the
    IPAM plugins they delegate to, each once."""
    types = list(network.plugin_types)
    for plugin in network.plugins:
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and ipam["type"] not in types:
            types.append(ipam["type"])
    return types


def check_cni(config: Config, host: Host) -> list[Result]:
    """The network's plugins are found in the plugin dirs and speak its
    ``cniVersion``. A failure leaves the daemon running (NetworkReady is
    false; the plugins or the configuration may be installed later, as
    network add-ons do once the node runs)."""
    dirs = ":".join(config.cni_bin_dir)
    try:
        network = network_in_use(config)
    except (CNIConfigError, RktletError) as e:
        return [warn("cni", f"network configuration unusable: {e}", "fix or remove that file; pods get no network")]
    missing, unsupported, found = [], [], []
    for plugin in plugin_types(network):
        path = cni_config.find_plugin(plugin, config.cni_bin_dir)
        if path is None:
            missing.append(plugin)
            continue
        found.append(path)
        versions = _supported_versions(host, path, network.cni_version)
        if versions is not None and network.cni_version not in versions:
            unsupported.append(f"{plugin} ({', '.join(versions)})")
    about = f"network {network.name!r} ({network.path})"
    if missing:
        return [warn("cni", f"plugin(s) {', '.join(missing)} of {about} not found in {dirs}",
                     "install them (Debian: apt-get install containernetworking-plugins) or set --cni-bin-dir; "
                     "pods get no network until then")]
    if unsupported:
        return [warn("cni", f"plugin(s) {'; '.join(unsupported)} of {about} do not support its cniVersion "
                     f"{network.cni_version}", "use newer plugins or an older cniVersion in the configuration")]
    return [ok("cni", f"{about}, cniVersion {network.cni_version}: {', '.join(found)}")]


def _supported_versions(host: Host, path: str, cni_version: str) -> list[str] | None:
    out = host.execute([path], stdin=json.dumps({"cniVersion": cni_version}).encode(),
                       env={"CNI_COMMAND": "VERSION"})
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None  # a plugin that cannot say; the first ADD will tell
    versions = doc.get("supportedVersions") if isinstance(doc, dict) else None
    return [str(v) for v in versions] if isinstance(versions, list) else None


def cni_version_lines(config: Config, host: Host) -> list[str]:
    """``cni PLUGIN: <what it prints> (PATH)`` for the network's plugins."""
    try:
        types = plugin_types(network_in_use(config))
    except (CNIConfigError, RktletError):
        types = ["bridge", "host-local", "portmap"]
    lines = []
    for plugin in types:
        path = cni_config.find_plugin(plugin, config.cni_bin_dir)
        # Run with no CNI_COMMAND, a plugin prints what it is.
        text = f"{host.execute([path]).first_line()} ({path})" if path else \
            f"not found in {':'.join(config.cni_bin_dir)}"
        lines.append(f"cni {plugin}: {text}")
    return lines
