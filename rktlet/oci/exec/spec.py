"""The OCI process spec of an exec: the container's own ``process`` with
``args`` replaced and ``terminal`` set per request."""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Sequence

from rktlet.errors import FailedPrecondition, InvalidArgument, RuntimeFailure

#: The window size a tty exec starts with until the client sends its own
#: (0x0 makes many programs misbehave).
DEFAULT_WINDOW = (80, 24)


def exec_process_spec(container_process: dict[str, Any], args: Sequence[str], tty: bool,
                      window: tuple[int, int] = DEFAULT_WINDOW) -> dict[str, Any]:
    """The OCI ``process`` for an exec: the container's own *container_process*
    (user, env, cwd, capabilities, noNewPrivileges, apparmorProfile, rlimits,
    oomScoreAdj…) with ``args`` replaced and ``terminal`` set to *tty*.

    A tty exec gets ``TERM=xterm`` when the container's env has no TERM (as
    containerd does), so that full-screen programs work, and a
    ``consoleSize`` of *window* (width, height): runc sizes the console with
    it before the command starts, where its own first copy of our pty's
    size may come only after the command has looked.

    :raises InvalidArgument: *args* is empty or not all strings.
    """
    if not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("cmd: the command to execute must be a non-empty list of strings")
    if any("\0" in a for a in args):
        raise InvalidArgument("cmd: arguments must not contain NUL bytes")
    process = copy.deepcopy(container_process)
    process["args"] = list(args)
    process["terminal"] = bool(tty)
    # The container's console size does not apply to another terminal (and
    # without a terminal runc rejects it).
    process.pop("consoleSize", None)
    if tty:
        process["consoleSize"] = {"width": window[0], "height": window[1]}
    env = list(process.get("env") or [])
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    process["env"] = env
    return process


def load_container_process(bundle: str) -> dict[str, Any]:
    """The ``process`` object of the runtime spec in *bundle*.

    :raises FailedPrecondition: the bundle or its spec is gone (the container
        was removed meanwhile).
    :raises RuntimeFailure: the spec cannot be read or has no process.
    """
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise FailedPrecondition(f"container bundle {bundle} has no runtime spec: the container is gone") from None
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"read runtime spec {path}: {e}") from e
    process = spec.get("process") if isinstance(spec, dict) else None
    if not isinstance(process, dict):
        raise RuntimeFailure(f"runtime spec {path} has no process")
    return process

