"""Exec's process handling without root or containers: a fake ``runc``
(a Python script) runs the process spec's command on the host the way
``runc exec`` does — in a session of its own, with the pid written to
``--pid-file``, errors logged as JSON to ``--log``; with ``--detach`` it
exits at once and the command is handed to rktlet's reaper. Real
processes under the real reactor."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import DeadlineExceeded, FailedPrecondition, RuntimeFailure
from rktlet.oci.exec import exec_sync, start_exec
from rktlet.oci.runtime import OCIRuntime
from harness.waiting import wait_for

FAKE_RUNC = f"""#!{sys.executable}
import json, os, sys, time
args = sys.argv[1:]
def value(flag):
    return args[args.index(flag) + 1]
log, pid_file, process = value("--log"), value("--pid-file"), value("--process")
container = args[-1]
if container == "missing":
    with open(log, "a") as f:
        f.write(json.dumps({{"level": "error", "msg": "container does not exist"}}) + "\\n")
    sys.stderr.write("container does not exist\\n")
    sys.exit(1)
with open(process) as f:
    argv = json.load(f)["args"]
pid = os.posix_spawnp(argv[0], argv, os.environ, setsid=True)
with open(pid_file + ".tmp", "w") as f:
    f.write(str(pid))
os.rename(pid_file + ".tmp", pid_file)
if container == "slow":
    time.sleep(0.3)  # the command may end first: it is handed over already reaped... or a zombie
if "--detach" in args:
    sys.exit(0)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


REAPER_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "rktlet", "oci", "reaper.c")


@pytest.fixture(scope="module")
def compiled_reaper(tmp_path_factory):
    """rktlet/oci/reaper.c built for these tests (skipped without a C compiler)."""
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build rktlet/oci/reaper.c")
    out = str(tmp_path_factory.mktemp("reaper") / "rktlet-exec-reaper")
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", out, REAPER_SOURCE], check=True)
    return out


@pytest.fixture(autouse=True, params=["compiled", "python"])
def reaper(request, monkeypatch):
    """Every test runs with both reapers: the compiled one and the Python
    fallback speak the same protocol."""
    from rktlet.oci.exec import process as exec_process
    from rktlet.oci.exec import reaper as exec_reaper

    if request.param == "compiled":
        command = (request.getfixturevalue("compiled_reaper"),)
    else:
        command = (sys.executable, "-I", "-S", "-c", exec_reaper.SCRIPT)
    # Patched where the exec's command line is built.
    monkeypatch.setattr(exec_process, "reaper_command", lambda: command)
    return request.param


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "runc"
    path.write_text(FAKE_RUNC)
    path.chmod(0o755)
    return OCIRuntime(reactor, str(path), str(tmp_path / "state"))


@pytest.fixture
def bundle(tmp_path):
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"process": {"args": ["true"], "env": ["PATH=/usr/bin:/bin"],
                                                                   "cwd": "/", "user": {"uid": 0, "gid": 0}}}))
    return str(directory)


def leftovers(bundle: str) -> list[str]:
    return sorted(n for n in os.listdir(bundle) if n != "config.json")


def pids_of(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == f"sleep\0{marker}\0".encode():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest_twisted.ensureDeferred
async def test_the_command_is_handed_to_the_reaper(runtime, bundle):
    result = await exec_sync(reactor, runtime, "c1", bundle, ["sh", "-c", "sleep 0.2; echo out; echo err >&2; exit 5"], 10)
    assert result == (5, b"out\n", b"err\n")
    assert leftovers(bundle) == []


@pytest_twisted.ensureDeferred
async def test_a_command_ending_before_runc_is_reaped_too(runtime, bundle):
    assert await exec_sync(reactor, runtime, "slow", bundle, ["sh", "-c", "echo quick; exit 9"], 10) == (9, b"quick\n", b"")


@pytest_twisted.ensureDeferred
async def test_signals_are_128_plus_n(runtime, bundle):
    assert (await exec_sync(reactor, runtime, "c1", bundle, ["sh", "-c", "kill -TERM $$"], 10))[0] == 143


@pytest_twisted.ensureDeferred
async def test_runc_errors(runtime, bundle):
    with pytest.raises(RuntimeFailure) as e:
        await exec_sync(reactor, runtime, "missing", bundle, ["true"], 10)
    assert str(e.value) == "exec in container missing: container does not exist"
    assert leftovers(bundle) == []


@pytest_twisted.ensureDeferred
async def test_gone_bundle(runtime, tmp_path):
    with pytest.raises(FailedPrecondition):
        await exec_sync(reactor, runtime, "c1", str(tmp_path / "nothing"), ["true"], 10)


@pytest_twisted.ensureDeferred
async def test_background_child_and_timeout(runtime, bundle):
    marker = str(600000 + random.randrange(100000))
    started = time.monotonic()
    assert await exec_sync(reactor, runtime, "c1", bundle, ["sh", "-c", f"sleep {marker} & echo hi"], 10) == (0, b"hi\n", b"")
    assert time.monotonic() - started < 1.5
    [background] = pids_of(marker)
    os.kill(background, 9)

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as e:
        await exec_sync(reactor, runtime, "c1", bundle, ["sh", "-c", f"sleep {marker} & sleep {marker}"], 0.5)
    assert "timed out after 0.5s" in str(e.value)
    assert time.monotonic() - started < 2
    await wait_for(lambda: not pids_of(marker))
    assert leftovers(bundle) == []


@pytest_twisted.ensureDeferred
async def test_output_limit(runtime, bundle):
    code, out, err = await exec_sync(reactor, runtime, "c1", bundle,
                                     ["sh", "-c", "head -c 5000 /dev/zero; head -c 3000 /dev/zero >&2"], 10, limit=1 << 10)
    assert code == 0 and len(out) == 1024
    assert err[:1024] == b"\0" * 1024
    assert b"stdout truncated at 0 MiB" in err and b"stderr truncated" in err


class Terminal:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.producer: Any = None

    def stdout(self, data: bytes) -> None:
        self.out += data

    def stderr(self, data: bytes) -> None:
        self.err += data

    def set_output_producer(self, producer: Any) -> None:
        self.producer = producer

    def pause_input(self) -> None:
        pass

    def resume_input(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_interactive_pipes(runtime, bundle):
    term = Terminal()
    session = start_exec(reactor, runtime, "c1", bundle, ["sh", "-c", "sleep 0.1; tr a-z A-Z; echo done >&2"], term,
                         stdin=True)
    session.stdin(b"hello\n")
    session.close_stdin()
    assert await session.done == 0
    assert (bytes(term.out), bytes(term.err)) == (b"HELLO\n", b"done\n")


@pytest_twisted.ensureDeferred
async def test_interactive_terminate(runtime, bundle):
    marker = str(700000 + random.randrange(100000))
    term = Terminal()
    session = start_exec(reactor, runtime, "c1", bundle, ["sleep", marker], term, stdin=True)
    await wait_for(lambda: pids_of(marker))
    session.terminate()
    assert await session.done == 137
    assert pids_of(marker) == [] and leftovers(bundle) == []


@pytest_twisted.ensureDeferred
async def test_interactive_start_failure_fails_done(runtime, bundle):
    session = start_exec(reactor, runtime, "missing", bundle, ["true"], Terminal())
    with pytest.raises(RuntimeFailure) as e:
        await session.done
    assert "container does not exist" in str(e.value)
    failed = start_exec(reactor, runtime, "c1", bundle, [], Terminal())
    assert failed.done.called
    failed.done.addErrback(lambda f: None)
    failed.terminate()  # harmless


def test_exec_sync_output_fits_one_grpc_message():
    from rktlet.oci.exec import fit_response

    assert fit_response(b"ab", b"c", 3) == (b"ab", b"c", False, False)
    assert fit_response(b"x" * 10, b"e", 6) == (b"x" * 5, b"e", True, False)  # stderr small: stdout gets the rest
    assert fit_response(b"o", b"y" * 10, 6) == (b"o", b"y" * 5, False, True)
    assert fit_response(b"x" * 10, b"y" * 10, 6) == (b"x" * 3, b"y" * 3, True, True)
