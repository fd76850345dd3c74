"""A lab for tests that drive conmon and runc for real: temp dirs, a runc
state root, a test-only cgroup parent (``/rktlet-conmon-test-<random>``,
where conmon is placed too), the :class:`~rktlet.oci.conmon.Conmon` and
:class:`~rktlet.oci.runtime.OCIRuntime` drivers on the real reactor, and
OCI bundles made by hand: a busybox root file system (the test image layer,
unpacked with rktlet's own unpacker) and a minimal config.json with the host
network. :meth:`Lab.teardown` deletes every container, kills every conmon of
the lab by pid, reaps them and removes the cgroups and dirs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from typing import Any

from twisted.internet import reactor

from harness.runc import test_runc
from rktlet.errors import RuntimeFailure
from rktlet.image.unpack import unpack_layer
from rktlet.oci import cgroups
from rktlet.oci.conmon import Conmon, Monitor
from rktlet.oci.runtime import OCIRuntime
from harness.images import busybox_layer
from harness.processes import MONITOR_NAMES, live_cmdlines, reap_orphans
from harness.waiting import wait_for

RUNC = test_runc()
CONMON = shutil.which("conmon") or "/usr/bin/conmon"

# A CRI log record: RFC 3339 time with 9 fractional digits and an offset.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d (stdout|stderr) ([FP]) (.*)$")

CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"]


async def exited(monitor: Monitor, timeout: float = 15.0) -> tuple[int, int, bool]:
    """The monitor's exit, or a test failure after *timeout* seconds."""
    return await monitor.exited.addTimeout(timeout, reactor)


def conmon_pids_for(marker: str) -> list[int]:
    """Pids of live conmon processes whose command line mentions *marker*."""
    return [pid for pid, cmdline in live_cmdlines()
            if os.path.basename(cmdline.split(b"\0")[0]) == b"conmon" and marker.encode() in cmdline.replace(b"\0", b" ")]


class Lab:
    """Temp dirs, runc state, cgroups and the Conmon driver of one test."""

    def __init__(self) -> None:
        # Short: <socket_dir>/<id>/attach must fit a unix socket path.
        self.base = tempfile.mkdtemp(prefix="rkcm", dir="/tmp")
        self.exits = os.path.join(self.base, "exits")
        self.sockets = os.path.join(self.base, "s")
        self.runc_root = os.path.join(self.base, "runc")
        self.logs = os.path.join(self.base, "logs")
        os.makedirs(self.logs)
        self.layout = cgroups.detect()
        self.cgroup_parent = f"/rktlet-conmon-test-{uuid.uuid4().hex[:10]}"
        self.cgroup_dirs = cgroups.ensure(self.layout, self.cgroup_parent)
        self.runtime = OCIRuntime(reactor, RUNC, self.runc_root, timeout=30)
        self.conmon = self.new_conmon()
        self.ids: list[str] = []
        self.monitors: list[Monitor] = []
        self.conmons: list[Conmon] = [self.conmon]

    def new_conmon(self) -> Conmon:
        """A Conmon as a freshly (re)started daemon would make it."""
        c = Conmon(reactor, self.runtime, CONMON, exits_dir=self.exits, socket_dir=self.sockets, create_timeout=30)
        if hasattr(self, "conmons"):
            self.conmons.append(c)
        return c

    def bundle(self, container_id: str, args: list[str], resources: dict[str, Any] | None = None) -> str:
        """A bundle for *args* with a busybox root file system."""
        bundle = os.path.join(self.base, "b-" + container_id)
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs)
        blob = os.path.join(bundle, "layer")
        with open(blob, "wb") as f:
            f.write(busybox_layer().blob)
        unpack_layer(blob, rootfs)
        os.unlink(blob)
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs"},
            "hostname": container_id[:60],
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "linux": {
                # Host network: this test is about the monitor, not networking.
                "namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts")],
                "cgroupsPath": f"{self.cgroup_parent}/{container_id}",
                "resources": resources or {},
            },
        }
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        return bundle

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.logs, container_id + ".log")

    def place_conmon(self, pid: int) -> None:
        """The ``cgroup`` callback: conmon joins the test's parent cgroup."""
        cgroups.add_process(self.layout, self.cgroup_parent, pid)

    async def create(self, args: list[str], resources: dict[str, Any] | None = None) -> tuple[str, str, Monitor]:
        container_id = "c" + uuid.uuid4().hex[:12]
        self.ids.append(container_id)
        bundle = self.bundle(container_id, args, resources)
        monitor = await self.conmon.create(container_id, bundle, self.log_path(container_id), cgroup=self.place_conmon)
        self.monitors.append(monitor)
        return container_id, bundle, monitor

    async def run(self, args: list[str], resources: dict[str, Any] | None = None) -> tuple[str, str, Monitor]:
        container_id, bundle, monitor = await self.create(args, resources)
        await self.runtime.start(container_id)
        return container_id, bundle, monitor

    def log_records(self, path: str) -> list[tuple[str, str, str]]:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            match = LOG_RECORD.match(line)
            assert match, f"not a CRI log record: {line!r}"
            records.append(match.groups())
        return records

    async def teardown(self) -> None:
        for container_id in self.ids:
            try:
                await self.runtime.delete(container_id, force=True)
            except RuntimeFailure:
                pass
        # Only conmons of this test (their command line names its dirs), by pid.
        for pid in conmon_pids_for(self.base):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The monitors are this (subreaper) process's children: their
        # watches reap them; reap the rest (stopped watches) here.
        await wait_for(lambda: not conmon_pids_for(self.base), 10, "conmon to end")
        await wait_for(lambda: all(m.conmon_exited or not m.running for m in self.monitors), 10, "conmon to be reaped")
        reap_orphans(MONITOR_NAMES)
        for c in self.conmons:
            c.close()
        dirs = list(self.cgroup_dirs)
        if self.layout.mode == "hybrid" and self.layout.unified:
            # runc also makes the container's cgroup in the unified tree of
            # a hybrid host, creating our parent there; runc delete removes
            # only the container's level.
            dirs.append(os.path.join(self.layout.unified, self.cgroup_parent.lstrip("/")))
        cgroups.remove(dirs)
        shutil.rmtree(self.base, ignore_errors=True)

    def assert_clean(self) -> None:
        """After :meth:`teardown`: no conmon, dir or cgroup of the lab is left."""
        assert not conmon_pids_for(self.base)
        assert not os.path.exists(self.base)
        name = self.cgroup_parent.lstrip("/")
        left = [root for root in {*self.layout.v1.values(), self.layout.unified}
                if root and os.path.exists(os.path.join(root, name))]
        assert not left, f"cgroup {self.cgroup_parent} left in {left}"
