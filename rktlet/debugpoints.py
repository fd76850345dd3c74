"""Named points inside multi-step operations, where tests stop the daemon.

A debugging aid, off unless its environment variables are set (they are
read once, at the first point reached):

* ``RKTLET_DEBUG_CRASH_AT=<point>``: the daemon kills itself with SIGKILL
  when it reaches *point* — the crash tests prove that start-up recovers
  from a crash at each step, with nothing leaked.
* ``RKTLET_DEBUG_PAUSE_AT=<point>`` with ``RKTLET_DEBUG_PAUSE_FILE=<path>``:
  at *point* the operation creates *path* and waits (the reactor keeps
  serving) until the file is removed — race tests land a second request
  exactly there.

The points are the constants below; an operation reaches one with
``await debugpoints.reached(POINT, reactor)``, which costs nothing when
the point is not configured.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.task import deferLater

from rktlet import logs

log = logs.logger("rktlet.debugpoints")

CRASH_ENV = "RKTLET_DEBUG_CRASH_AT"
PAUSE_ENV = "RKTLET_DEBUG_PAUSE_AT"
PAUSE_FILE_ENV = "RKTLET_DEBUG_PAUSE_FILE"

# CreateContainer: the overlay is mounted and config.json written, the
# record is not saved yet.
CONTAINER_CREATE_BUNDLE_MADE = "container-create:bundle-made"
# CreateContainer: the record is saved (CREATED), the RPC not answered.
CONTAINER_CREATE_SAVED = "container-create:saved"
# StartContainer: conmon made the container (``runc create``), it is not started.
CONTAINER_START_RUNC_CREATED = "container-start:runc-created"
# StartContainer: ``runc start`` ran, RUNNING is not saved yet.
CONTAINER_START_RUNC_STARTED = "container-start:runc-started"
# StopContainer: the first signal is sent, the exit not recorded.
CONTAINER_STOP_SIGNALLED = "container-stop:signalled"
# RemoveContainer: deleted from the runtime; files and record remain.
CONTAINER_REMOVE_RUNTIME_DELETED = "container-remove:runtime-deleted"
# RemoveContainer: the record is deleted; its files remain (removed after the answer).
CONTAINER_REMOVE_RECORD_DELETED = "container-remove:record-deleted"
# RunPodSandbox: the CNI ADD succeeded; the pod is still CREATING.
POD_RUN_NETWORK_ATTACHED = "pod-run:network-attached"
# RemovePodSandbox: everything released; the record remains.
POD_REMOVE_TORN_DOWN = "pod-remove:torn-down"

POINTS = (
    CONTAINER_CREATE_BUNDLE_MADE, CONTAINER_CREATE_SAVED, CONTAINER_START_RUNC_CREATED,
    CONTAINER_START_RUNC_STARTED, CONTAINER_STOP_SIGNALLED, CONTAINER_REMOVE_RUNTIME_DELETED,
    CONTAINER_REMOVE_RECORD_DELETED, POD_RUN_NETWORK_ATTACHED, POD_REMOVE_TORN_DOWN,
)

# How often a paused operation looks whether its file is gone.
_PAUSE_POLL = 0.02

_settings: tuple[str, str, str] | None = None


def _configured() -> tuple[str, str, str]:
    global _settings
    if _settings is None:
        _settings = (os.environ.get(CRASH_ENV, ""), os.environ.get(PAUSE_ENV, ""),
                     os.environ.get(PAUSE_FILE_ENV, ""))
        for name in _settings[:2]:
            if name and name not in POINTS:
                log.warn("debug point {name!r} does not exist (known: {known})", name=name, known=", ".join(POINTS))
    return _settings


def warn_if_enabled() -> None:
    """Log loudly, at start-up, that debug points are armed."""
    crash, pause, _ = _configured()
    if crash or pause:
        log.warn("debug points armed ({crash}={c!r}, {pause}={p!r}): this daemon will crash or pause on purpose",
                 crash=CRASH_ENV, c=crash, pause=PAUSE_ENV, p=pause)


async def reached(point: str, reactor: Any) -> None:
    """An operation reached *point*: crash or pause there if configured."""
    crash, pause, pause_file = _configured()
    if point == crash:
        log.warn("debug point {point}: crashing (SIGKILL) on purpose", point=point)
        os.kill(os.getpid(), signal.SIGKILL)
    if point == pause and pause_file:
        with open(pause_file, "w") as f:
            f.write(point + "\n")
        log.warn("debug point {point}: paused until {path} is removed", point=point, path=pause_file)
        while os.path.exists(pause_file):
            await deferLater(reactor, _PAUSE_POLL, lambda: None)
        log.info("debug point {point}: going on", point=point)
