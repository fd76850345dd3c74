"""Durable records under ``<root>``: one JSON file per sandbox or container,
written atomically before the RPC that changed it returns."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Generic, Iterator, TypeVar

from rktlet import logs
from rktlet.fsutil import PRIVATE_DIR, PRIVATE_FILE, make_dir, write_json_atomic
from rktlet.pod.container import Container
from rktlet.pod.sandbox import Sandbox

log = logs.logger("rktlet.pod.store")

T = TypeVar("T")


class RecordStore(Generic[T]):
    """Records of one kind in one directory, keyed by id.

    :param directory: where the ``<id>.json`` files live.
    :param from_json: builds a record from its JSON document.
    """

    def __init__(self, directory: str, from_json: Callable[[dict[str, Any]], T]) -> None:
        self.dir = directory
        self._from_json = from_json

    def _path(self, record_id: str) -> str:
        return os.path.join(self.dir, f"{record_id}.json")

    def save(self, record: Any) -> None:
        """Persist *record* (atomically)."""
        write_json_atomic(self._path(record.id), record.to_json(), mode=PRIVATE_FILE)

    def delete(self, record_id: str) -> None:
        """Forget a record (idempotent)."""
        try:
            os.unlink(self._path(record_id))
        except FileNotFoundError:
            pass

    def load(self) -> Iterator[T]:
        """Every stored record (blocking: at start-up). Unreadable records
        are logged and moved aside, never silently dropped."""
        make_dir(self.dir, PRIVATE_DIR)  # 0700 whatever an older daemon made
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if not name.endswith(".json"):
                continue
            try:
                with open(path, "rb") as f:
                    doc = json.load(f)
                if not isinstance(doc, dict):
                    raise ValueError(f"a record is a JSON object, not {type(doc).__name__}")
                record = self._from_json(doc)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                log.error("unreadable record {path}: {error}; moved to {path}.bad", path=path, error=e)
                os.rename(path, path + ".bad")
                continue
            yield record


def PodStore(root: str) -> RecordStore[Sandbox]:
    """Sandbox records under ``<root>/pods``."""
    return RecordStore(os.path.join(root, "pods"), Sandbox.from_json)


def ContainerStore(root: str) -> RecordStore[Container]:
    """Container records under ``<root>/containers``."""
    return RecordStore(os.path.join(root, "containers"), Container.from_json)
