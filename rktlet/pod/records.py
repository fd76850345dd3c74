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

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred
from twisted.internet.threads import deferToThreadPool

from rktlet.errors import NotFound
from rktlet.pod import ids

__all__ = ["Committer", "Record", "Records", "Snapshots"]


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
        return self.put(record.snapshot())

    def put(self, snap: R) -> R:
        """Publish *snap*, a snapshot already made (reactor thread)."""
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


class Committer(Generic[R]):
    """Commits of one kind of record: each is persisted — in a thread, or
    on the calling (reactor) thread when no thread pool is given — then its
    snapshot is published: persisted before anyone sees it. The commits and deletions
    of one record run one after another, in the order asked (so an older
    state never lands over a newer one, nor a write over a deletion);
    those of different records run side by side.

    Used on the reactor thread.

    :param reactor: the thread handoff.
    :param threadpool: where the writes run; None: at once, on the reactor.
    :param store: ``save(record)`` and ``delete(record_id)``, both blocking.
    :param snapshots: where snapshots are published.
    :param visible: whether a record committed now is to be shown (e.g.
        not while NRI plugins have not agreed to it, nor once forgotten).
    """

    def __init__(self, reactor: Any, threadpool: Any, store: Any, snapshots: Snapshots[R],
                 visible: Callable[[R], bool]) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._store = store
        self._snapshots = snapshots
        self._visible = visible
        # Per record id: a Deferred firing (with None, never failing) when
        # the last step queued for it is over.
        self._tails: dict[str, Deferred] = {}

    def commit(self, record: R) -> Deferred:
        """Persist *record* as it is now, then publish it (if visible then).
        Fires when done; fails with the write's error (nothing published)."""
        snap = record.snapshot()

        def publish(_: Any) -> None:
            if self._visible(record):
                self._snapshots.put(snap)

        def work() -> Deferred:
            d = self._blocking(self._store.save, snap)
            d.addCallback(publish)
            return d

        return self._enqueue(snap.id, work)  # type: ignore[attr-defined]

    def delete(self, record_id: str) -> Deferred:
        """Withdraw the record's snapshot now and delete the record once
        the steps queued before are over; fires when it is deleted."""
        self._snapshots.withdraw(record_id)

        def work() -> Deferred:
            d = self._blocking(self._store.delete, record_id)
            d.addCallback(lambda _: self._snapshots.withdraw(record_id))  # None: a commit may have published meanwhile
            return d

        return self._enqueue(record_id, work)

    def settled(self, record_id: str) -> Deferred:
        """Fires once every step queued so far for the record is over."""
        done: Deferred = Deferred()
        tail = self._tails.get(record_id)
        if tail is None:
            done.callback(None)
        else:
            tail.addCallback(lambda _: done.callback(None))
        return done

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        if self._threadpool is None:
            return maybeDeferred(fn, *args)
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def _enqueue(self, record_id: str, work: Callable[[], Deferred]) -> Deferred:
        result: Deferred = Deferred()
        link: Deferred = Deferred()
        previous = self._tails.get(record_id)
        self._tails[record_id] = link

        def run(_: Any = None) -> None:
            def over(outcome: Any) -> None:
                if self._tails.get(record_id) is link:
                    del self._tails[record_id]
                link.callback(None)
                result.callback(outcome)  # a Failure errbacks the caller's Deferred

            maybeDeferred(work).addBoth(over)

        if previous is None:
            run()
        else:
            previous.addCallback(run)
        return result


class Records(Generic[R]):
    """All the pod layer keeps of one kind of record, in one place: the
    live records by id (reactor thread), the name each reserves (its key:
    ``pod/name/attempt`` for a container), a lock per id for operations
    that must not interleave, the published snapshots (any thread) and the
    commits that persist and publish them.

    :param kind: how errors name the records (``"container"``).
    :param reactor: the thread handoff (commits).
    :param threadpool: where record writes run; None: on the reactor.
    :param store: the durable records (``save``/``delete``, blocking).
    :param hidden: live records not to be found or shown yet (NRI).
    """

    def __init__(self, kind: str, reactor: Any, threadpool: Any, store: Any,
                 hidden: Callable[[R], bool] | None = None) -> None:
        self.kind = kind
        #: The live records by id: the reactor's own.
        self.live: dict[str, R] = {}
        self._keys: dict[str, str] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._hidden = hidden or (lambda record: False)
        self.snapshots: Snapshots[R] = Snapshots(kind)
        self._committer: Committer[R] = Committer(reactor, threadpool, store, self.snapshots, self._visible)

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

    def commit(self, record: R) -> Deferred:
        """Persist *record* as it is now, then publish it (see :class:`Committer`)."""
        return self._committer.commit(record)

    def settled(self, record_id: str) -> Deferred:
        """Fires once the record's commits so far are persisted."""
        return self._committer.settled(record_id)

    def forget(self, record: R) -> Deferred:
        """Unindex *record* (its key and lock go too) and withdraw its
        snapshot now; fires once its record is deleted from the store."""
        if self.live.get(record.id) is record:  # type: ignore[attr-defined]
            del self.live[record.id]  # type: ignore[attr-defined]
        if self._keys.get(record.key) == record.id:  # type: ignore[attr-defined]
            del self._keys[record.key]  # type: ignore[attr-defined]
        self._locks.pop(record.id, None)  # type: ignore[attr-defined]
        return self._committer.delete(record.id)  # type: ignore[attr-defined]
