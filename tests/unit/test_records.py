"""Records, snapshots and the committer (rktlet/pod/records.py): a commit is
persisted in a thread before its snapshot is published, and the steps of one
record keep their order."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from rktlet.pod.records import Committer, Record, Snapshots
from tests.unit.pod_world import InlineThreads, ReactorClock, outcome


@dataclass
class Thing(Record):
    id: str
    created_at: int = 0
    value: int = 0
    tags: list[str] = field(default_factory=list)


class Store:
    """A record store in memory that can be told to fail."""

    def __init__(self) -> None:
        self.saved: dict[str, int] = {}
        self.writes: list[tuple[str, int | None]] = []
        self.fail = False

    def save(self, record: Thing) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.saved[record.id] = record.value
        self.writes.append((record.id, record.value))

    def delete(self, record_id: str) -> None:
        self.saved.pop(record_id, None)
        self.writes.append((record_id, None))


@pytest.fixture
def world():
    threads, store, snapshots = InlineThreads(), Store(), Snapshots("thing")
    live: dict[str, Thing] = {}
    committer = Committer(ReactorClock(), threads, store, snapshots, lambda r: live.get(r.id) is r)
    return threads, store, snapshots, live, committer


def test_a_snapshot_is_a_frozen_deep_copy():
    live = Thing("a", tags=["x"])
    snap = live.snapshot()
    live.value, live.tags[0] = 1, "y"
    assert (snap.value, snap.tags) == (0, ["x"]) and snap.frozen and not live.frozen
    with pytest.raises(FrozenInstanceError):
        snap.value = 2


def test_published_only_once_persisted_and_in_order(world):
    threads, store, snapshots, live, committer = world
    a = live["a"] = Thing("a", value=1)
    threads.hold()
    first = committer.commit(a)
    a.value = 2
    second = committer.commit(a)
    assert snapshots.current("a") is None and store.writes == []  # nothing persisted, nothing shown
    threads.release()
    assert outcome(first) is None and outcome(second) is None
    assert store.writes == [("a", 1), ("a", 2)] and snapshots.current("a").value == 2


def test_a_deletion_waits_for_the_writes_before_it(world):
    threads, store, snapshots, live, committer = world
    a = live["a"] = Thing("a", value=1)
    threads.hold()
    committer.commit(a)
    del live["a"]
    gone = committer.delete("a")
    settled = committer.settled("a")
    assert not settled.called
    threads.release()
    assert outcome(gone) is None and settled.called
    assert store.writes == [("a", 1), ("a", None)] and snapshots.current("a") is None


def test_a_failed_write_publishes_nothing_and_the_next_one_runs(world):
    threads, store, snapshots, live, committer = world
    a = live["a"] = Thing("a", value=1)
    store.fail = True
    failed = outcome(committer.commit(a))
    assert isinstance(failed.value, OSError) and snapshots.current("a") is None
    store.fail = False
    a.value = 3
    assert outcome(committer.commit(a)) is None and snapshots.current("a").value == 3


def test_records_that_are_not_visible_are_persisted_but_not_shown(world):
    threads, store, snapshots, live, committer = world
    hidden = Thing("h", value=5)
    assert outcome(committer.commit(hidden)) is None
    assert store.saved == {"h": 5} and snapshots.current("h") is None
    assert outcome(committer.settled("nothing-queued")) is None
