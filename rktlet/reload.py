"""SIGHUP: read the config file again and apply what can change without a
restart.

Reloaded: the registry mirrors, the insecure registries, the pull progress
timeout (new pulls use them; pulls in flight keep theirs), the log level and
the log format. Every other option that changed is logged as needing a
restart and keeps its running value. Flags given on the command line keep
winning over the file. A file that cannot be read or is invalid is logged
and changes nothing.

The signal handler only hands the work to the reactor. The file is read and
parsed in a worker thread: it is small, but it may sit on a slow or hung
file system, and the reactor thread never waits for a disk.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from rktlet import config as config_module
from rktlet import logs
from rktlet.config import OPTIONS, OPTIONS_BY_KEY, Config
from rktlet.errors import RktletError

log = logs.logger("rktlet.reload")

#: The options a reload applies.
RELOADABLE = frozenset({"registry-mirror", "insecure-registry", "pull-progress-timeout", "log-level", "log-format"})


@dataclass(frozen=True)
class Change:
    """One option whose value differs: *old* running, *new* in the file."""

    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Diff:
    """What reading the file again means.

    :ivar applied: reloadable options that changed (they take effect).
    :ivar need_restart: other options that changed (they do not).
    :ivar shadowed: options the file changes but a command-line flag sets.
    """

    applied: tuple[Change, ...] = ()
    need_restart: tuple[Change, ...] = ()
    shadowed: tuple[str, ...] = ()

    def result(self, running: Config) -> Config:
        """*running* with the applied changes."""
        return dataclasses.replace(running, **{OPTIONS_BY_KEY[c.key].attr: c.new for c in self.applied})


def diff(running: Config, wanted: Config, file_values: dict[str, Any] | None = None) -> Diff:
    """Compare the *running* configuration with the one the file gives now
    (*wanted*, built by :func:`rktlet.config.reread`).

    :param file_values: ``{attr: value}`` as read from the file, to tell
        which flags shadow a change made in it.
    """
    applied, need_restart = [], []
    for opt in OPTIONS:
        old, new = getattr(running, opt.attr), getattr(wanted, opt.attr)
        if old == new:
            continue
        (applied if opt.key in RELOADABLE else need_restart).append(Change(opt.key, old, new))
    shadowed = []
    for key in sorted(running.command_line):
        attr = OPTIONS_BY_KEY[key].attr
        if file_values and attr in file_values and file_values[attr] != getattr(running, attr):
            shadowed.append(key)
    return Diff(tuple(applied), tuple(need_restart), tuple(shadowed))


def shown(value: Any) -> Any:
    """*value* as a log line and a JSON field show it."""
    return list(value) if isinstance(value, tuple) else value


class Reloader(Service):
    """Reloads the configuration on SIGHUP (or :meth:`reload`).

    :param reactor: the reactor (``callFromThread``).
    :param threadpool: where the file is read.
    :param config: the running configuration.
    :param apply: makes a configuration with reloadable changes current
        (the image settings, the engine's view); called on the reactor.
    """

    def __init__(self, reactor: Any, threadpool: Any, config: Config, apply: Callable[[Config], None]) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self.config = config
        self._apply = apply
        self._previous_handler: Any = None
        self._running: Deferred | None = None
        self._again = False

    def startService(self) -> None:
        Service.startService(self)
        self._previous_handler = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return None

    def _on_signal(self, signum: int, frame: Any) -> None:
        # In a signal handler: hand over, do nothing else.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> Deferred:
        """Read the file again and apply it; a reload asked for while one
        runs is done once more after it. Fires when done (never fails)."""
        if self._running is not None:
            self._again = True
            return self._running
        d = Deferred.fromCoroutine(self._reload_until_settled())
        if not d.called:  # (one done at once has already cleared _running)
            self._running = d
        return d

    async def _reload_until_settled(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._reload_once()
                except Exception:
                    log.failure("reloading the configuration failed; the running configuration is kept")
                if not self._again:
                    return
        finally:
            self._running = None

    async def _reload_once(self) -> None:
        running = self.config
        path = running.config_file
        if not path:
            log.info("SIGHUP: no configuration file (--config) to read again; nothing changed")
            return
        try:
            wanted, file_values = await deferToThreadPool(self._reactor, self._threadpool, _read, running)
        except RktletError as e:
            log.error("SIGHUP: {error}; the running configuration is kept", error=str(e), path=path)
            return
        changes = diff(running, wanted, file_values)
        if changes.applied:
            self.config = changes.result(running)
            self._apply(self.config)
        for change in changes.applied:
            log.info("SIGHUP: {key} changed from {old} to {new}", key=change.key, old=shown(change.old),
                     new=shown(change.new), path=path)
        for change in changes.need_restart:
            log.warn("SIGHUP: {key} changed in {path} (from {old} to {new}) but takes effect only after a restart",
                     key=change.key, old=shown(change.old), new=shown(change.new), path=path)
        for key in changes.shadowed:
            log.info("SIGHUP: {key} in {path} is ignored: --{key} was given on the command line", key=key, path=path)
        if not (changes.applied or changes.need_restart or changes.shadowed):
            log.info("SIGHUP: {path} read again; nothing changed", path=path)


def _read(running: Config) -> tuple[Config, dict[str, Any]]:
    # In a worker thread.
    assert running.config_file
    values = config_module.read_file(running.config_file)
    return config_module.reread(running, values), values
