"""The real ``crictl`` binary, bound to one daemon's socket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any


def find_crictl() -> str | None:
    """The crictl to use: ``$CRICTL``, then PATH, then Go's install dir."""
    candidates = [os.environ.get("CRICTL"), shutil.which("crictl")]
    gopath = os.environ.get("GOPATH") or os.path.expanduser("~/go")
    candidates.append(os.path.join(gopath, "bin", "crictl"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return None


class Crictl:
    """Runs crictl against one unix socket.

    :param binary: the crictl executable.
    :param socket: the daemon's CRI socket path.
    :param config_path: an (empty) crictl config file, so the host's
        ``/etc/crictl.yaml`` never applies.
    """

    def __init__(self, binary: str, socket: str, config_path: str) -> None:
        self.binary = binary
        self.socket = socket
        self.config_path = config_path
        if not os.path.exists(config_path):
            open(config_path, "w").close()

    def run(self, *args: str, check: bool = True, timeout: float = 60, text: bool = True) -> subprocess.CompletedProcess:
        """``crictl ARGS``; raises with crictl's output when it fails and
        *check*. With *text* false, the output is bytes."""
        argv = [
            self.binary,
            "--config", self.config_path,
            "--runtime-endpoint", f"unix://{self.socket}",
            "--image-endpoint", f"unix://{self.socket}",
            "--timeout", "30s",
            *args,
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=text, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed ({result.returncode}):\n{result.stdout!r}\n{result.stderr!r}")
        return result

    def json(self, command: str, *args: str) -> Any:
        """``crictl COMMAND -o json ARGS`` parsed."""
        return json.loads(self.run(command, "-o", "json", *args).stdout)
