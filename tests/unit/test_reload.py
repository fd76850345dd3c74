"""Reloading the configuration (SIGHUP): the diff, the reloader on a fake
reactor, and the image manager's settings swap (pulls in flight keep theirs).
No root, no daemon."""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from rktlet import config, logs, reload
from rktlet.errors import DeadlineExceeded
from rktlet.image.registry import RegistryClient
from rktlet.image.settings import PullSettings
from tests.unit.test_image_manager import Env, FakeRegistry, failure_of, result_of


def write(path: Any, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- diff ----------------------------------------------------------------------------------


def test_nothing_changed():
    running = config.Config(log_level="debug")
    assert reload.diff(running, running) == reload.Diff()


def test_reloadable_and_restart_changes_are_told_apart():
    running = config.Config()
    wanted = config.Config(
        registry_mirror=("docker.io=http://127.0.0.1:5000",), insecure_registry=("reg.local:5000",),
        pull_progress_timeout=30.0, log_level="debug", log_format="json", root="/elsewhere", grpc_workers=4,
    )
    d = reload.diff(running, wanted)
    assert {c.key for c in d.applied} == {"registry-mirror", "insecure-registry", "pull-progress-timeout",
                                          "log-level", "log-format"}
    assert [(c.key, c.old, c.new) for c in d.need_restart] == [("root", "/var/lib/rktlet", "/elsewhere"),
                                                               ("grpc-workers", 128, 4)]
    result = d.result(running)
    assert result.log_level == "debug" and result.mirrors == {"docker.io": ["http://127.0.0.1:5000"]}
    assert result.root == "/var/lib/rktlet" and result.grpc_workers == 128  # not applied


def test_flags_keep_precedence_and_are_reported_as_shadowing(tmp_path):
    path = write(tmp_path / "c.toml", 'log-level = "info"\n')
    running = config.load({"log-level": "debug", "socket": None}, path)
    assert running.command_line == {"log-level"} and running.log_level == "debug"
    write(tmp_path / "c.toml", 'log-level = "error"\npull-progress-timeout = "1m"\n')
    values = config.read_file(path)
    wanted = config.reread(running, values)
    assert wanted.log_level == "debug"  # the flag still wins
    d = reload.diff(running, wanted, values)
    assert [(c.key, c.new) for c in d.applied] == [("pull-progress-timeout", 60.0)]
    assert d.shadowed == ("log-level",)


def test_an_option_removed_from_the_file_returns_to_its_default(tmp_path):
    path = write(tmp_path / "c.toml", 'insecure-registry = ["a:1"]\n')
    running = config.load({}, path)
    write(tmp_path / "c.toml", "")
    d = reload.diff(running, config.reread(running))
    assert [(c.key, c.old, c.new) for c in d.applied] == [("insecure-registry", ("a:1",), ())]


# -- the reloader -----------------------------------------------------------------------------


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[[], Any]] = []

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        self.from_thread.append(lambda: fn(*args))


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    level = logs.level()
    logs.set_level("info")
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)
        logs.set_level(level)


def messages(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    from twisted.logger import formatEvent

    return [(e["log_level"].name, formatEvent(e)) for e in events if e.get("log_namespace") == "rktlet.reload"]


class Threads:
    """deferToThreadPool that runs at once, or holds the call."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[Deferred, Callable[[], Any]]] = []
        self.calls = 0

    def __call__(self, reactor: Any, pool: Any, fn: Callable[..., Any], *args: Any) -> Deferred:
        self.calls += 1
        if self.hold:
            d: Deferred = Deferred()
            self.held.append((d, lambda: fn(*args)))
            return d
        return maybeDeferred(fn, *args)


@pytest.fixture
def threads(monkeypatch) -> Threads:
    t = Threads()
    monkeypatch.setattr(reload, "deferToThreadPool", t)
    return t


def make_reloader(tmp_path: Any, text: str, **flags: Any) -> tuple[reload.Reloader, list[config.Config], str]:
    path = write(tmp_path / "rktlet.toml", text)
    applied: list[config.Config] = []
    running = config.load(flags, path)
    return reload.Reloader(FakeReactor(), None, running, applied.append), applied, path


def test_reload_applies_and_logs_what_changed(tmp_path, threads, events):
    reloader, applied, path = make_reloader(tmp_path, 'pull-progress-timeout = "5m"\n')
    write(tmp_path / "rktlet.toml", 'pull-progress-timeout = "30s"\nregistry-mirror = ["docker.io=http://m:1"]\n'
                                    'root = "/other"\n')
    result_of(reloader.reload())
    [new] = applied
    assert new.pull_progress_timeout == 30.0 and new.registry_mirror == ("docker.io=http://m:1",)
    assert new.root == "/var/lib/rktlet"
    assert reloader.config is new
    said = messages(events)
    assert ("info", "SIGHUP: pull-progress-timeout changed from 300.0 to 30.0") in said
    assert ("info", "SIGHUP: registry-mirror changed from [] to ['docker.io=http://m:1']") in said
    assert ("warn", f"SIGHUP: root changed in {path} (from /var/lib/rktlet to /other) but takes effect only "
                    "after a restart") in said
    # Read again unchanged: nothing applied, the restart still reported.
    events.clear()
    result_of(reloader.reload())
    assert len(applied) == 1
    assert [level for level, _ in messages(events)] == ["warn"]


def test_a_broken_file_keeps_the_running_configuration(tmp_path, threads, events):
    reloader, applied, path = make_reloader(tmp_path, 'log-level = "info"\n')
    running = reloader.config
    for text, words in (('log-level = "loud"\n', "option 'log-level'"), ("log-level = \n", "not valid TOML"),
                        ('no-such-key = 1\n', "unknown key")):
        write(tmp_path / "rktlet.toml", text)
        events.clear()
        result_of(reloader.reload())
        assert applied == [] and reloader.config is running
        [(level, message)] = messages(events)
        assert level == "error" and words in message and message.endswith("the running configuration is kept")
    os.unlink(path)
    events.clear()
    result_of(reloader.reload())
    assert reloader.config is running and "cannot read config file" in messages(events)[0][1]


def test_no_config_file(tmp_path, threads, events):
    applied: list[config.Config] = []
    reloader = reload.Reloader(FakeReactor(), None, config.load({}), applied.append)
    result_of(reloader.reload())
    assert applied == [] and threads.calls == 0
    assert "no configuration file" in messages(events)[0][1]


def test_reloads_asked_for_meanwhile_are_done_once_after(tmp_path, threads, events):
    reloader, applied, _ = make_reloader(tmp_path, "")
    threads.hold = True
    first = reloader.reload()
    write(tmp_path / "rktlet.toml", 'log-format = "json"\n')
    assert reloader.reload() is first and reloader.reload() is first
    assert threads.calls == 1
    d, run = threads.held.pop()
    d.callback(run())
    assert threads.calls == 2  # once more, for the signals that came meanwhile
    write(tmp_path / "rktlet.toml", 'log-format = "text"\n')
    d, run = threads.held.pop()
    d.callback(run())
    result_of(first)
    assert [c.log_format for c in applied] == ["json", "text"]
    assert threads.calls == 2


def test_sighup_only_hands_over_to_the_reactor(tmp_path, threads):
    reloader, applied, _ = make_reloader(tmp_path, "")
    reactor = reloader._reactor
    before = signal.getsignal(signal.SIGHUP)
    reloader.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert len(reactor.from_thread) == 1 and threads.calls == 0  # nothing done in the handler
        write(tmp_path / "rktlet.toml", 'log-level = "warn"\n')
        reactor.from_thread.pop()()
        assert [c.log_level for c in applied] == ["warn"]
    finally:
        reloader.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


# -- the image manager's settings --------------------------------------------------------------


class ReconfigurableRegistry(FakeRegistry):
    """A fake registry whose reconfigured() gives another one serving the same images."""

    def __init__(self, mirrors: Any = None) -> None:
        super().__init__()
        self.mirrors = mirrors
        self.made: list[ReconfigurableRegistry] = []

    def reconfigured(self, is_insecure: Any = None, mirrors: Any = None) -> "ReconfigurableRegistry":
        other = ReconfigurableRegistry(mirrors if mirrors is not None else self.mirrors)
        other.manifests, other.blobs = self.manifests, self.blobs
        self.made.append(other)
        return other

    def shares_connections_with(self, other: Any) -> bool:
        return False


def test_pulls_in_flight_keep_their_settings_new_pulls_take_the_new_ones(tmp_path):
    env = Env(tmp_path, timeout=60)
    old_registry = env.registry = ReconfigurableRegistry()
    env.manager._setup = type(env.manager._setup)(PullSettings(progress_timeout=60), old_registry)
    ref_a, image_a = env.image("a", "1")
    ref_b, image_b = env.image("b", "2")
    old_registry.hold_digests.update(layer.digest for layer in image_a.layers + image_b.layers)
    first = env.manager.pull(ref_a)
    settings = PullSettings(mirrors=(("registry.test", ("http://127.0.0.1:1",)),), progress_timeout=10)
    env.manager.configure(settings)
    assert env.manager.settings is settings
    [new_registry] = old_registry.made
    assert new_registry.mirrors == {"registry.test": ["http://127.0.0.1:1"]}
    new_registry.hold_digests = old_registry.hold_digests
    second = env.manager.pull(ref_b)
    assert image_b.layers[0].digest in new_registry.held and image_b.layers[0].digest not in old_registry.held
    env.clock.advance(20)  # past the new timeout, not the old one
    assert isinstance(failure_of(second), DeadlineExceeded)
    assert not first.called
    old_registry.release(image_a.layers[0].digest)
    result_of(first)
    env.assert_complete(image_a)


def test_same_settings_change_nothing(tmp_path):
    env = Env(tmp_path)
    setup = env.manager._setup
    env.manager.configure(setup.settings)
    assert env.manager._setup is setup


def test_registry_client_reconfigured_shares_connections_only_with_the_same_insecure_registries():
    clock = Clock()
    settings = PullSettings(insecure_registries=frozenset({"a:1"}))
    client = RegistryClient(clock, settings.is_insecure, {"docker.io": ["http://m1/"]})
    mirrors_only = client.reconfigured(mirrors={"docker.io": ["http://m2"]})
    assert mirrors_only.shares_connections_with(client)
    assert [s.base for s in mirrors_only._sources(_ref("docker.io/library/x:1"), None)][0] == "http://m2"
    assert [s.base for s in client._sources(_ref("docker.io/library/x:1"), None)][0] == "http://m1"
    other = client.reconfigured(is_insecure=PullSettings().is_insecure)
    assert not other.shares_connections_with(client)
    assert client._transport._is_insecure("a:1") and not other._transport._is_insecure("a:1")


def _ref(text: str) -> Any:
    from rktlet.image.reference import parse

    return parse(text)


def test_pull_settings_from_config():
    c = config.Config(insecure_registry=("r:5000",), registry_mirror=("docker.io=http://a", "docker.io=http://b"),
                      pull_progress_timeout=12.0)
    s = PullSettings.from_config(c)
    assert s.mirror_map() == {"docker.io": ["http://a", "http://b"]}
    assert s.is_insecure("r:5000") and s.is_insecure("127.0.0.1:80") and not s.is_insecure("r:5001")
    assert s.progress_timeout == 12.0
    assert hash(s) == hash(PullSettings.from_config(c))  # immutable, comparable
