"""A real rktlet daemon for tests: own socket, root, run dir and stream port,
started as a separate process and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Sequence

import grpc

from rktlet.cri.proto import pb
from harness.processes import CriClients, read_log, stop_process
from harness.runc import test_runc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env() -> dict[str, str]:
    """The environment for a daemon process: this checkout's code first on
    the path, so twistd finds its plugin and the package under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def twistd_command(*args: str) -> list[str]:
    """``twistd -n rktlet ARGS``, the twistd installed beside the interpreter
    running the tests."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        twistd = shutil.which("twistd") or "twistd"
    return [twistd, "--nodaemon", "--pidfile=", "rktlet", *args]


class Daemon(CriClients):
    """One rktlet process in its own temporary directories.

    :param extra_args: more command-line options.
    :param command: the argv prefix that starts it (``twistd_command()`` by
        default; the README's ``rktlet`` command in e2e tests).
    :param log_level: ``--log-level`` to give (``None``: none, e.g. for the
        config file to set it).
    :param log_format: ``--log-format`` to give (``None``: none).
    """

    def __init__(self, extra_args: Sequence[str] = (), command: Sequence[str] | None = None,
                 log_level: str | None = "debug", log_format: str | None = None) -> None:
        # Short paths: a unix socket path must fit in 108 bytes.
        self.base = tempfile.mkdtemp(prefix="rktlet-", dir="/tmp")
        # 0711 (search only), as /run is 0755 on a host: the root of a pod
        # with its own user namespace (an unprivileged host uid) traverses
        # the run dir below to its containers' root filesystems.
        os.chmod(self.base, 0o711)
        self.root = os.path.join(self.base, "root")
        self.run_dir = os.path.join(self.base, "run")
        self.socket = os.path.join(self.run_dir, "rktlet.sock")
        self.cni_conf_dir = os.path.join(self.base, "net.d")
        os.makedirs(self.cni_conf_dir)
        self.stream_port = free_port()
        self.log_path = os.path.join(self.base, "daemon.log")
        self.extra_args = list(extra_args)
        self.command = list(command) if command is not None else None
        self.log_level = log_level
        self.log_format = log_format
        #: more environment variables for the next start (debug points).
        self.env: dict[str, str] = {}
        self.process: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None

    @property
    def args(self) -> list[str]:
        """The options this daemon is started with."""
        return [
            "--socket", self.socket,
            "--root", self.root,
            "--run-dir", self.run_dir,
            "--cni-conf-dir", self.cni_conf_dir,
            "--stream-address", f"127.0.0.1:{self.stream_port}",
            *(["--log-level", self.log_level] if self.log_level else []),
            *(["--log-format", self.log_format] if self.log_format else []),
            # The default handler's runc: $RKTLET_TEST_RUNC (see harness.runc).
            *(["--runtime", test_runc()] if os.environ.get("RKTLET_TEST_RUNC") else []),
            *self.extra_args,
        ]  # fmt: skip

    def spawn(self, **popen_kwargs) -> subprocess.Popen:
        """Start the process without waiting for it to serve."""
        argv = (self.command or twistd_command()) + self.args
        log = open(self.log_path, "ab")
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**daemon_env(), **self.env},
                                    cwd=self.base, **popen_kwargs)
        finally:
            log.close()

    def start(self, timeout: float = 20.0) -> "Daemon":
        """Start and wait until the CRI socket answers ``Version``."""
        self.process = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rktlet exited with {self.process.returncode}:\n{self.log()}")
            if os.path.exists(self.socket):
                try:
                    self.runtime().Version(pb.VersionRequest(), timeout=2)
                    return self
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rktlet did not serve within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Everything the daemon wrote so far."""
        return read_log(self.log_path)

    def log_records(self) -> list[dict]:
        """The log so far as JSON records (a daemon started with
        ``log_format="json"``); a line that is not a JSON object raises
        ``ValueError`` naming it."""
        import json

        records = []
        for number, line in enumerate(self.log().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{self.log_path}:{number} is not JSON: {line!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.log_path}:{number} is not a JSON object: {line!r}")
            records.append(record)
        return records

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the running daemon (by its PID)."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("the daemon is not running")
        os.kill(self.process.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the daemon (by PID) and wait; SIGKILL if it lingers.

        :returns: its exit status.
        """
        self.close_channel()
        proc, self.process = self.process, None
        if proc is None:
            return None
        return stop_process(proc, timeout, sig)

    def cleanup(self) -> None:
        """Stop the daemon and remove its directories — unmounting first
        anything still mounted under them (a safety net: the tests remove
        their pods, which unmounts)."""
        self.stop()
        with open("/proc/self/mounts") as f:
            mounted = [line.split()[1] for line in f]
        for path in sorted((m for m in mounted if m.startswith(self.base + "/")), reverse=True):
            subprocess.run(["umount", "-l", path], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def write_network(conf_dir: str, name: str = "rktlet-test", plugins: Sequence[str] = ("bridge", "portmap")) -> str:
    """Write a minimal CNI conflist naming *plugins* into *conf_dir*."""
    import json

    path = os.path.join(conf_dir, "10-test.conflist")
    with open(path, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": p} for p in plugins]}, f)
    return path


def serve(d: Daemon) -> Iterator[Daemon]:
    """Start *d* and yield it; afterwards remove its pods, stop it by PID,
    remove its dirs and reap the monitors it left (for fixtures)."""
    from harness.pods import remove_all_pods
    from harness.processes import MONITOR_NAMES, reap_orphans

    try:
        yield d.start()
    finally:
        remove_all_pods(d)
        d.cleanup()
        reap_orphans(MONITOR_NAMES)
