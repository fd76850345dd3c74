"""Records and their snapshots: how the pod layer's state crosses threads.

The live records (:class:`~rktlet.pod.sandbox.Sandbox`,
:class:`~rktlet.pod.container.Container`) belong to the reactor thread:
the managers change them there, step by step, while an operation runs.
Every change worth reporting ends in a *commit*: the record is persisted
atomically, then a **snapshot** of it is published — a frozen deep copy
that nobody changes again. Readers on any thread (the gRPC workers serving
``*Status`` and ``List*``, the event subscribers) see only snapshots, so a
reader can never observe a half-made change, and needs no hop to the
reactor and no lock: the published index is replaced, never changed in
place, on each commit (copy on write).

A snapshot is a new object per commit, which makes it a version too: a
cache of what was derived from a snapshot (its protobuf message) is valid
exactly as long as the same snapshot object is current.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any, Callable, Generic, Iterable, TypeVar

from twisted.internet.defer import DeferredLock

from rktlet.errors import NotFound
from rktlet.pod import ids

__all__ = ["Record", "Records", "Snapshots"]


def _plain_copy(value: Any) -> Any:
    """A deep copy of plain data (dicts, lists, scalars): what records hold."""
    if type(value) is dict:
        return {k: _plain_copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_plain_copy(v) for v in value]
    return value


class Record:
    """Base of the pod layer's record dataclasses: :meth:`snapshot` makes a
    frozen copy; assigning to a field of a frozen copy raises
    :class:`dataclasses.FrozenInstanceError`."""

    _frozen = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise FrozenInstanceError(f"cannot assign to field {name!r} of a {type(self).__name__} snapshot")
        object.__setattr__(self, name, value)

    @property
    def frozen(self) -> bool:
        """Whether this is a snapshot (read-only)."""
        return self._frozen

    def snapshot(self: "R") -> "R":
        """A frozen deep copy of this record as it is now."""
        copy = object.__new__(type(self))
        copy.__dict__.update({k: _plain_copy(v) for k, v in self.__dict__.items()})
        object.__setattr__(copy, "_frozen", True)
        return copy


R = TypeVar("R", bound=Record)


class Snapshots(Generic[R]):
    """The published snapshots of one kind of record, by id.

    Written on the reactor thread only (:meth:`publish`, :meth:`withdraw`);
    read from any thread. Each write replaces the index with a new dict, so
    a reader holding the old one iterates it safely.

    :param kind: how errors name the records (``"container"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._current: dict[str, R] = {}

    def publish(self, record: R) -> R:
        """Publish a snapshot of *record* (reactor thread); returns it."""
        snap = record.snapshot()
        current = dict(self._current)
        current[snap.id] = snap  # type: ignore[attr-defined]
        self._current = current
        return snap

    def withdraw(self, record_id: str) -> None:
        """Stop showing the record *record_id* (reactor thread); idempotent."""
        if record_id in self._current:
            current = dict(self._current)
            del current[record_id]
            self._current = current

    def current(self, record_id: str) -> R | None:
        """The snapshot of exactly *record_id*, if published."""
        return self._current.get(record_id)

    def all(self) -> list[R]:
        """Every published snapshot, in no particular order."""
        return list(self._current.values())

    def find(self, id_or_prefix: str, hidden: Callable[[R], bool] | None = None) -> R | None:
        """The snapshot with this id or unique id prefix, if any.

        :param hidden: snapshots that are not to be found (a record whose
            NRI plugins have not agreed yet).
        :raises InvalidArgument: the prefix is ambiguous.
        """
        current = self._current  # one version throughout
        snap = current.get(id_or_prefix)
        if snap is None:
            found = ids.resolve(id_or_prefix, current, self.kind)
            snap = current[found] if found is not None else None
        if snap is not None and hidden is not None and hidden(snap):
            return None
        return snap

    def get(self, id_or_prefix: str, hidden: Callable[[R], bool] | None = None) -> R:
        """Like :meth:`find`; a missing record is :class:`NotFound`."""
        snap = self.find(id_or_prefix, hidden)
        if snap is None:
            raise NotFound(f"{self.kind} {id_or_prefix!r} not found")
        return snap

    def select(self, keep: Callable[[R], bool], candidates: Iterable[R] | None = None) -> list[R]:
        """The snapshots *keep* accepts, oldest first (by ``created_at``)."""
        pool = self._current.values() if candidates is None else candidates
        return sorted((s for s in pool if keep(s)), key=lambda s: s.created_at)  # type: ignore[attr-defined]


class Records(Generic[R]):
    """All the pod layer keeps of one kind of record, in one place: the
    live records by id (reactor thread), the name each reserves (its key:
    ``pod/name/attempt`` for a container), a lock per id for operations
    that must not interleave, the published snapshots (any thread) and the
    commits that persist and publish them.

    Records are written on the reactor thread: a write with its fsyncs
    takes about 1 ms, and ``bench/critest_benchmark.py`` showed the hop to a
    thread and back costing more than that (parallel CreateContainer 0.93x
    → 1.16x containerd's, ContainerStatus 4.8 → 8.4 ms).

    :param kind: how errors name the records (``"container"``).
    :param store: the durable records (``save``/``delete``, blocking).
    :param hidden: live records not to be found or shown yet (NRI).
    """

    def __init__(self, kind: str, store: Any, hidden: Callable[[R], bool] | None = None) -> None:
        self.kind = kind
        #: The live records by id: the reactor's own.
        self.live: dict[str, R] = {}
        self._keys: dict[str, str] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._hidden = hidden or (lambda record: False)
        self.snapshots: Snapshots[R] = Snapshots(kind)
        self._store = store

    def _visible(self, record: R) -> bool:
        return self.live.get(record.id) is record and not self._hidden(record)  # type: ignore[attr-defined]

    def add(self, record: R) -> None:
        """Index a live record (not published: its commit publishes it)."""
        self.live[record.id] = record  # type: ignore[attr-defined]
        self._keys[record.key] = record.id  # type: ignore[attr-defined]

    def by_key(self, key: str) -> R | None:
        """The live record that reserves *key*, if any."""
        record_id = self._keys.get(key)
        return self.live.get(record_id) if record_id is not None else None

    def find(self, id_or_prefix: str) -> R | None:
        """The live record with this id or unique id prefix (hidden ones
        are not found).

        :raises InvalidArgument: the prefix is ambiguous.
        """
        record = self.live.get(id_or_prefix)
        if record is None:
            found = ids.resolve(id_or_prefix, self.live, self.kind)
            record = self.live[found] if found is not None else None
        return None if record is None or self._hidden(record) else record

    def get(self, id_or_prefix: str) -> R:
        """Like :meth:`find`; a missing record is :class:`NotFound`."""
        record = self.find(id_or_prefix)
        if record is None:
            raise NotFound(f"{self.kind} {id_or_prefix!r} not found")
        return record

    def lock(self, record_id: str) -> DeferredLock:
        """The record's operation lock (made on first use)."""
        return self._locks.setdefault(record_id, DeferredLock())

    def commit(self, record: R) -> None:
        """Persist *record* as it is now (atomically), then publish its
        snapshot if it is live and not hidden — persisted before anyone
        sees it. A failed write raises and publishes nothing."""
        self._store.save(record)
        if self._visible(record):
            self.snapshots.publish(record)

    def forget(self, record: R) -> None:
        """Unindex *record* (its key and lock go too), withdraw its snapshot
        and delete its stored record (idempotent)."""
        if self.live.get(record.id) is record:  # type: ignore[attr-defined]
            del self.live[record.id]  # type: ignore[attr-defined]
        if self._keys.get(record.key) == record.id:  # type: ignore[attr-defined]
            del self._keys[record.key]  # type: ignore[attr-defined]
        self._locks.pop(record.id, None)  # type: ignore[attr-defined]
        self.snapshots.withdraw(record.id)  # type: ignore[attr-defined]
        self._store.delete(record.id)  # type: ignore[attr-defined]
