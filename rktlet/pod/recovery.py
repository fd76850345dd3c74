"""What start-up reconciles, and by which rules.

The daemon may be killed between any two steps of an operation (kill -9,
the OOM killer, power loss). At start-up the records are checked against
what exists — bundles and the root filesystem mounted in each, writable
layers, the runtime's (runc's) state, conmon processes and conmon's files —
in both directions, before any RPC can touch what is being reconciled (the
containers concerned are locked until done). In order:

Pods (``SandboxManager.load`` / ``clean_up_half_made``)
  1. A CREATING record (RunPodSandbox cut short) is undone step by step —
     infra process, CNI DEL, namespaces, /dev/shm, files, the cgroups it
     made — and deleted.
  2. A READY pod whose pinned namespaces or infra process are gone (a
     reboot) is NOTREADY. A crash inside RemovePodSandbox leaves the record:
     the pod is NOTREADY and a new RemovePodSandbox finishes the job (every
     step is idempotent).
  3. Removed pods whose CNI DEL failed are retried, at start-up and then
     periodically.

Container records (``ContainerManager.load`` / ``reconcile``), rule by state
  4. RUNNING: conmon's exit file gives the exit (EXITED with its code);
     conmon gone without one: EXITED 255; otherwise conmon is re-adopted.
  5. CREATED: the runtime is asked (:func:`created_outcome`):

     - running or paused (StartContainer cut short after ``runc start``)
       with its conmon alive: RUNNING, conmon re-adopted; without conmon:
       killed, EXITED 255 (nothing could report its exit);
     - stopped (it ran and ended): EXITED with the exit file's code, or 255;
     - created (cut short before ``runc start``): conmon killed, the
       container deleted from the runtime, conmon's files removed: it is
       CREATED again and StartContainer works;
     - absent: CREATED when the bundle is whole (root filesystem and image
       volumes mounted, ``config.json`` there); otherwise (a reboot emptied
       the run dir) EXITED 255, saying the bundle was lost.
  6. EXITED: nothing; RemoveContainer deletes what is left of it.

Parts without a record (:func:`orphan_ids`)
  7. A bundle, writable layer, conmon exit file or socket link, or runtime
     state of an id no record names (CreateContainer cut short before its
     record was saved, or RemoveContainer after its record was deleted) is
     removed: its conmon killed, the container deleted from the runtime, the
     root filesystem and image volumes unmounted (every mount point found in
     the bundle), the directories and files removed. (RemoveContainer
     deletes the record first and removes the files after answering: a
     crash in between is this rule's to finish.)

The crash tests (``tests/integration/test_crash_recovery.py``) kill the
daemon at each step named in :mod:`rktlet.debugpoints` and check these rules.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Callable

from rktlet.oci import image_volumes

__all__ = ["ADOPT", "EXITED", "KEEP", "LOST", "UNDO_START", "created_outcome", "orphan_ids", "runc_created_ns"]

_ID = re.compile(r"^[0-9a-f]{64}$")

# What becomes of a CREATED record (rule 5).
ADOPT = "adopt"  # started: RUNNING, conmon re-adopted
EXITED = "exited"  # it ran and ended (or cannot be watched): EXITED
UNDO_START = "undo-start"  # made in the runtime, not started: undone, CREATED again
KEEP = "keep"  # nothing in the runtime, bundle whole: CREATED as it was
LOST = "lost"  # nothing in the runtime, bundle gone: EXITED 255


def created_outcome(runtime_status: str | None, conmon_alive: bool, bundle_whole: bool) -> str:
    """Rule 5: what becomes of a container recorded CREATED, from the
    runtime's status of it (``runc state``'s ``status``, None when absent),
    whether its conmon still runs and whether its bundle is whole."""
    if runtime_status in ("running", "paused"):
        return ADOPT if conmon_alive else EXITED
    if runtime_status == "stopped":
        return EXITED
    if runtime_status is not None:  # "created", "creating"
        return UNDO_START
    return KEEP if bundle_whole else LOST


def bundle_whole(bundle: str, is_mounted: Callable[[str], bool] = os.path.ismount) -> bool:
    """Blocking: whether a bundle can be started: its root filesystem and
    image volumes are mounted (as *is_mounted* tells: the host driver's
    ``is_mounted``) and its runtime spec is there."""
    mounted = [os.path.join(bundle, "rootfs")] + image_volumes.mount_points(bundle)
    return all(is_mounted(p) for p in mounted) and os.path.isfile(os.path.join(bundle, "config.json"))


def orphan_ids(places: list[str], known: set[str]) -> set[str]:
    """Rule 7: container ids that have something in one of *places* (the
    bundles dir, the writable layers dir, conmon's exits and socket dirs —
    entries named by an id) but no record in *known*. Names that are not
    ids rktlet makes (64 hex digits) are never touched."""
    found: set[str] = set()
    for place in places:
        try:
            names = os.listdir(place)
        except FileNotFoundError:
            continue
        found.update(n for n in names if _ID.match(n))
    return found - known


def runc_created_ns(state: dict) -> int | None:
    """The ``created`` time of a ``runc state`` answer, in ns since the
    epoch (RFC 3339 with up to nanoseconds), or None when unreadable."""
    text = state.get("created")
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
