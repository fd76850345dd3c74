"""Records and snapshots (rktlet/pod/records.py): a commit is persisted
before its snapshot is published; snapshots are frozen copies."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from rktlet.errors import NotFound
from rktlet.pod.records import Record, Records


@dataclass
class Thing(Record):
    id: str
    created_at: int = 0
    value: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"name-{self.id[0]}"


class Store:
    """A record store in memory that can be told to fail."""

    def __init__(self) -> None:
        self.saved: dict[str, int] = {}
        self.fail = False

    def save(self, record: Thing) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.saved[record.id] = record.value

    def delete(self, record_id: str) -> None:
        self.saved.pop(record_id, None)


@pytest.fixture
def world():
    store, hidden = Store(), set()
    return store, hidden, Records("thing", store, hidden=lambda r: r.id in hidden)


def test_a_snapshot_is_a_frozen_deep_copy():
    live = Thing("a", tags=["x"])
    snap = live.snapshot()
    live.value, live.tags[0] = 1, "y"
    assert (snap.value, snap.tags) == (0, ["x"]) and snap.frozen and not live.frozen
    with pytest.raises(FrozenInstanceError):
        snap.value = 2


def test_a_commit_persists_then_publishes(world):
    store, _, records = world
    a = Thing("aa", value=1)
    records.add(a)
    assert records.snapshots.current("aa") is None  # not before its commit
    records.commit(a)
    assert store.saved == {"aa": 1} and records.snapshots.current("aa").value == 1
    a.value = 2
    assert records.snapshots.get("a").value == 1  # the snapshot does not follow the live record
    records.commit(a)
    assert records.snapshots.current("aa").value == 2 and records.by_key("name-a") is a


def test_a_failed_write_publishes_nothing(world):
    store, _, records = world
    a = Thing("aa", value=1)
    records.add(a)
    store.fail = True
    with pytest.raises(OSError):
        records.commit(a)
    assert records.snapshots.current("aa") is None


def test_hidden_or_forgotten_records_are_persisted_but_not_shown(world):
    store, hidden, records = world
    h = Thing("bb", value=5)
    records.add(h)
    hidden.add("bb")
    records.commit(h)
    assert store.saved == {"bb": 5} and records.snapshots.current("bb") is None and records.find("bb") is None
    hidden.clear()
    records.commit(h)
    assert records.find("b") is h
    lock = records.lock("bb")
    records.forget(h)
    assert store.saved == {} and records.snapshots.current("bb") is None and records.by_key("name-b") is None
    assert records.lock("bb") is not lock
    with pytest.raises(NotFound, match="thing 'bb' not found"):
        records.get("bb")
    records.forget(h)  # idempotent
