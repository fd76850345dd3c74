"""Logging for rktlet: twisted.logger, filtered by ``--log-level``.

Every module gets its logger from :func:`logger`. Those loggers publish into
one filtering observer in front of the global log publisher, so the level set
by :func:`set_level` applies to rktlet's own events however the daemon was
started (``twistd -n rktlet`` or the ``rktlet`` script).
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def set_level(name: str) -> None:
    """Write events at level *name* (``debug`` … ``critical``) and above."""
    _predicate.setLogLevelForNamespace(None, LogLevel.levelWithName(name))


def debug_enabled() -> bool:
    """Whether debug events are written (to skip building costly ones)."""
    return _predicate.logLevelForNamespace(None) <= LogLevel.debug


def logger(namespace: str) -> Logger:
    """A :class:`Logger` for *namespace* that honours the configured level."""
    return Logger(namespace=namespace, observer=_observer)
