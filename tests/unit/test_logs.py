"""The log output: JSON lines and text, switching format, and how twistd is
told to use it (no root, no daemon)."""

from __future__ import annotations

import io
import json
import re
import signal
from typing import Any, Iterator

import pytest
from twisted.logger import LegacyLogObserverWrapper, LogLevel, Logger
from twisted.python.failure import Failure

from rktlet import logs

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(autouse=True)
def _restore_logs_state() -> Iterator[None]:
    saved = (logs._output, logs._format, logs._twistd_options, logs.level())
    yield
    logs._output, logs._format, logs._twistd_options = saved[:3]
    logs.set_level(saved[3])


def emitted(emit: Any) -> dict[str, Any]:
    """The one event *emit(logger)* publishes."""
    events: list[dict[str, Any]] = []
    emit(Logger(namespace="rktlet.test", observer=events.append))
    [event] = events
    return event


def as_json(event: dict[str, Any]) -> dict[str, Any]:
    line = logs.event_as_json(event)
    assert line.endswith("\n") and "\n" not in line[:-1]
    return json.loads(line)


def test_json_line_has_time_level_logger_msg_then_the_fields():
    event = emitted(lambda log: log.info("container {container_id} started, pid {pid}",
                                         container_id="c1", pod_id="p1", pid=42, duration_ms=1.5))
    event["log_time"] = 1796324117.25
    record = as_json(event)
    assert list(record)[:4] == ["time", "level", "logger", "msg"]
    assert record == {
        "time": "2026-12-03T18:55:17.250000Z",
        "level": "info",
        "logger": "rktlet.test",
        "msg": "container c1 started, pid 42",
        "container_id": "c1",
        "pod_id": "p1",
        "pid": 42,
        "duration_ms": 1.5,
    }


@pytest.mark.parametrize("method, name", [("debug", "debug"), ("info", "info"), ("warn", "warn"),
                                          ("error", "error"), ("critical", "critical")])
def test_json_levels(method: str, name: str):
    record = as_json(emitted(lambda log: getattr(log, method)("x")))
    assert record["level"] == name
    assert RFC3339_UTC.match(record["time"]), record["time"]


def test_fields_json_cannot_hold_are_converted_or_left_out():
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    record = as_json(emitted(lambda log: log.warn(
        "{error}", error=ValueError("bad value"), ids=("a", "b"), nested={"k": [1, None, Opaque()], 2: "x"},
        thing=Opaque(), flag=True, nan=float("nan"), severity=LogLevel.warn)))
    assert record["error"] == "bad value"
    assert record["msg"] == "bad value"
    assert record["ids"] == ["a", "b"]
    assert record["nested"] == {"k": [1, None]}  # non-string keys and opaque values dropped
    assert "thing" not in record
    assert record["flag"] is True
    assert record["nan"] == "nan"
    assert "severity" not in record  # a LogLevel is not JSON data


def test_field_named_like_a_fixed_key_gets_an_underscore():
    record = as_json(emitted(lambda log: log.info("hi", msg="mine", logger="x", error="e")))
    assert record["msg"] == "hi" and record["msg_"] == "mine"
    assert record["logger"] == "rktlet.test" and record["logger_"] == "x"
    assert record["error"] == "e"  # no failure: the event's own error field


def test_failure_becomes_error_with_the_traceback():
    try:
        raise RuntimeError("runc said no")
    except RuntimeError:
        failure = Failure()
    record = as_json(emitted(lambda log: log.failure("starting {container_id} failed", failure=failure,
                                                     container_id="c9")))
    assert record["level"] == "critical"
    assert record["msg"] == "starting c9 failed"
    assert "Traceback" in record["error"] and "RuntimeError: runc said no" in record["error"]
    assert record["container_id"] == "c9"
    assert "failure" not in record and "why" not in record


def test_keys_the_legacy_wrapper_adds_are_not_written():
    event = emitted(lambda log: log.info("plain {what}", what="text", why="a field of its own"))
    LegacyLogObserverWrapper(lambda e: None)(event)  # edits the event in place, as twistd's observers may
    assert {"message", "time", "system", "isError", "format"} <= set(event)
    record = as_json(event)
    assert set(record) == {"time", "level", "logger", "msg", "what", "why"}
    assert record["msg"] == "plain text" and record["why"] == "a field of its own"


def test_multi_line_message_stays_one_line():
    out = io.StringIO()
    logs.LogOutput(out, "json")(emitted(lambda log: log.info("a\nb {x}", x="c\nd")))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["msg"] == "a\nb c\nd"


def test_output_switches_between_text_and_json():
    out = io.StringIO()
    output = logs.LogOutput(out)
    output(emitted(lambda log: log.info("first {n}", n=1)))
    output.format = "json"
    output(emitted(lambda log: log.info("second {n}", n=2)))
    text, js = out.getvalue().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[rktlet\.test#info\] first 1$", text), text
    assert json.loads(js)["msg"] == "second 2"
    with pytest.raises(ValueError, match="text, json"):
        output.format = "yaml"


def test_set_format_reaches_the_installed_output():
    out = io.StringIO()
    logs._output = logs.LogOutput(out)
    logs.set_format("json")
    assert logs.current_format() == "json" and logs._output.format == "json"
    logs.set_format("text")
    assert logs._output.format == "text"


def test_mark_logged():
    error = RuntimeError("x")
    assert not logs.was_logged(error)
    assert logs.mark_logged(error) is error
    assert logs.was_logged(error)


def test_level_round_trip():
    logs.set_level("debug")
    assert logs.level() == "debug" and logs.debug_enabled()
    logs.set_level("warn")
    assert logs.level() == "warn" and not logs.debug_enabled()


# -- twistd ---------------------------------------------------------------------------------


def test_install_sets_twistds_logger_option_unless_one_was_chosen():
    options: dict[str, Any] = {"logger": None, "syslog": False}
    logs.install_for_twistd(options, "json")
    assert options["logger"] == "rktlet.logs.twistd_observer"
    assert logs.current_format() == "json"
    chosen = {"logger": "my.observer", "syslog": False}
    logs.install_for_twistd(chosen, "text")
    assert chosen["logger"] == "my.observer"
    syslog = {"logger": None, "syslog": True}
    logs.install_for_twistd(syslog, "text")
    assert syslog["logger"] is None


def test_twistd_observer_writes_where_twistd_would(tmp_path, capsys):
    logs._twistd_options = {"logfile": None, "nodaemon": True}
    logs._format = "json"
    observer = logs.twistd_observer()
    observer(emitted(lambda log: log.info("to stdout")))
    assert json.loads(capsys.readouterr().out)["msg"] == "to stdout"

    path = tmp_path / "rktlet.log"
    logs._twistd_options = {"logfile": str(path), "nodaemon": False}
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        observer = logs.twistd_observer()
        observer(emitted(lambda log: log.info("to the file")))
        assert json.loads(path.read_text())["msg"] == "to the file"
        assert signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL)  # rotation, as twistd does
    finally:
        signal.signal(signal.SIGUSR1, previous)

    logs._twistd_options = {"logfile": "-", "nodaemon": False}
    with pytest.raises(SystemExit, match="cannot log to stdout"):
        logs.twistd_observer()


def test_twistd_command_line_selects_the_json_output():
    from twisted.scripts._twistd_unix import ServerOptions

    options = ServerOptions()
    options.parseOptions(["--nodaemon", "--pidfile=", "rktlet", "--log-format", "json", "--socket", "/tmp/x.sock"])
    assert options["logger"] is logs.twistd_observer
    assert options.subOptions.config.log_format == "json"
    assert logs.current_format() == "json"
