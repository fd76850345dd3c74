"""Pure parts of exec: the process spec, runc's log, the reaper's report,
output caps, exit codes."""

from __future__ import annotations

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from rktlet.errors import InvalidArgument
from rktlet.oci.exec import exec_process_spec, exit_code_of, parse_reaper_report, parse_runc_log
from rktlet.oci.exec.sync import _Capped

CONTAINER_PROCESS = {
    "args": ["sleep", "100000"],
    "terminal": True,
    "consoleSize": {"height": 10, "width": 20},
    "user": {"uid": 1234, "gid": 1234, "additionalGids": [5]},
    "env": ["PATH=/usr/bin:/bin", "HOSTNAME=web"],
    "cwd": "/tmp",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "noNewPrivileges": True,
    "apparmorProfile": "runtime/default",
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "oomScoreAdj": 100,
}


def test_exec_spec_keeps_the_containers_process_settings():
    spec = exec_process_spec(CONTAINER_PROCESS, ["sh", "-c", "id"], tty=False)
    assert spec["args"] == ["sh", "-c", "id"]
    assert spec["terminal"] is False
    assert "consoleSize" not in spec  # runc refuses it without a terminal
    for key in ("user", "env", "cwd", "capabilities", "noNewPrivileges", "apparmorProfile", "rlimits", "oomScoreAdj"):
        assert spec[key] == CONTAINER_PROCESS[key], key
    # A copy: the container's spec is not touched.
    spec["user"]["uid"] = 0
    assert CONTAINER_PROCESS["user"]["uid"] == 1234 and CONTAINER_PROCESS["args"] == ["sleep", "100000"]


def test_exec_spec_with_a_terminal():
    spec = exec_process_spec(CONTAINER_PROCESS, ["sh"], tty=True, window=(132, 43))
    assert spec["terminal"] is True
    assert spec["consoleSize"] == {"width": 132, "height": 43}
    assert spec["env"] == ["PATH=/usr/bin:/bin", "HOSTNAME=web", "TERM=xterm"]
    own_term = dict(CONTAINER_PROCESS, env=["TERM=vt100"])
    assert exec_process_spec(own_term, ["sh"], tty=True)["env"] == ["TERM=vt100"]
    assert exec_process_spec(CONTAINER_PROCESS, ["sh"], tty=True)["consoleSize"] == {"width": 80, "height": 24}


@pytest.mark.parametrize("args", [[], ["ok", 3], ["a\0b"]])
def test_exec_spec_rejects_bad_commands(args):
    with pytest.raises(InvalidArgument) as e:
        exec_process_spec(CONTAINER_PROCESS, args, tty=False)
    assert "cmd" in str(e.value)


def test_runc_log_errors_only():
    log = (
        b'{"level":"warning","msg":"something odd","time":"2026-11-29T13:26:27Z"}\n'
        b'{"level":"error","msg":"exec failed: unable to start container process: exec: \\"nope\\": '
        b'executable file not found in $PATH","time":"2026-11-29T13:26:27Z"}\n'
        b"not json\n\n"
    )
    assert parse_runc_log(log) == 'exec failed: unable to start container process: exec: "nope": executable file not found in $PATH'
    assert parse_runc_log(b'{"level":"info","msg":"fine"}\n') == ""
    assert parse_runc_log(b"") == ""


@pytest.mark.parametrize("data, expected", [
    (b"exit 0\n", ("exit", 0, "")),
    (b"exit 137\n", ("exit", 137, "")),
    (b"runc 1\n", ("runc", 1, "")),
    (b"lost no pid from runc: boom\n", ("lost", None, "no pid from runc: boom")),
    (b"", ("lost", None, "the reaper ended without reporting")),
    (b"exit x\n", ("lost", None, "unreadable report 'exit x'")),
])
def test_reaper_report(data, expected):
    assert parse_reaper_report(data) == expected


def test_capped_stream_counts_what_it_drops():
    capped = _Capped(10)
    for chunk in (b"abcd", b"efghij", b"klm", b""):
        capped.add(chunk)
    assert (bytes(capped.data), capped.dropped) == (b"abcdefghij", 3)
    exact = _Capped(4)
    exact.add(b"abcd")
    assert exact.dropped == 0


def test_exit_codes_in_shell_terms():
    assert exit_code_of(Failure(ProcessDone(0))) == 0
    assert exit_code_of(Failure(ProcessTerminated(exitCode=3))) == 3
    assert exit_code_of(Failure(ProcessTerminated(signal=9))) == 137
