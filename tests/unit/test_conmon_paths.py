"""Pure parts of the conmon and runc drivers: the files conmon makes, exit
file and sync message parsing, ctl FIFO lines, runc error cleanup, and the
OCIRuntime call shapes against a fake process reactor (no real process, no
global reactor)."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci.conmon import (
    CTL_REOPEN_LOG,
    CTL_RESIZE,
    Conmon,
    ExitStatus,
    MonitorPaths,
    ctl_message,
    monitor_paths,
    parse_exit_file,
    parse_sync_message,
)
from rktlet.oci.runtime import OCIRuntime, clean_message

CID = "0123456789abcdef" * 4


# -- MonitorPaths ------------------------------------------------------------

def test_paths_derivation():
    p = monitor_paths("/var/lib/rktlet/c/x/bundle", "/run/rktlet/exits", "/run/rktlet/s", CID)
    assert p == MonitorPaths(
        bundle="/var/lib/rktlet/c/x/bundle",
        exit_file=f"/run/rktlet/exits/{CID}",
        attach_socket=f"/run/rktlet/s/{CID}/attach",
        ctl_fifo="/var/lib/rktlet/c/x/bundle/ctl",
        oom_files=("/var/lib/rktlet/c/x/bundle/oom",),  # cwd and persist dir are both the bundle
        pid_file="/var/lib/rktlet/c/x/bundle/pidfile",
        socket_link=f"/run/rktlet/s/{CID}",
        winsz_fifo="/var/lib/rktlet/c/x/bundle/winsz",
        persist_exit_file="/var/lib/rktlet/c/x/bundle/exit",
        bundle_socket="/var/lib/rktlet/c/x/bundle/attach",
        conmon_pid_file="/var/lib/rktlet/c/x/bundle/conmon.pid",
    )
    assert len(p.attach_socket) < 108
    assert p.files() == (
        p.exit_file, p.persist_exit_file, p.socket_link, p.bundle_socket,
        p.ctl_fifo, p.winsz_fifo, p.pid_file, p.conmon_pid_file, "/var/lib/rktlet/c/x/bundle/oom",
    )


def test_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = monitor_paths("b", "e", "s", "c1")
    assert p.bundle == str(tmp_path / "b")
    assert p.exit_file == str(tmp_path / "e" / "c1")
    assert p.socket_link == str(tmp_path / "s" / "c1")


def test_conmon_paths_use_its_dirs():
    conmon = Conmon(object(), OCIRuntime(object(), "/usr/sbin/runc", "/run/r"), "/usr/bin/conmon",
                    exits_dir="/run/x/exits", socket_dir="/run/x/s")
    assert conmon.paths("c1", "/b") == monitor_paths("/b", "/run/x/exits", "/run/x/s", "c1")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a b", "x\n", "é"])
def test_paths_refuse_ids_that_are_not_names(bad):
    with pytest.raises(InvalidArgument, match="container id"):
        monitor_paths("/b", "/e", "/s", bad)


def test_conmon_needs_its_dirs():
    with pytest.raises(ValueError):
        Conmon(object(), OCIRuntime(object(), "runc", "/r"))


# -- exit files --------------------------------------------------------------

@pytest.mark.parametrize("content, code", [
    (b"0", 0), (b"3", 3), (b"137", 137),  # SIGKILL: 128 + 9
    (b"143", 143),  # SIGTERM: 128 + 15
    (b"-1", -1),  # conmon's own --timeout
    ("42\n", 42), (b" 7 ", 7),
    (b"", None), (b"abc", None), (b"1.5", None), (b"99999999999", None),
])
def test_parse_exit_file(content, code):
    assert parse_exit_file(content) == code


def _conmon(tmp_path) -> Conmon:
    return Conmon(object(), OCIRuntime(object(), "/usr/sbin/runc", str(tmp_path / "runc")), "/usr/bin/conmon",
                  exits_dir=str(tmp_path / "exits"), socket_dir=str(tmp_path / "s"))


def test_read_exit(tmp_path):
    conmon = _conmon(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "exits").mkdir()
    assert conmon.read_exit("c1", str(bundle)) is None
    exit_file = tmp_path / "exits" / "c1"
    exit_file.write_bytes(b"")
    assert conmon.read_exit("c1", str(bundle)) is None  # nothing written yet
    exit_file.write_bytes(b"137")
    os.utime(exit_file, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    assert conmon.read_exit("c1", str(bundle)) == (137, 1_700_000_000_123_456_789, False)
    (bundle / "oom").touch()
    status = conmon.read_exit("c1", str(bundle))
    assert status == ExitStatus(137, 1_700_000_000_123_456_789, True)
    assert status.oom_killed


def test_cleanup_removes_everything_and_is_idempotent(tmp_path):
    conmon = _conmon(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    paths = conmon.paths("c1", str(bundle))
    os.makedirs(conmon.exits_dir)
    os.makedirs(conmon.socket_dir)
    for path in (paths.exit_file, paths.persist_exit_file, paths.pid_file, paths.conmon_pid_file, *paths.oom_files):
        with open(path, "w") as f:
            f.write("1")
    for fifo in (paths.ctl_fifo, paths.winsz_fifo):
        os.mkfifo(fifo)
    os.symlink(str(bundle), paths.socket_link)
    conmon.cleanup(paths)
    conmon.cleanup(paths)
    assert sorted(os.listdir(bundle)) == ["config.json"]
    assert os.listdir(conmon.exits_dir) == [] and os.listdir(conmon.socket_dir) == []


# -- ctl FIFO ------------------------------------------------------------------

def test_ctl_messages():
    assert ctl_message(CTL_RESIZE, 40, 120) == b"1 40 120\n"  # height (rows) first
    assert ctl_message(CTL_REOPEN_LOG, 0, 0) == b"2 0 0\n"
    for bad in ((1, -1, 80), (1, 24, True), (1, 24.0, 80), (-2, 0, 0)):
        with pytest.raises(InvalidArgument):
            ctl_message(*bad)


def test_ctl_writes_one_line_per_write(tmp_path):
    conmon = _conmon(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    paths = conmon.paths("c1", str(bundle))
    with pytest.raises(RuntimeFailure, match="^container is not running$"):
        conmon.reopen_log(paths)  # no FIFO at all
    os.mkfifo(paths.ctl_fifo)
    with pytest.raises(RuntimeFailure, match="^container is not running$"):
        conmon.resize(paths, 24, 80)  # nobody reads it (ENXIO, never blocks)
    reader = os.open(paths.ctl_fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        conmon.resize(paths, 24, 80)
        assert os.read(reader, 100) == b"1 24 80\n"
        conmon.reopen_log(paths)
        assert os.read(reader, 100) == b"2 0 0\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(paths.ctl_fifo).st_mode)


# -- runc messages -----------------------------------------------------------

def test_clean_message_strips_logrus_framing():
    err = b'time="2026-11-29T13:04:06Z" level=error msg="container does not exist"\n'
    assert clean_message(err) == "container does not exist"


def test_clean_message_unquotes_go_strings():
    err = (
        'time="2026-11-29T13:04:06Z" level=error msg="runc create failed: unable to start container process: '
        'exec: \\"nosuch\\": executable file not found in $PATH"\n'
    )
    assert clean_message(err) == (
        'runc create failed: unable to start container process: exec: "nosuch": executable file not found in $PATH'
    )
    assert clean_message('time="x" level=error msg="a\\tb\\nc \\\\ \\u00e9"') == "a\tb\nc \\ é"


def test_clean_message_prefers_errors_and_keeps_plain_text():
    err = (
        'time="t" level=warning msg="cgroup v1 is deprecated"\n'
        'time="t" level=error msg="first"\n'
        '\n'
        'time="t" level=fatal msg="second"\n'
    )
    assert clean_message(err) == "first; second"
    assert clean_message('time="t" level=warning msg="only a warning"') == "only a warning"
    assert clean_message("crun: container `x` does not exist\n") == "crun: container `x` does not exist"
    assert clean_message(b"") == ""
    assert clean_message(b"time=bare level=error msg=unquoted") == "unquoted"


def test_parse_sync_message():
    assert parse_sync_message(b'{"pid": 23116}\n') == (23116, "")
    runc_err = json.dumps({
        "pid": -1,
        "message": 'time="2026-11-29T13:04:06Z" level=error msg="runc create failed: unable to start container '
                   'process: exec: \\"x\\": executable file not found in $PATH"\n',
    })
    pid, message = parse_sync_message(runc_err.encode() + b"\n")
    assert pid == -1
    assert message == 'runc create failed: unable to start container process: exec: "x": executable file not found in $PATH'
    for bad in (b"garbage\n", b"[1]\n", b'{"exit_code": 1}\n', b'{"pid": "1"}\n', b'{"pid": true}\n'):
        with pytest.raises(RuntimeFailure, match="conmon sent"):
            parse_sync_message(bad)


# -- OCIRuntime against a fake process reactor --------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)

    def loseConnection(self) -> None:
        pass


class FakeProcessReactor(Clock):
    """Records spawnProcess calls; each is answered by the next scripted
    reply ``(exit code, stdout, stderr)``, or left running if None."""

    def __init__(self, replies: list[tuple[int, bytes, bytes] | None]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, **kwargs):
        transport = FakeTransport()
        self.spawned.append({"executable": executable, "args": args, "env": env, "path": path,
                           "transport": transport, "proto": proto})
        proto.makeConnection(transport)
        reply = self.replies.pop(0)
        if reply is not None:
            code, out, err = reply
            if out:
                proto.outReceived(out)
            if err:
                proto.errReceived(err)
            proto.processEnded(Failure(ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)))
        return transport


def _result(d):
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not finish"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _run(reactor, coro):
    from twisted.internet.defer import ensureDeferred
    return _result(ensureDeferred(coro))


def _err(message: str) -> bytes:
    return f'time="2026-11-29T13:04:06Z" level=error msg="{message}"\n'.encode()


def test_runtime_argv_root_first_and_no_cwd():
    reactor = FakeProcessReactor([(0, b"", b"")])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/run/rktlet/runc")
    _run(reactor, runtime.start("c1"))
    call = reactor.spawned[0]
    assert call["args"] == ["/usr/sbin/runc", "--root=/run/rktlet/runc", "start", "c1"]
    assert call["executable"] == "/usr/sbin/runc"
    assert call["path"] is None  # posix_spawn, not fork
    assert set(call["env"]) == {"PATH"}
    assert call["transport"].stdin_closed


def test_runtime_failures_carry_runc_words():
    reactor = FakeProcessReactor([(1, b"", _err("cannot start a container that has stopped"))])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    with pytest.raises(RuntimeFailure) as info:
        _run(reactor, runtime.start("c1"))
    assert str(info.value) == "runc start c1: cannot start a container that has stopped"


def test_kill_ignores_stopped_and_absent_containers():
    reactor = FakeProcessReactor([
        (1, b"", _err("container not running")),
        (1, b"", _err("container does not exist")),
        (0, b"", b""),
        (1, b"", _err("permission denied")),
    ])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    _run(reactor, runtime.kill("c1"))
    _run(reactor, runtime.kill("c1", "TERM"))
    _run(reactor, runtime.kill("c1", "TERM", all_processes=True))
    assert reactor.spawned[0]["args"][2:] == ["kill", "c1", "KILL"]
    assert reactor.spawned[2]["args"][2:] == ["kill", "--all", "c1", "TERM"]
    with pytest.raises(RuntimeFailure, match="permission denied"):
        _run(reactor, runtime.kill("c1"))


def test_delete_is_idempotent():
    reactor = FakeProcessReactor([
        (1, b"", _err("container does not exist")),
        (1, b"", _err("cannot delete container c1 that is not stopped: running")),
    ])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    _run(reactor, runtime.delete("c1"))
    assert reactor.spawned[0]["args"][2:] == ["delete", "--force", "c1"]
    with pytest.raises(RuntimeFailure, match="not stopped"):
        _run(reactor, runtime.delete("c1", force=False))
    assert reactor.spawned[1]["args"][2:] == ["delete", "c1"]


def test_state():
    state = {"ociVersion": "1.0.2-dev", "id": "c1", "pid": 42, "status": "running", "bundle": "/b"}
    reactor = FakeProcessReactor([
        (0, json.dumps(state).encode(), b""),
        (1, b"", _err("container does not exist")),
        (0, b"not json", b""),
    ])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    assert _run(reactor, runtime.state("c1")) == state
    assert _run(reactor, runtime.state("c1")) is None
    with pytest.raises(RuntimeFailure, match="unreadable"):
        _run(reactor, runtime.state("c1"))


def test_update_sends_resources_on_stdin():
    reactor = FakeProcessReactor([(0, b"", b"")])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    resources = {"memory": {"limit": 1 << 26}, "cpu": {"shares": 512}}
    _run(reactor, runtime.update("c1", resources))
    call = reactor.spawned[0]
    assert call["args"][2:] == ["update", "--resources", "-", "c1"]
    assert json.loads(call["transport"].stdin) == resources


def test_run_times_out_and_kills():
    from twisted.internet.defer import ensureDeferred

    reactor = FakeProcessReactor([None])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r", timeout=5)
    d = ensureDeferred(runtime.start("c1"))
    reactor.advance(4.9)
    assert not d.called
    reactor.advance(0.2)
    call = reactor.spawned[0]
    assert call["transport"].signals == ["KILL"]
    call["proto"].processEnded(Failure(ProcessTerminated(signal=9)))
    with pytest.raises(RuntimeFailure, match="timed out after 5s"):
        _result(d)


def test_run_returns_nonzero_exit_codes():
    reactor = FakeProcessReactor([(2, b"out", b"err")])
    runtime = OCIRuntime(reactor, "/usr/sbin/runc", "/r")
    assert _run(reactor, runtime.run("features")) == (2, b"out", b"err")


# -- adoption, with /proc polling (no pidfds) and a fake clock ----------------

class FakeProcs:
    """Stands in for /proc: which pids are alive."""

    def __init__(self, *alive: int) -> None:
        self.alive = set(alive)

    def __call__(self, pid: int, comm: str | None = None) -> bool:
        return pid in self.alive


@pytest.fixture
def polled(monkeypatch, tmp_path):
    """A Conmon on a Clock whose process watches poll fake /proc."""
    from rktlet.oci import procwatch

    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    procs = FakeProcs()
    monkeypatch.setattr(procwatch.os, "pidfd_open", no_pidfd)
    monkeypatch.setattr(procwatch, "alive", procs)
    monkeypatch.setattr(procwatch, "_reap", lambda pid, pidfd: None)  # the fake pids are nobody's children
    clock = Clock()
    clock.advance(1_700_000_000)
    conmon = Conmon(clock, OCIRuntime(clock, "/usr/sbin/runc", str(tmp_path / "r")), "/usr/bin/conmon",
                    exits_dir=str(tmp_path / "exits"), socket_dir=str(tmp_path / "s"), poll_interval=0.5)
    os.makedirs(conmon.exits_dir)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return conmon, clock, procs, str(bundle)


def test_adopt_fires_at_once_from_an_exit_file(polled):
    conmon, clock, procs, bundle = polled
    with open(os.path.join(conmon.exits_dir, "c1"), "w") as f:
        f.write("4")
    monitor = conmon.adopt("c1", bundle, 100, 101)
    assert monitor.adopted and not monitor.conmon_exited
    assert _result(monitor.exited)[0] == 4


def test_adopt_waits_for_conmon_then_reads_the_exit_file(polled):
    conmon, clock, procs, bundle = polled
    procs.alive |= {100, 101}
    monitor = conmon.adopt("c1", bundle, 100, 101)
    first, second = monitor.exited, monitor.exited
    clock.advance(2)
    assert not first.called and monitor.running
    with open(os.path.join(conmon.exits_dir, "c1"), "w") as f:
        f.write("137")
    open(os.path.join(bundle, "oom"), "w").close()
    procs.alive -= {100, 101}
    clock.advance(0.5)
    status = _result(first)
    assert status[::2] == (137, True)
    assert _result(second) == status == monitor.status
    assert not monitor.lost


def test_adopt_without_exit_file_waits_for_the_container(polled):
    conmon, clock, procs, bundle = polled
    procs.alive |= {101}  # conmon was killed; its container runs on
    monitor = conmon.adopt("c1", bundle, 100, 101)
    clock.advance(0)
    clock.advance(5)
    assert not monitor.exited.called
    procs.alive.clear()
    clock.advance(0.5)
    code, finished_at, oom = _result(monitor.exited)
    assert (code, oom, monitor.lost) == (255, False, True)
    assert finished_at == int(clock.seconds() * 1e9)


def test_stop_watching(polled):
    conmon, clock, procs, bundle = polled
    procs.alive |= {100}
    monitor = conmon.adopt("c1", bundle, 100, 101)
    conmon.close()
    procs.alive.clear()
    clock.advance(5)
    assert not monitor.exited.called and not clock.getDelayedCalls()
