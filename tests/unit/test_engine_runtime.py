"""The engine's runtime-wide answers: version, conditions, pod CIDR."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import Deferred

from rktlet import config
from rktlet.errors import InvalidArgument
from rktlet.pod.engine import Engine


class InlineThreads:
    """Runs "threaded" work inline: deferToThreadPool needs only callInThread."""

    def callInThreadWithCallback(self, onResult, fn, *args, **kwargs):
        try:
            onResult(True, fn(*args, **kwargs))
        except Exception as e:  # pragma: no cover - passed through
            from twisted.python.failure import Failure

            onResult(False, Failure(e))


class ImmediateReactor:
    def __init__(self):
        self.when_running = []

    def callFromThread(self, fn, *args, **kwargs):
        fn(*args, **kwargs)

    def callWhenRunning(self, fn, *args, **kwargs):
        self.when_running.append((fn, args, kwargs))  # start-up work is not this test's


@pytest.fixture
def engine(tmp_path):
    c = config.load({"root": str(tmp_path / "root"), "run-dir": str(tmp_path / "run"), "cni-conf-dir": str(tmp_path / "net.d")})
    e = Engine(c, ImmediateReactor(), InlineThreads())
    e.load()
    return e


def test_version(engine):
    assert engine.version()[0::2] == ("rktlet", "v1")


def test_conditions_without_network(engine):
    runtime, network = engine.conditions()
    assert (runtime.type, runtime.status) == ("RuntimeReady", True)
    assert (network.type, network.status, network.reason) == ("NetworkReady", False, "NetworkPluginNotReady")


def test_pod_cidr_is_validated_and_persisted(engine, tmp_path):
    engine.update_pod_cidr("10.244.0.0/24, fd00:10::/64")
    assert engine.pod_cidrs == ("10.244.0.0/24", "fd00:10::/64")
    saved = json.loads((tmp_path / "root" / "runtime.json").read_text())
    assert saved["pod_cidrs"] == ["10.244.0.0/24", "fd00:10::/64"]
    with pytest.raises(InvalidArgument, match=r"pod_cidr: '10.0.0.0/33'"):
        engine.update_pod_cidr("10.0.0.0/33")
    engine.update_pod_cidr("")  # the kubelet may send none: keep what we have
    again = Engine(engine.config, ImmediateReactor(), InlineThreads())
    again.load()
    assert again.pod_cidrs == ("10.244.0.0/24", "fd00:10::/64")
    infos = []
    Deferred.fromCoroutine(again.status_info()).addCallback(infos.append)
    assert infos[0]["runtimeConfig"]["podCIDRs"] == ["10.244.0.0/24", "fd00:10::/64"]
    assert infos[0]["cni"]["config"] is None


