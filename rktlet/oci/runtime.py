"""The OCI runtime command line (runc, or anything that speaks its CLI).

:class:`OCIRuntime` runs one ``runc --root <state_root> <subcommand> …`` per
call with ``reactor.spawnProcess`` and a :class:`ProcessProtocol`, under a
timeout, and turns failures into :class:`~rktlet.errors.RuntimeFailure`
carrying runc's own words.  Containers are *created* by conmon
(:mod:`rktlet.oci.conmon`, which runs ``runc create`` itself); this driver
starts, signals, inspects, updates and deletes them.

runc reports errors on stderr through logrus in its text format, e.g.
``time="2026-11-29T13:04:06Z" level=error msg="container does not exist"``;
:func:`clean_message` reduces that to ``container does not exist``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from rktlet.errors import RuntimeFailure
from rktlet.logs import logger
from rktlet.mountinfo import mount_points_under
from rktlet.oci.mounts import unmount
from rktlet.oci.userns import IDMAPPED_LAYERS_KERNEL, kernel_version
from rktlet.process import run_process

__all__ = ["OCIRuntime", "clean_message", "is_absent", "is_not_running"]

log = logger("rktlet.oci.runtime")

#: Used when the daemon's environment has no PATH (runc runs hooks through it).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: runc answers with a few KiB at most (``state`` JSON, error lines); more is
#: a broken runtime, and keeping it all would let it fill the daemon's memory.
OUTPUT_LIMIT = 4 << 20

# One logrus text-format record: key=value pairs where values are bare words
# or Go-quoted strings.  We only need ``level`` and ``msg``.
_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_GO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_GO_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)")
_SERIOUS = ("error", "fatal", "panic")


def _remove_state_dir(state_dir: str) -> None:
    """Remove what a killed runc left of a container's state (blocking)."""
    for point in mount_points_under(state_dir):
        log.warn("removing {point}, a mount a killed runc left behind", point=point)
        unmount(point)
    shutil.rmtree(state_dir, ignore_errors=True)


def _go_unquote(quoted: str) -> str:
    """The text of a Go ``%q`` string literal (quotes included in *quoted*)."""
    body = quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == '"' else quoted

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _GO_ESCAPES.get(code, code)

    return _GO_ESCAPE.sub(replace, body)


def _parse_logfmt(line: str) -> tuple[str, str] | None:
    """``(level, msg)`` of a logrus text record, or None for a plain line."""
    if not line.startswith("time="):
        return None
    fields = {key: value for key, value in _LOGFMT_PAIR.findall(line)}
    if "msg" not in fields:
        return None
    return fields.get("level", ""), _go_unquote(fields["msg"]) if fields["msg"].startswith('"') else fields["msg"]


def clean_message(stderr: bytes | str) -> str:
    """runc's error message without logrus' ``time=… level=… msg=`` framing.

    Records of level error/fatal/panic are kept when there are any (warnings
    around them are noise); otherwise every line is.  Plain lines (runc
    built without logrus framing, crun, a shell script standing in for runc)
    are kept as they are.  Lines are joined with ``"; "``.
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    serious: list[str] = []
    other: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parsed = _parse_logfmt(line)
        if parsed is None:
            other.append(line)
            continue
        level, msg = parsed
        msg = msg.strip()
        if msg:
            (serious if level in _SERIOUS else other).append(msg)
    return "; ".join(serious or other)


def is_absent(message: str) -> bool:
    """Whether runc's *message* says the container does not exist."""
    return "does not exist" in message.lower()


def is_not_running(message: str) -> bool:
    """Whether runc's *message* says the container (or its init) is no
    longer running — what ``kill`` answers for a stopped container."""
    lowered = message.lower()
    return any(s in lowered for s in ("not running", "process already finished", "no such process"))


@dataclass(frozen=True)
class RuntimeFeatures:
    """What a runtime says it supports (``runc features``), as far as the
    CRI asks.

    :ivar recursive_read_only_mounts: it knows the ``rro`` mount option.
    :ivar mount_options: every mount option it knows.
    :ivar idmap_mounts: it makes idmapped mounts (``linux.mountExtensions.idmap.enabled``:
        runc 1.2 and later).
    :ivar user_namespaces: pods can have user namespaces with it: it knows
        the ``user`` namespace and makes idmapped mounts (without them, a
        pod's volumes could not appear with the right owners).
    """

    recursive_read_only_mounts: bool = False
    mount_options: frozenset[str] = frozenset()
    idmap_mounts: bool = False
    user_namespaces: bool = False

    @classmethod
    def from_json(cls, doc: Any) -> "RuntimeFeatures":
        """From ``runc features``'s JSON (anything else: nothing supported)."""
        if not isinstance(doc, dict):
            doc = {}
        options = doc.get("mountOptions")
        known = frozenset(o for o in options if isinstance(o, str)) if isinstance(options, list) else frozenset()
        linux = doc.get("linux") if isinstance(doc.get("linux"), dict) else {}
        extensions = linux.get("mountExtensions") if isinstance(linux.get("mountExtensions"), dict) else {}
        idmap = extensions.get("idmap") if isinstance(extensions.get("idmap"), dict) else {}
        idmap_mounts = idmap.get("enabled") is True
        kinds = linux.get("namespaces") if isinstance(linux.get("namespaces"), list) else []
        return cls(recursive_read_only_mounts="rro" in known, mount_options=known, idmap_mounts=idmap_mounts,
                   user_namespaces=idmap_mounts and "user" in kinds)


class OCIRuntime:
    """Drives one OCI runtime binary with one state directory.

    :param reactor: provides ``spawnProcess`` and ``callLater``.
    :param binary: the runtime, a path or a name looked up in PATH
        (``runc``).  Kept as given when it cannot be found now; calls then
        fail with RuntimeFailure.
    :param state_root: the runtime's ``--root`` (its container state), under
        rktlet's run dir so that rktlet's containers are its own.
    :param timeout: seconds one runtime call may take before it is killed.
    :param threadpool: where blocking cleanup runs (a ``ThreadPool``);
        default: the reactor's.
    """

    def __init__(
        self, reactor: Any, binary: str, state_root: str, timeout: float = 60.0, threadpool: ThreadPool | None = None
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        # An absolute path, when it can be found: conmon gets it as `-r`.
        self.binary = binary if os.sep in binary else (shutil.which(binary) or binary)
        self.state_root = state_root
        self.timeout = timeout
        #: What it supports, once :meth:`probe_features` asked (nothing before).
        self.features = RuntimeFeatures()

    @property
    def threadpool(self) -> ThreadPool:
        """The pool blocking work of this driver (and of execs through it) runs in."""
        # Looked up late: a reactor stand-in without threads is fine until it is needed.
        return self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()

    @property
    def global_args(self) -> list[str]:
        """The global flags placed before every subcommand (what conmon
        receives as ``--runtime-arg``)."""
        return [f"--root={self.state_root}"]

    async def run(self, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        """Run ``BINARY --root=STATE_ROOT ARGS…`` and return ``(exit code,
        stdout, stderr)`` whatever the exit code.

        :raises RuntimeFailure: the binary cannot be run, was killed by a
            signal, or ran past the timeout (then it is killed).
        """
        argv = [self.binary, *self.global_args, *args]
        what = " ".join([os.path.basename(self.binary), *args[:1]])
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH)}
        try:
            output = await run_process(self._reactor, argv, env, stdin, self.timeout, OUTPUT_LIMIT)
        except OSError as e:
            raise RuntimeFailure(f"{what}: cannot run {self.binary}: {os.strerror(e.errno or 0)}") from e
        if output.timed_out:
            raise RuntimeFailure(f"{what}: timed out after {self.timeout:g}s; killed")
        if output.exit_code is None:
            detail = clean_message(output.stderr)
            raise RuntimeFailure(f"{what}: killed by a signal" + (f": {detail}" if detail else ""))
        return output.exit_code, output.stdout, output.stderr

    async def _check(self, *args: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        """:meth:`run`, plus runc's cleaned message (empty on success)."""
        code, out, err = await self.run(*args, stdin=stdin)
        return code, out, ("" if code == 0 else clean_message(err) or f"exit status {code}")

    def _failure(self, args: tuple[str, ...], message: str) -> RuntimeFailure:
        return RuntimeFailure(f"{os.path.basename(self.binary)} {' '.join(args)}: {message}")

    async def start(self, container_id: str) -> None:
        """``runc start``: let a created container's process run."""
        code, _, message = await self._check("start", container_id)
        if code != 0:
            raise self._failure(("start", container_id), message)

    async def kill(self, container_id: str, signal: str = "KILL", all_processes: bool = False) -> None:
        """Send *signal* (a name like ``KILL``/``TERM`` or a number) to the
        container's init, or to every process in it with *all_processes*.
        A container that is not running or does not exist is fine."""
        args = ("kill", "--all", container_id, signal) if all_processes else ("kill", container_id, signal)
        code, _, message = await self._check(*args)
        if code != 0 and not (is_absent(message) or is_not_running(message)):
            raise self._failure(args, message)

    async def delete(self, container_id: str, force: bool = True) -> None:
        """Delete the container's runtime state (with *force*, killing it
        first if it still runs).  An absent container is fine."""
        args = ("delete", "--force", container_id) if force else ("delete", container_id)
        code, _, message = await self._check(*args)
        if code != 0 and not is_absent(message):
            raise self._failure(args, message)
        state_dir = os.path.join(self.state_root, container_id)
        if os.path.lexists(state_dir):
            # runc killed in the middle of its create (a deadline, a failed
            # start) leaves a state dir it does not know, and possibly the
            # bind mount of its own binary it makes there for a moment.
            await deferToThreadPool(self._reactor, self.threadpool, _remove_state_dir, state_dir)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``runc state`` as a dict (``status``: created, running, paused,
        stopped; ``pid``, ``bundle``, ...), or None if it does not exist."""
        code, out, message = await self._check("state", container_id)
        if code != 0:
            if is_absent(message):
                return None
            raise self._failure(("state", container_id), message)
        try:
            state = json.loads(out)
        except ValueError as e:
            raise self._failure(("state", container_id), f"unreadable output: {out[:200]!r}") from e
        if not isinstance(state, dict):
            raise self._failure(("state", container_id), f"unexpected output: {out[:200]!r}")
        return state

    async def probe_features(self) -> RuntimeFeatures:
        """Ask the runtime what it supports (``runc features``, once; runc
        before 1.1 has no such command: then nothing is supported) and keep
        the answer in :attr:`features`."""
        try:
            code, out, _ = await self.run("features")
            doc = json.loads(out) if code == 0 else None
        except (RuntimeFailure, ValueError) as e:
            log.warn("{binary} features: {error}; assuming no optional features", binary=self.binary, error=e)
            doc = None
        features = RuntimeFeatures.from_json(doc)
        if features.user_namespaces and kernel_version() < IDMAPPED_LAYERS_KERNEL:
            # Root filesystems are overlays of idmapped layers: not on this kernel.
            log.warn("{binary} makes idmapped mounts, but Linux {release} cannot use idmapped overlay layers "
                     "(5.19 or later): no user namespaces", binary=self.binary, release=os.uname().release)
            features = replace(features, user_namespaces=False)
        self.features = features
        return self.features

    async def list_ids(self) -> list[str]:
        """The ids of every container in this runtime's state root
        (``runc list --quiet``); none when the state root does not exist."""
        if not os.path.isdir(self.state_root):
            return []
        code, out, message = await self._check("list", "--quiet")
        if code != 0:
            raise self._failure(("list", "--quiet"), message)
        return [line for line in out.decode("utf-8", "replace").split() if line]

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``runc update --resources -``: apply OCI ``linux.resources``
        (*resources*, as in config.json) to a running container."""
        args = ("update", "--resources", "-", container_id)
        code, _, message = await self._check(*args, stdin=json.dumps(resources).encode())
        if code != 0:
            raise self._failure(args, message)
