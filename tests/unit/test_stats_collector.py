"""What the statistics collector keeps for removed containers and pods goes."""

from __future__ import annotations

from types import SimpleNamespace

from rktlet.pod.stats import StatsCollector


class Spy:
    def __init__(self):
        self.forgotten = []

    def forget(self, key):
        self.forgotten.append(key)


def test_removed_containers_and_pods_are_forgotten():
    containers = SimpleNamespace(containers={"c1": object(), "c2": object()})
    sandboxes = SimpleNamespace(sandboxes={"p1": object()})
    collector = StatsCollector(reactor=None, threadpool=None, layout=None, containers=containers, sandboxes=sandboxes)
    collector._rates, collector._usage = Spy(), Spy()
    collector._kept = {"c1": "/l/c1/upper", "c2": "/l/c2/upper", "pod:p1": "", "pod:p2": ""}
    del containers.containers["c2"]
    collector._prune()
    assert sorted(collector._rates.forgotten) == ["c2", "pod:p2"]
    assert collector._usage.forgotten == ["/l/c2/upper"]
    assert collector._kept == {"c1": "/l/c1/upper", "pod:p1": ""}


class UsageSpy(Spy):
    def __init__(self):
        super().__init__()
        self.refreshed = []

    def get(self, path):
        self.refreshed.append(path)


def test_what_a_read_on_another_thread_used_is_kept_unless_removed_meanwhile():
    """The stats lists are read on gRPC worker threads; the reactor hears
    afterwards what they used. A container removed while the read ran is
    forgotten at once, its layer not measured again."""
    containers = SimpleNamespace(containers={"c1": object()})
    sandboxes = SimpleNamespace(sandboxes={"p1": object()})
    collector = StatsCollector(reactor=None, threadpool=None, layout=None, containers=containers, sandboxes=sandboxes)
    collector._rates, collector._usage = Spy(), UsageSpy()
    collector._kept_after_read({"c1": "/l/c1/upper", "c2": "/l/c2/upper", "pod:p1": ""})
    assert collector._kept == {"c1": "/l/c1/upper", "pod:p1": ""}
    assert collector._rates.forgotten == ["c2"]
    assert collector._usage.forgotten == ["/l/c2/upper"]
    assert collector._usage.refreshed == ["/l/c1/upper"]
