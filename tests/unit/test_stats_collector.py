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
