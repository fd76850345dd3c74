"""The versions of the programs rktlet runs, for ``Status`` verbose info:
asked once at start-up (a process each), then served from memory."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from rktlet import logs
from rktlet.network.cni_config import find_plugin
from rktlet.oci.exec import describe_reaper
from rktlet.process import run_process

log = logs.logger("rktlet.pod.versions")

CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


async def collect(reactor: Any, handlers: Mapping[str, str], cni_bin_dirs: Sequence[str],
                  conmon: str = "conmon") -> dict[str, Any]:
    """``{"runtimes": {handler: version}, "conmon": ..., "cniPlugins": {name: about},
    "execReaper": "compiled <path>" | "python (...)"}``."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}

    async def ask(argv: list[str]) -> str:
        try:
            out = await run_process(reactor, argv, env, timeout=10)
        except OSError as e:
            return f"not runnable: {e.strerror}"
        return _first_line(out.stdout) or _first_line(out.stderr) or f"exit status {out.exit_code}"

    versions: dict[str, Any] = {"runtimes": {}, "cniPlugins": {}}
    for name, binary in handlers.items():
        versions["runtimes"][name] = await ask([binary, "--version"])
    versions["conmon"] = await ask([conmon, "--version"])
    for plugin in CNI_PLUGINS:
        path = find_plugin(plugin, cni_bin_dirs)
        # A plugin run with no CNI_COMMAND prints what it is.
        versions["cniPlugins"][plugin] = (await ask([path])) if path else "not found"
    versions["execReaper"] = describe_reaper()
    return versions
