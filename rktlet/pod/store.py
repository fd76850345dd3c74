"""Durable records under ``<root>/pods``: one JSON file per sandbox, written
atomically before the RPC that changed it returns."""

from __future__ import annotations

import json
import os
from typing import Iterator

from rktlet import logs
from rktlet.fsutil import write_json_atomic
from rktlet.pod.sandbox import Sandbox

log = logs.logger("rktlet.pod.store")


class PodStore:
    """Sandbox records on disk.

    :param root: the daemon's ``--root``.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "pods")

    def _path(self, sandbox_id: str) -> str:
        return os.path.join(self.dir, f"{sandbox_id}.json")

    def save(self, sandbox: Sandbox) -> None:
        """Persist *sandbox* (atomically)."""
        write_json_atomic(self._path(sandbox.id), sandbox.to_json(), mode=0o600)

    def delete(self, sandbox_id: str) -> None:
        """Forget a sandbox (idempotent)."""
        try:
            os.unlink(self._path(sandbox_id))
        except FileNotFoundError:
            pass

    def load(self) -> Iterator[Sandbox]:
        """Every stored sandbox (blocking: at start-up). Unreadable records
        are logged and moved aside, never silently dropped."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if not name.endswith(".json"):
                continue
            try:
                with open(path, "rb") as f:
                    yield Sandbox.from_json(json.load(f))
            except (OSError, ValueError, TypeError) as e:
                log.error("unreadable sandbox record {path}: {error}; moved to {path}.bad", path=path, error=e)
                os.rename(path, path + ".bad")
