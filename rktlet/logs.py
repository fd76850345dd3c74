"""Logging for rktlet: twisted.logger, filtered by ``--log-level``, written as
text or JSON lines (``--log-format``).

Every module gets its logger from :func:`logger`. Those loggers publish into
one filtering observer in front of the global log publisher, so the level set
by :func:`set_level` applies to rktlet's own events however the daemon was
started (``twistd -n rktlet`` or the ``rktlet`` script).

What reaches the output is written by one :class:`LogOutput` that twistd
installs (see :func:`install_for_twistd`); its format can be switched while
the daemon runs (:func:`set_format`).

A JSON line holds, in this order:

``time``
    when the event happened, RFC 3339 in UTC with microseconds
    (``2026-12-03T18:55:17.123456Z``);
``level``
    ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
``logger``
    the namespace of the logger (``rktlet.pod.containers``);
``msg``
    the rendered message, as the text format shows it;
``error``
    (with a failure) its traceback;

then the event's own fields (``container_id``, ``pod_id``, ``duration_ms``,
``code``…) that JSON can hold: strings, numbers, booleans, null, and lists
and string-keyed objects of those; an exception becomes its message, other
values are left out. A field named like one of the keys above is written
with a trailing ``_``. Twisted's bookkeeping (``log_*`` keys and the
old-style keys ``format``, ``system``, ``time``, ``isError``, ``logLevel``;
``message`` when it is their tuple; ``failure`` and ``why`` beside a
failure) is never written.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    timeFormatRFC3339,
)

LOG_FORMATS = ("text", "json")

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

#: The keys every JSON line starts with.
JSON_KEYS = ("time", "level", "logger", "msg", "error")
# Keys Twisted's old-style log system adds to events (twisted.python.log and
# its compatibility wrappers edit shared event dicts in place): always...
_LEGACY_KEYS = frozenset({"format", "system", "time", "isError", "logLevel"})
# ... and along with a failure (a "why" without one is an event's own field).
_LEGACY_FAILURE_KEYS = frozenset({"failure", "why"})
# How deep lists and objects in a field are followed.
_MAX_DEPTH = 8


def set_level(name: str) -> None:
    """Write events at level *name* (``debug`` … ``critical``) and above."""
    _predicate.setLogLevelForNamespace(None, LogLevel.levelWithName(name))


def level() -> str:
    """The name of the least severe level written now."""
    return _predicate.logLevelForNamespace(None).name


def debug_enabled() -> bool:
    """Whether debug events are written (to skip building costly ones)."""
    return _predicate.logLevelForNamespace(None) <= LogLevel.debug


def logger(namespace: str) -> Logger:
    """A :class:`Logger` for *namespace* that honours the configured level."""
    return Logger(namespace=namespace, observer=_observer)


# -- errors reported once --------------------------------------------------------------

_LOGGED_MARK = "_rktlet_logged"


def mark_logged(error: BaseException) -> BaseException:
    """Note that *error* was logged (with its ids) where it happened, so
    the layer that answers the request does not log it again."""
    try:
        setattr(error, _LOGGED_MARK, True)
    except AttributeError:  # an exception type with __slots__
        pass
    return error


def was_logged(error: BaseException) -> bool:
    """Whether :func:`mark_logged` was called for *error*."""
    return bool(getattr(error, _LOGGED_MARK, False))


# -- formats ------------------------------------------------------------------------------


def rfc3339_utc(timestamp: float) -> str:
    """*timestamp* (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_value(value: Any, depth: int = 0) -> Any:
    """*value* as JSON data, or ``_SKIP`` when JSON cannot hold it."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum as its number
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    if depth >= _MAX_DEPTH:
        return _SKIP
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_json_value(v, depth + 1) for v in value]
        return [v for v in items if v is not _SKIP]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and (converted := _json_value(v, depth + 1)) is not _SKIP:
                out[k] = converted
        return out
    return _SKIP


_SKIP = object()


def event_as_json(event: dict[str, Any]) -> str:
    """One JSON line (ending in a newline) for a twisted.logger *event*; the
    keys are described in this module's docstring."""
    level_ = event.get("log_level")
    out: dict[str, Any] = {
        "time": rfc3339_utc(event.get("log_time") or 0.0),
        "level": level_.name if isinstance(level_, type(LogLevel.info)) else "info",
        "logger": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["error"] = failure.getTraceback()
        except Exception:  # a failure that cannot describe itself still gets a line
            out["error"] = repr(failure)
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if (key in _LEGACY_FAILURE_KEYS and failure is not None) or (key == "message" and isinstance(value, tuple)):
            continue
        converted = _json_value(value)
        if converted is _SKIP:
            continue
        name = key
        while name in out:
            name += "_"
        out[name] = converted
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n"


def event_as_text(event: dict[str, Any]) -> str | None:
    """The classic line twistd writes: local time, ``[namespace#level]``, message."""
    return formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, timeFormatRFC3339))


class LogOutput(FileLogObserver):
    """The daemon's log observer: writes events to *out_file* as text or as
    JSON lines; :attr:`format` may change at any time."""

    def __init__(self, out_file: IO[Any], format: str = "text") -> None:
        self.format = format
        super().__init__(out_file, self._format_event)

    @property
    def format(self) -> str:
        """``text`` or ``json``."""
        return self._format

    @format.setter
    def format(self, value: str) -> None:
        if value not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
        self._format = value

    def _format_event(self, event: dict[str, Any]) -> str | None:
        if self._format == "json":
            return event_as_json(event)
        return event_as_text(event)


# -- the daemon's output -------------------------------------------------------------------

# The output twistd installed (None until then), and the format to give it.
_output: LogOutput | None = None
_format = "text"
# twistd's options, for where the output goes (--logfile, --nodaemon).
_twistd_options: Any = None


def set_format(name: str) -> None:
    """Write events as *name* (``text`` or ``json``) from now on."""
    global _format
    if name not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {name!r}")
    _format = name
    if _output is not None:
        _output.format = name


def current_format() -> str:
    """The format events are written in."""
    return _format


def install_for_twistd(twistd_options: Any, format: str) -> None:
    """Have twistd write the log through :class:`LogOutput` in *format*.

    Called while the ``rktlet`` sub-options are parsed: twistd's
    ``--logger`` option (a log observer factory) is set to
    :func:`twistd_observer`, unless the user chose a logger or syslog.
    """
    global _twistd_options
    set_format(format)
    if twistd_options is None:
        return
    try:
        if twistd_options.get("logger") or twistd_options.get("syslog"):
            return
        _twistd_options = twistd_options
        twistd_options["logger"] = f"{__name__}.twistd_observer"
    except (AttributeError, TypeError, KeyError):
        return


def twistd_observer() -> ILogObserver:
    """twistd's log observer factory (``--logger``): a :class:`LogOutput`
    where twistd itself would write — stdout when not daemonized and no
    ``--logfile`` (or ``--logfile -``), else the log file, rotated on
    SIGUSR1 as twistd does."""
    global _output
    options = _twistd_options or {}
    name = options.get("logfile") or ""
    if name == "-" and not options.get("nodaemon"):
        raise SystemExit("rktlet: a daemonized twistd cannot log to stdout (--logfile -)")
    if name == "-" or (not name and options.get("nodaemon")):
        out: IO[Any] = sys.stdout
    else:
        from twisted.python.logfile import LogFile

        logfile = LogFile.fromFullPath(name or "twistd.log")
        _rotate_on_sigusr1(logfile)
        out = logfile
    _output = LogOutput(out, _format)
    return _output


def _rotate_on_sigusr1(logfile: Any) -> None:
    import signal

    if signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL):
        return  # someone else handles it

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(logfile.rotate)  # a signal handler only hands over

    signal.signal(signal.SIGUSR1, rotate)
