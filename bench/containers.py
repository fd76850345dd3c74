#!/usr/bin/env python3
"""Container lifecycle benchmark: rktlet against containerd, measured in the same run.

Both runtimes are driven by the same CRI v1 gRPC client code (one channel per
runtime, every blocking call timed with ``time.perf_counter``), with the same
busybox image (``tests/support/images.py`` ``busybox_image()``, pushed to a
local ``docker-registry`` on 127.0.0.1 and pulled by each runtime before
anything is timed), the same pod and container configurations (what the
kubelet sends for a BestEffort pod without ``shareProcessNamespace``) and the
same CNI plugins in equivalent networks (bridge + host-local + portmap, each
runtime its own bridge and /24, ``ipMasq`` false).

For each runtime, freshly started:

1. one warm-up pod with one container (create, start, stop, remove; not
   counted);
2. **lifecycle**: ``--containers`` N pods (default 20) are made (not timed),
   then one container in each — CreateContainer and StartContainer one after
   the other, as the kubelet does — running
   ``sh -c 'trap "exit 0" TERM; while true; do sleep 0.1; done'`` (it exits
   on SIGTERM; busybox ``sh`` as PID 1 would ignore SIGTERM without the
   trap). Once they all run and the daemon is idle, the memory is read
   (a pod with one container). Then StopContainer (timeout 10) for each —
   every container must exit 0, i.e. by its trap, not by the SIGKILL after
   the grace period — and RemoveContainer for each. p50 and p95 of every
   call and of create+start;
3. **many**: ``--many-pods`` pods (default 100) with ``--per-pod``
   containers each (default 2) running ``sleep 3600``. The memory is read
   before and after. With them all present, ``--list-calls`` (default 200)
   unfiltered ListContainers calls and ``--status-calls`` (default 200)
   ContainerStatus calls (round robin over the containers) are timed, after
   5 untimed ones. Then everything is stopped (StopContainer timeout 0:
   ``sleep`` as PID 1 ignores SIGTERM) and removed, also timed (for
   information).

One pod per container in the lifecycle phase: it is the kubelet's commonest
case and makes the memory figure "a pod with one container" directly. The
"many" phase uses two containers per pod (the kubelet usually has 1-3).

Memory: rktlet keeps one ``conmon`` per container (the daemon's child; a pod
without a shared PID namespace has no process of its own); containerd keeps
one ``containerd-shim-runc-v2`` per pod (serving all its containers) plus the
pod's pause process. ``VmRSS`` and PSS (``/proc/PID/smaps_rollup``) of these
processes are summed; the containers' own processes are counted apart and
left out. The daemons' RSS growth is given beside it.

Run it as root from the repository root with the test extras installed::

    sudo .venv/bin/python bench/containers.py [--containers 20] [--runtime rktlet] [--json]
    sudo .venv/bin/python bench/containers.py --runtime rktlet --rktlet-log-level debug --rktlet-log /tmp/rktlet.log

Progress goes to stderr. Exit status 1 when a runtime failed (errors listed),
2 when something it needs is missing, 0 otherwise whether or not the goals are
met. Everything is cleaned up (containers and pods through the CRI, daemons
and left-over monitors by PID, bridges, IPAM state, cgroups, mounts,
temporary directories, ``ip_forward``) and checked afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

try:
    import grpc

    from rktlet.cri.proto import pb, pb_grpc
    from rktlet.oci import cgroups
    from tests.support.containerd import (
        INSTALL_HINT,
        Containerd,
        containerd_binary,
        containerd_version,
        descendants,
        unmount_under,
    )
    from tests.support.daemon import Daemon
    from tests.support.images import build_image, busybox_image, busybox_layer, push_image
    from tests.support.network import NAT_TOOLS, SHARED_CHAINS, TestNetwork, nat_chains, remove_chains
    from tests.support.registry import LocalRegistry, registry_available
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/containers.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/containers.py\n"
    )
    sys.exit(2)

RUNTIMES = ("rktlet", "containerd")
MB = 1_000_000
KB = 1024

#: The goals.
CREATE_START_RATIO_GOAL = 1.0
LIST_P50_GOAL_MS = 5.0
LIST_GOAL_CONTAINERS = 200
MEMORY_RATIO_GOAL = 0.2

#: The lifecycle container: exits 0 on SIGTERM (busybox sh as PID 1 ignores
#: SIGTERM unless it traps it).
TRAP_COMMAND = ["sh", "-c", 'trap "exit 0" TERM; while true; do sleep 0.1; done']
#: The containers of the "many" phase.
SLEEP_COMMAND = ["sleep", "3600"]

WORKLOAD_REPO = "bench/busybox"
WORKLOAD_TAG = "1"
PAUSE_REPO = "bench/pause"
PAUSE_TAG = "3.9"
PAUSE_ARGV = ["/bin/sleep", "infinity"]

#: Temporary directories this run made (daemons', IPAM state, registry, pod
#: logs): checked for mounts and removed at the end; nothing else in /tmp is
#: touched.
OUR_DIRS: list[str] = []

#: The kubelet's default masked and read-only paths.
MASKED_PATHS = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY_PATHS = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def percentile(values: list[float], q: float) -> Optional[float]:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(values_ms),
        "p50_ms": percentile(values_ms, 50),
        "p95_ms": percentile(values_ms, 95),
        "min_ms": min(values_ms) if values_ms else None,
        "max_ms": max(values_ms) if values_ms else None,
    }


# -- processes and memory ---------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _status_kb(pid: int, key: str) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rfind(")") + 2 :].split() if stat else []


def _start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (tells a reused PID apart)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    try:
        return sum(int(f) for f in fields[11:15])
    except (ValueError, IndexError):
        return 0


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").strip()


def _argv(pid: int) -> list[str]:
    return [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]


def wait_idle(pids: list[int], quiet: float = 0.5, limit: float = 15.0) -> None:
    """Wait until ``pids`` together used no CPU for ``quiet`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    last = sum(_cpu_ticks(p) for p in pids)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(_cpu_ticks(p) for p in pids)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return


def memory_sample(daemon_pid: int, roles: dict[int, str]) -> dict[str, Any]:
    """The daemon's RSS/PSS and, per role (``conmon``, ``shim``, ``pause``,
    ``container``), the number of processes and their summed RSS and PSS."""
    by_role: dict[str, dict[str, int]] = {}
    for pid, role in roles.items():
        entry = by_role.setdefault(role, {"count": 0, "rss_kb": 0, "pss_kb": 0, "rss_anon_kb": 0, "rss_file_kb": 0})
        rss = _status_kb(pid, "VmRSS")
        if rss == 0 and not os.path.exists(f"/proc/{pid}"):
            continue
        entry["count"] += 1
        entry["rss_kb"] += rss
        entry["pss_kb"] += _pss_kb(pid)
        entry["rss_anon_kb"] += _status_kb(pid, "RssAnon")
        entry["rss_file_kb"] += _status_kb(pid, "RssFile")
    return {
        "daemon_rss_kb": _status_kb(daemon_pid, "VmRSS"),
        "daemon_pss_kb": _pss_kb(daemon_pid),
        "roles": by_role,
    }


def _role(sample: dict[str, Any], role: str, key: str) -> int:
    return sample["roles"].get(role, {}).get(key, 0)


# -- cgroups (made beforehand, as the kubelet does) ---------------------------------------------


class BenchCgroups:
    """``/rkcbench-<token>/<runtime>/pod<uid>`` in every cgroup hierarchy
    (and the unified one of a hybrid host, where runc makes them too)."""

    def __init__(self) -> None:
        self.layout = cgroups.detect()
        self.root = f"/rkcbench-{uuid.uuid4().hex[:8]}"
        self._created: list[str] = []

    def prefix(self, runtime: str) -> str:
        return f"{self.root}/{runtime}"

    def pod(self, runtime: str, uid: str) -> str:
        path = f"{self.prefix(runtime)}/pod{uid}"
        self._created += cgroups.ensure(self.layout, path)
        return path

    def release_pod(self, path: str) -> None:
        """Remove one pod's cgroup (what the kubelet does once the pod is gone)."""
        mine = [d for d in self._created if d.endswith(path)]
        cgroups.remove(mine)
        self._created = [d for d in self._created if d not in mine]

    def all_dirs(self) -> list[str]:
        """Every directory of our root, in every mounted cgroup hierarchy."""
        found = []
        for line in _read("/proc/self/mountinfo").splitlines():
            fields = line.split()
            if " - cgroup" in line and len(fields) > 4:
                path = os.path.join(fields[4], self.root.lstrip("/"))
                if os.path.isdir(path):
                    found.append(path)
        return sorted(set(found))

    def cleanup(self) -> None:
        """Remove our whole tree; processes still in it (ours: nobody else
        uses this root) are killed by :func:`cgroups.remove`."""
        try:
            cgroups.remove(self._created + self.all_dirs())
        except Exception as e:  # reported by the leftover check
            progress(f"  cgroup removal: {e}")
        self._created = []


# -- networks -------------------------------------------------------------------------------------


def pick_subnets(count: int) -> list[str]:
    """Distinct private /24s (10.237.X.0/24) that no route or address uses yet."""
    taken = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    choices = [x for x in range(1, 255) if f"10.237.{x}." not in taken]
    return [f"10.237.{x}.0/24" for x in random.sample(choices, count)]


def make_network(conf_dir: str, name: str, bridge: str, subnet: str) -> TestNetwork:
    """bridge + host-local + portmap (isGateway, ipMasq false, no default
    route, IPAM state in a temporary dir), replacing what ``conf_dir`` held."""
    network = TestNetwork(conf_dir, name=name)
    OUR_DIRS.append(network.ipam_dir)
    network.bridge = bridge
    network.subnet = subnet
    network.gateway = subnet.replace(".0/24", ".1")
    os.makedirs(conf_dir, exist_ok=True)
    for entry in os.listdir(conf_dir):
        os.unlink(os.path.join(conf_dir, entry))
    network.write()
    return network


class SharedNatChains:
    """portmap's nat chains shared by all sandboxes (``CNI-HOSTPORT-*``),
    which the plugin makes and never deletes: removed again if this run made
    them and no sandbox on the machine has port mappings (``CNI-DN-*``)."""

    def __init__(self) -> None:
        self.before = {tool: nat_chains(tool) & set(SHARED_CHAINS) for tool in NAT_TOOLS}

    def restore(self) -> None:
        for tool in NAT_TOOLS:
            present = nat_chains(tool)
            if any(c.startswith("CNI-DN-") for c in present):
                continue  # some sandbox still has port mappings: leave the shared chains
            remove_chains(tool, (present & set(SHARED_CHAINS)) - self.before[tool])


class HostForwarding:
    """The bridge plugin (isGateway) turns ``net.ipv4.ip_forward`` on and
    never back off; put it back as it was."""

    PATH = "/proc/sys/net/ipv4/ip_forward"

    def __init__(self) -> None:
        self.value = _read(self.PATH).strip()

    def restore(self) -> None:
        if self.value and _read(self.PATH).strip() != self.value:
            with open(self.PATH, "w") as f:
                f.write(self.value)


# -- the runtimes -------------------------------------------------------------------------------------


class Runtime:
    """A started runtime as the benchmark sees it."""

    def __init__(self, name: str, pid: int, socket: str, base: str, network: TestNetwork,
                 roles: Callable[[], dict[int, str]], cleanup: Callable[[], None],
                 log_path: Optional[str] = None):
        self.name = name
        self.pid = pid
        self.base = base
        self.network = network
        self.roles = roles
        self._cleanup = cleanup
        self.log_path = log_path
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)

    def log_offset(self) -> int:
        try:
            return os.path.getsize(self.log_path) if self.log_path else 0
        except OSError:
            return 0

    def read_log(self, start: int, end: Optional[int] = None) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                data = f.read() if end is None else f.read(max(end - start, 0))
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def idle(self, quiet: float = 1.0) -> None:
        """Wait until the daemon and the monitors (not the containers, whose
        loops never rest) used no CPU for ``quiet`` seconds."""
        monitors = [pid for pid, role in self.roles().items() if role != "container"]
        wait_idle([self.pid, *monitors], quiet=quiet)

    def memory(self) -> dict[str, Any]:
        return memory_sample(self.pid, self.roles())

    def cleanup(self) -> None:
        try:
            self.channel.close()
        finally:
            self._cleanup()


def _wait_network_ready(stub: pb_grpc.RuntimeServiceStub, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = stub.Status(pb.StatusRequest(), timeout=10).status
        net = {c.type: c for c in status.conditions}.get("NetworkReady")
        if net is not None and net.status:
            return
        last = f"{net.reason}: {net.message}" if net is not None else "no NetworkReady condition"
        time.sleep(0.1)
    raise RuntimeError(f"the runtime's network did not become ready within {timeout:.0f}s ({last})")


def _kill_by_pid(victims: dict[int, Optional[int]], timeout: float = 10.0) -> list[int]:
    """SIGKILL each ``pid`` still alive with the same start time; return those killed."""
    killed = []
    for pid, started in victims.items():
        if started is not None and _start_time(pid) == started and os.path.exists(f"/proc/{pid}"):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        _stat_fields(p)[:1] not in ([], ["Z"]) for p in killed
    ):
        time.sleep(0.05)
    return killed


def _remove_everything(stub: pb_grpc.RuntimeServiceStub, timeout: float = 30.0) -> list[str]:
    """Stop and remove every container and pod through the CRI; the errors."""
    errors: list[str] = []
    try:
        containers = stub.ListContainers(pb.ListContainersRequest(), timeout=timeout).containers
        pods = stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=timeout).items
    except grpc.RpcError as e:
        return [f"list: {e.code().name}: {e.details()}"]
    for c in containers:
        try:
            stub.StopContainer(pb.StopContainerRequest(container_id=c.id, timeout=0), timeout=timeout)
            stub.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=timeout)
        except grpc.RpcError as e:
            errors.append(f"container {c.id[:13]}: {e.code().name}: {e.details()}")
    for pod in pods:
        try:
            stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)
            stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)
        except grpc.RpcError as e:
            errors.append(f"pod sandbox {pod.id[:13]}: {e.code().name}: {e.details()}")
    return errors


class BenchDaemon(Daemon):
    """The integration tests' daemon, in a session of its own: a ^C or a
    ``timeout`` signal sent to the benchmark's process group must not stop
    it before the benchmark has removed its containers through the CRI."""

    def spawn(self, **popen_kwargs: Any) -> subprocess.Popen:
        popen_kwargs.setdefault("start_new_session", True)
        return super().spawn(**popen_kwargs)


def start_rktlet(opts: argparse.Namespace, subnet: str, tag: str, **_: Any) -> Runtime:
    daemon = BenchDaemon(extra_args=["--log-level", opts.rktlet_log_level])
    OUR_DIRS.append(daemon.base)
    network: Optional[TestNetwork] = None

    def roles() -> dict[int, str]:
        """conmon (the daemon's children) and the containers' processes under them."""
        if daemon.process is None or daemon.process.poll() is not None:
            return {}
        found: dict[int, str] = {}
        for pid in descendants([daemon.process.pid]):
            found[pid] = "conmon" if _comm(pid) == "conmon" else "container"
        return found

    def cleanup() -> None:
        try:
            if daemon.process is not None and daemon.process.poll() is None:
                channel = grpc.insecure_channel(f"unix:{daemon.socket}")
                try:
                    for error in _remove_everything(pb_grpc.RuntimeServiceStub(channel)):
                        progress(f"  rktlet cleanup: {error}")
                finally:
                    channel.close()
                # conmon outlives the daemon by design: note what is left by
                # PID (and start time) before stopping it, kill it afterwards.
                left = {pid: _start_time(pid) for pid in descendants([daemon.process.pid])}
                daemon.stop()
                killed = _kill_by_pid(left)
                if killed:
                    progress(f"  rktlet cleanup: killed {len(killed)} left-over monitor/container processes by PID")
            if opts.rktlet_log and os.path.exists(daemon.log_path):
                shutil.copyfile(daemon.log_path, opts.rktlet_log)
        finally:
            daemon.cleanup()
            if network is not None:
                network.cleanup()

    try:
        daemon.start()
        # Replace rktlet's default network (10-rktlet.conflist) with the benchmark's.
        network = make_network(daemon.cni_conf_dir, "bench-rktlet", f"bnchrk{tag}", subnet)
        assert daemon.process is not None
        runtime = Runtime("rktlet", daemon.process.pid, daemon.socket, daemon.base, network, roles, cleanup,
                          log_path=daemon.log_path)
        _wait_network_ready(runtime.stub)
        return runtime
    except BaseException:
        cleanup()
        raise


def start_containerd(opts: argparse.Namespace, subnet: str, tag: str, registry: Optional[LocalRegistry] = None,
                     pause_ref: str = "", **_: Any) -> Runtime:
    assert registry is not None
    ctrd = Containerd(insecure_registries=[registry.host], cri={"sandbox_image": pause_ref})
    network: Optional[TestNetwork] = None

    def roles() -> dict[int, str]:
        """Each pod's shim, its pause process and its containers' processes."""
        found: dict[int, str] = {}
        for shim, below in ctrd.shim_tree().items():
            found[shim] = "shim"
            for pid in below:
                found[pid] = "pause" if _argv(pid) == PAUSE_ARGV else "container"
        return found

    def cleanup() -> None:
        try:
            if ctrd.process is not None and ctrd.process.poll() is None:
                for error in _remove_everything(ctrd.runtime()):
                    progress(f"  containerd cleanup: {error}")
        finally:
            ctrd.cleanup()  # stops containerd by PID, kills this instance's shims by PID
            if network is not None:
                network.cleanup()

    try:
        ctrd.prepare()
        assert ctrd.base is not None
        OUR_DIRS.append(ctrd.base)
        # containerd's CRI plugin wants the network configuration at start.
        network = make_network(ctrd.cni_conf_dir, "bench-containerd", f"bnchcd{tag}", subnet)
        ctrd.start()
        assert ctrd.pid is not None and ctrd.base is not None
        runtime = Runtime("containerd", ctrd.pid, ctrd.socket, ctrd.base, network, roles, cleanup)
        _wait_network_ready(runtime.stub)
        # The sandbox image, pulled before anything is timed.
        runtime.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pause_ref)), timeout=120)
        return runtime
    except BaseException:
        cleanup()
        raise


STARTERS: dict[str, Callable[..., Runtime]] = {"rktlet": start_rktlet, "containerd": start_containerd}


# -- pods and containers, as the kubelet makes them ----------------------------------------------------


class Pod:
    def __init__(self, sandbox_id: str, config: pb.PodSandboxConfig):
        self.id = sandbox_id
        self.config = config
        self.containers: list[str] = []

    @property
    def cgroup_parent(self) -> str:
        return self.config.linux.cgroup_parent


def pod_config(name: str, uid: str, cgroup_parent: str, log_directory: str) -> pb.PodSandboxConfig:
    """What the kubelet sends for a BestEffort pod without shareProcessNamespace."""
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=uid, attempt=0),
        hostname=name,
        log_directory=log_directory,
        dns_config=pb.DNSConfig(
            servers=["10.96.0.10"],
            searches=["bench.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            options=["ndots:5"],
        ),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": "bench",
            "io.kubernetes.pod.uid": uid,
            "app": "bench",
        },
        annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2026-01-01T00:00:00Z"},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)
            ),
        ),
    )


def container_config(pod: Pod, name: str, image: str, command: list[str]) -> pb.ContainerConfig:
    """What the kubelet sends for a BestEffort container (no volumes)."""
    meta = pod.config.metadata
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=command,
        envs=[
            pb.KeyValue(key="KUBERNETES_SERVICE_HOST", value=b"10.96.0.1"),
            pb.KeyValue(key="KUBERNETES_SERVICE_PORT", value=b"443"),
            pb.KeyValue(key="KUBERNETES_PORT", value=b"tcp://10.96.0.1:443"),
        ],
        labels={
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": meta.name,
            "io.kubernetes.pod.namespace": meta.namespace,
            "io.kubernetes.pod.uid": meta.uid,
        },
        annotations={
            "io.kubernetes.container.hash": "%08x" % random.randrange(1 << 32),
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        },
        log_path=f"{name}/0.log",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_period=100000, cpu_shares=2, oom_score_adj=1000),
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD),
                masked_paths=MASKED_PATHS,
                readonly_paths=READONLY_PATHS,
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined),
            ),
        ),
    )


class Driver:
    """Makes pods and containers on one runtime and times the calls."""

    def __init__(self, runtime: Runtime, cg: BenchCgroups, image: str, log_root: str, timeout: float):
        self.runtime = runtime
        self.cg = cg
        self.image = image
        self.log_root = log_root
        self.timeout = timeout
        self.count = 0

    def timed(self, method: str, request: Any) -> tuple[Any, float]:
        call = getattr(self.runtime.stub, method)
        started = time.perf_counter()
        response = call(request, timeout=self.timeout)
        return response, (time.perf_counter() - started) * 1000

    def new_pod(self, phase: str) -> Pod:
        """RunPodSandbox (not timed), with the pod's cgroup and log directory
        made first, as the kubelet does."""
        self.count += 1
        uid = str(uuid.uuid4())
        name = f"{phase}-{self.count}"
        log_dir = os.path.join(self.log_root, f"bench_{name}_{uid}")
        os.makedirs(log_dir, exist_ok=True)
        config = pod_config(name, uid, self.cg.pod(self.runtime.name, uid), log_dir)
        response = self.runtime.stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=self.timeout)
        return Pod(response.pod_sandbox_id, config)

    def remove_pod(self, pod: Pod) -> None:
        self.runtime.stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=self.timeout)
        self.runtime.stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=self.timeout)
        self.cg.release_pod(pod.cgroup_parent)
        shutil.rmtree(pod.config.log_directory, ignore_errors=True)

    def create(self, pod: Pod, name: str, command: list[str]) -> tuple[str, float]:
        os.makedirs(os.path.join(pod.config.log_directory, name), exist_ok=True)  # the kubelet makes it
        request = pb.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=container_config(pod, name, self.image, command), sandbox_config=pod.config
        )
        response, ms = self.timed("CreateContainer", request)
        pod.containers.append(response.container_id)
        return response.container_id, ms

    def start(self, container_id: str) -> float:
        return self.timed("StartContainer", pb.StartContainerRequest(container_id=container_id))[1]

    def stop(self, container_id: str, timeout: int) -> float:
        return self.timed("StopContainer", pb.StopContainerRequest(container_id=container_id, timeout=timeout))[1]

    def remove(self, container_id: str) -> float:
        return self.timed("RemoveContainer", pb.RemoveContainerRequest(container_id=container_id))[1]

    def status(self, container_id: str) -> tuple[pb.ContainerStatus, float]:
        response, ms = self.timed("ContainerStatus", pb.ContainerStatusRequest(container_id=container_id))
        return response.status, ms

    def wait_running(self, container_ids: list[str], limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        for cid in container_ids:
            while True:
                s = self.status(cid)[0]
                if s.state == pb.CONTAINER_RUNNING:
                    break
                if s.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                    raise RuntimeError(f"container {cid[:13]} is {pb.ContainerState.Name(s.state)} "
                                       f"(exit code {s.exit_code}, {s.reason}: {s.message})")
                time.sleep(0.05)


RPC_LINE = re.compile(r"runtime\.v1\.RuntimeService/(\w+) .*?([\d.]+)ms OK")


def server_times(log: str) -> dict[str, dict[str, Any]]:
    """rktlet's own per-RPC durations, from its debug log lines."""
    out: dict[str, list[float]] = {}
    for method, ms in RPC_LINE.findall(log):
        out.setdefault(method, []).append(float(ms))
    return {method: summary(values) for method, values in out.items()}


# -- the measurement ---------------------------------------------------------------------------------------


def _per(total_kb: int, n: int) -> Optional[float]:
    """kB total -> bytes per item (``None`` without items)."""
    return total_kb * KB / n if n else None


def lifecycle(driver: Driver, runtime: Runtime, n: int, result: dict[str, Any]) -> None:
    """N pods with one trapping container each: create+start each, memory,
    stop (timeout 10) each, remove each."""
    progress(f"  lifecycle: {n} pods with one container each...")
    pods = [driver.new_pod("life") for _ in range(n)]
    runtime.idle()
    mem0 = runtime.memory()
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("CreateContainer", "StartContainer", "create+start", "StopContainer",
                                        "RemoveContainer")}
    log_start = runtime.log_offset()
    ids = []
    for pod in pods:
        cid, create_ms = driver.create(pod, "app", TRAP_COMMAND)
        start_ms = driver.start(cid)
        ids.append(cid)
        samples["CreateContainer"].append(create_ms)
        samples["StartContainer"].append(start_ms)
        samples["create+start"].append(create_ms + start_ms)
    log_started = runtime.log_offset()
    driver.wait_running(ids)
    runtime.idle()
    mem1 = runtime.memory()
    log_stop = runtime.log_offset()
    for cid in ids:
        samples["StopContainer"].append(driver.stop(cid, 10))
    exits = []
    for cid in ids:
        s = driver.status(cid)[0]
        exits.append((s.state, s.exit_code, s.reason))
    for cid in ids:
        samples["RemoveContainer"].append(driver.remove(cid))
    log_end = runtime.log_offset()
    for pod in pods:
        driver.remove_pod(pod)

    bad = [e for e in exits if e[0] != pb.CONTAINER_EXITED or e[1] != 0]
    if bad:
        result.setdefault("problems", []).append(
            f"{len(bad)} of {n} containers did not exit 0 on SIGTERM within StopContainer's 10 s "
            f"(state, exit code, reason: {sorted(set(bad))[:3]}); StopContainer times are not comparable"
        )
    conmons = _role(mem1, "conmon", "count")
    shims = _role(mem1, "shim", "count")
    monitor_rss = _role(mem1, "conmon", "rss_kb") + _role(mem1, "shim", "rss_kb") + _role(mem1, "pause", "rss_kb")
    monitor_pss = _role(mem1, "conmon", "pss_kb") + _role(mem1, "shim", "pss_kb") + _role(mem1, "pause", "pss_kb")
    monitor_anon = sum(_role(mem1, r, "rss_anon_kb") for r in ("conmon", "shim", "pause"))
    result["lifecycle"] = {
        "containers": n,
        "rpcs": {k: summary(v) for k, v in samples.items()},
        "samples_ms": samples,
        "stop_exits": [{"state": pb.ContainerState.Name(s), "exit_code": c, "reason": r} for s, c, r in exits],
        "memory": {
            "pods": n,
            "before": mem0,
            "after": mem1,
            # added per pod with one container: rktlet conmon; containerd shim + pause
            "per_pod_rss_bytes": _per(monitor_rss, n),
            "per_pod_pss_bytes": _per(monitor_pss, n),
            "per_pod_anon_bytes": _per(monitor_anon, n),
            "per_conmon_rss_bytes": _per(_role(mem1, "conmon", "rss_kb"), conmons),
            "per_conmon_pss_bytes": _per(_role(mem1, "conmon", "pss_kb"), conmons),
            "per_shim_rss_bytes": _per(_role(mem1, "shim", "rss_kb"), shims),
            "per_shim_pss_bytes": _per(_role(mem1, "shim", "pss_kb"), shims),
            "per_pause_rss_bytes": _per(_role(mem1, "pause", "rss_kb"), _role(mem1, "pause", "count")),
            "per_pause_pss_bytes": _per(_role(mem1, "pause", "pss_kb"), _role(mem1, "pause", "count")),
            "daemon_rss_growth_per_container_bytes": (mem1["daemon_rss_kb"] - mem0["daemon_rss_kb"]) * KB / n,
        },
    }
    if runtime.log_path:
        result["lifecycle"]["server_side"] = {
            "create_start": server_times(runtime.read_log(log_start, log_started)),
            "stop_remove": server_times(runtime.read_log(log_stop, log_end)),
        }


def many(driver: Driver, runtime: Runtime, opts: argparse.Namespace, result: dict[str, Any]) -> None:
    """``--many-pods`` x ``--per-pod`` running containers: memory, then
    ListContainers and ContainerStatus with them all present."""
    n_pods, per_pod = opts.many_pods, opts.per_pod
    total = n_pods * per_pod
    progress(f"  many: {n_pods} pods x {per_pod} running containers ({total})...")
    runtime.idle()
    mem0 = runtime.memory()
    fill: list[float] = []
    pods = []
    ids: list[str] = []
    started = time.monotonic()
    for i in range(n_pods):
        pod = driver.new_pod("many")
        pods.append(pod)
        for k in range(per_pod):
            cid, create_ms = driver.create(pod, f"c{k}", SLEEP_COMMAND)
            fill.append(create_ms + driver.start(cid))
            ids.append(cid)
        if (i + 1) % 25 == 0:
            progress(f"    {i + 1} pods, {len(ids)} containers ({time.monotonic() - started:.0f} s)")
    driver.wait_running(ids)
    runtime.idle()
    mem1 = runtime.memory()

    log_start = runtime.log_offset()
    request = pb.ListContainersRequest()
    for _ in range(5):
        runtime.stub.ListContainers(request, timeout=driver.timeout)
    list_ms: list[float] = []
    listed = running = 0
    for _ in range(opts.list_calls):
        response, ms = driver.timed("ListContainers", request)
        list_ms.append(ms)
        listed = len(response.containers)
        running = sum(1 for c in response.containers if c.state == pb.CONTAINER_RUNNING)
    if listed != total or running != total:
        raise RuntimeError(f"ListContainers returned {listed} containers ({running} running), {total} expected")
    for cid in ids[:5]:
        driver.status(cid)
    status_ms: list[float] = []
    for i in range(opts.status_calls):
        s, ms = driver.status(ids[i % len(ids)])
        if s.state != pb.CONTAINER_RUNNING:
            raise RuntimeError(f"container {s.id[:13]} is {pb.ContainerState.Name(s.state)}")
        status_ms.append(ms)
    log_end = runtime.log_offset()

    progress("    stopping and removing them...")
    stop_ms = [driver.stop(cid, 0) for cid in ids]
    remove_ms = [driver.remove(cid) for cid in ids]
    for pod in pods:
        driver.remove_pod(pod)
    runtime.idle()
    mem2 = runtime.memory()

    conmons = _role(mem1, "conmon", "count")
    shims = _role(mem1, "shim", "count")
    pauses = _role(mem1, "pause", "count")
    monitor_rss = _role(mem1, "conmon", "rss_kb") + _role(mem1, "shim", "rss_kb") + _role(mem1, "pause", "rss_kb")
    monitor_pss = _role(mem1, "conmon", "pss_kb") + _role(mem1, "shim", "pss_kb") + _role(mem1, "pause", "pss_kb")
    monitor_anon = sum(_role(mem1, r, "rss_anon_kb") for r in ("conmon", "shim", "pause"))
    daemon_growth = (mem1["daemon_rss_kb"] - mem0["daemon_rss_kb"]) * KB
    result["many"] = {
        "pods": n_pods,
        "per_pod": per_pod,
        "containers": total,
        "rpcs": {"ListContainers": summary(list_ms), "ContainerStatus": summary(status_ms)},
        "samples_ms": {"ListContainers": list_ms, "ContainerStatus": status_ms},
        "while_filling": {
            "create+start": summary(fill),
            "StopContainer (timeout 0)": summary(stop_ms),
            "RemoveContainer": summary(remove_ms),
        },
        "memory": {
            "before": mem0,
            "after": mem1,
            "after_removal": mem2,
            "monitors": {"conmon": conmons, "shim": shims, "pause": pauses},
            "per_pod_rss_bytes": _per(monitor_rss, n_pods),
            "per_pod_pss_bytes": _per(monitor_pss, n_pods),
            "per_pod_anon_bytes": _per(monitor_anon, n_pods),
            "per_container_rss_bytes": _per(monitor_rss, total),
            "per_container_pss_bytes": _per(monitor_pss, total),
            "daemon_rss_growth_per_container_bytes": daemon_growth / total,
            "daemon_rss_growth_per_pod_bytes": daemon_growth / n_pods,
            "container_processes_rss_bytes_each": _per(_role(mem1, "container", "rss_kb"),
                                                       _role(mem1, "container", "count")),
        },
    }
    if runtime.log_path:
        result["many"]["server_side"] = server_times(runtime.read_log(log_start, log_end))


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, image_ref: str, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, measure, stop it; always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    try:
        started = time.perf_counter()
        runtime.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image_ref)), timeout=120)
        result["pull_ms"] = (time.perf_counter() - started) * 1000
        log_root = tempfile.mkdtemp(prefix=f"rkcbench-logs-{name}-", dir="/tmp")
        OUR_DIRS.append(log_root)
        driver = Driver(runtime, cg, image_ref, log_root, opts.timeout)

        # warm-up, not counted
        pod = driver.new_pod("warmup")
        cid, _ = driver.create(pod, "app", TRAP_COMMAND)
        driver.start(cid)
        driver.wait_running([cid])
        time.sleep(0.3)
        driver.stop(cid, 10)
        driver.remove(cid)
        driver.remove_pod(pod)

        if opts.containers:
            lifecycle(driver, runtime, opts.containers, result)
            r = result["lifecycle"]["rpcs"]
            progress("    " + ", ".join(f"{k} p50 {v['p50_ms']:.1f} ms" for k, v in r.items()))
        if opts.many_pods:
            many(driver, runtime, opts, result)
            r = result["many"]["rpcs"]
            progress("    " + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in r.items()))
    finally:
        runtime.cleanup()
    return result


# -- cleanup check -----------------------------------------------------------------------------------------


def _lines(argv: list[str]) -> list[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


def host_state() -> dict[str, list[str]]:
    links = _lines(["ip", "-o", "link"])
    mounts = [line.split()[1] for line in _read("/proc/self/mounts").splitlines() if len(line.split()) > 1]
    cgroup_dirs = []
    for top in os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup") else []:
        base = os.path.join("/sys/fs/cgroup", top)
        if os.path.isdir(base):
            cgroup_dirs += [os.path.join(base, n) for n in os.listdir(base) if n.startswith("rktlet")]
    return {
        "conmon": sorted(_lines(["pgrep", "-a", "conmon"])),
        "shims": sorted(_lines(["pgrep", "-af", "containerd-shim"])),
        "netns": sorted(line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.strip()),
        "nat_cni": sorted(line for line in _lines(["iptables", "-w", "-t", "nat", "-S"]) if "CNI-" in line),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links if line.count(":") >= 2),
        "tmp_mounts": sorted(m for m in mounts if m.startswith("/tmp/")),
        "cgroups_rktlet": sorted(cgroup_dirs),
    }


def leftovers(before: dict[str, list[str]], bridges: list[str], cg: BenchCgroups) -> list[str]:
    # Exited shims/conmons stay zombies until PID 1 reaps them (they were reparented to it).
    deadline = time.monotonic() + 5
    after = host_state()
    while time.monotonic() < deadline and any("<defunct>" in line for line in after["shims"] + after["conmon"]):
        time.sleep(0.2)
        after = host_state()
    ours = tuple(OUR_DIRS)
    found = []
    for key in ("conmon", "shims", "tmp_mounts"):
        for item in sorted(set(after[key]) - set(before[key])):
            mine = any(d in item for d in ours)
            found.append(f"{'of this run' if mine else 'new since the start, not of this run (another user?)'}: "
                         f"{key}: {item}")
    for key in ("netns", "nat_cni", "links", "cgroups_rktlet"):
        for item in sorted(set(after[key]) - set(before[key])):
            if key == "links" and item in bridges:
                continue  # reported below
            found.append(f"new since the start (maybe another user's): {key}: {item}")
    for bridge in bridges:
        if bridge in after["links"]:
            found.append(f"bridge still present: {bridge}")
    mounts = [line.split()[1] for line in _read("/proc/self/mounts").splitlines() if len(line.split()) > 1]
    for d in ours:
        found += [f"mount under {d}: {m}" for m in mounts if m == d or m.startswith(d + "/")]
        if os.path.exists(d):
            found.append(f"temporary directory still present: {d}")
    found += [f"cgroup still present: {p}" for p in cg.all_dirs()]
    return sorted(set(found))


# -- report ---------------------------------------------------------------------------------------------------


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rk, cd = results.get("rktlet", {}), results.get("containerd", {})

    text = f"create+start p50 at most {CREATE_START_RATIO_GOAL:.1f}x containerd's"
    a = _get(rk, "lifecycle", "rpcs", "create+start", "p50_ms")
    b = _get(cd, "lifecycle", "rpcs", "create+start", "p50_ms")
    ratio = _ratio(a, b)
    if ratio is not None:
        out.append({"goal": text, "value": ratio, "shown": f"{ratio:.2f}x ({a:.1f} ms / {b:.1f} ms)",
                    "status": "PASS" if ratio <= CREATE_START_RATIO_GOAL else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured (needs both runtimes)", "status": "N/A"})

    text = f"ListContainers with {LIST_GOAL_CONTAINERS} containers under {LIST_P50_GOAL_MS:g} ms p50"
    p50 = _get(rk, "many", "rpcs", "ListContainers", "p50_ms")
    if p50 is not None:
        n = rk["many"]["containers"]
        note = "" if n == LIST_GOAL_CONTAINERS else f", measured with {n} containers, not {LIST_GOAL_CONTAINERS}"
        out.append({"goal": text, "value": p50, "shown": f"{p50:.2f} ms (rktlet{note})",
                    "status": "PASS" if p50 < LIST_P50_GOAL_MS else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured", "status": "N/A"})

    text = f"added memory per pod with one container under {MEMORY_RATIO_GOAL}x containerd's (its shim + pause)"
    a = _get(rk, "lifecycle", "memory", "per_pod_rss_bytes")
    b = _get(cd, "lifecycle", "memory", "per_pod_rss_bytes")
    ratio = _ratio(a, b)
    if ratio is not None:
        out.append({"goal": text, "value": ratio,
                    "shown": f"{ratio:.3f}x RSS (rktlet conmon {a / MB:.2f} MB / containerd shim + pause {b / MB:.2f} MB)",
                    "status": "PASS" if ratio < MEMORY_RATIO_GOAL else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured (needs both runtimes)", "status": "N/A"})
    return out


def _ms(value: Optional[float]) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _mb(value: Optional[float], digits: int = 2) -> str:
    return f"{value / MB:.{digits}f}" if value is not None else "-"


def _latency_rows(lines: list[str], rows: list[tuple[str, tuple[str, ...]]], results: dict[str, Any],
                  runtimes: list[str], both: bool) -> None:
    header = f"{'latency, ms':40}" + "".join(f"{name + ' p50':>16}{name + ' p95':>16}" for name in runtimes)
    if both:
        header += f"{'ratio p50':>11}{'ratio p95':>11}"
    lines.append(header)
    for label, path in rows:
        row = f"{label:40}"
        stats = {}
        for name in runtimes:
            s = _get(results[name], *path) or {}
            stats[name] = s
            row += f"{_ms(s.get('p50_ms')):>16}{_ms(s.get('p95_ms')):>16}"
        if both:
            r50 = _ratio(stats["rktlet"].get("p50_ms"), stats["containerd"].get("p50_ms"))
            r95 = _ratio(stats["rktlet"].get("p95_ms"), stats["containerd"].get("p95_ms"))
            row += f"{(f'{r50:.2f}x' if r50 else '-'):>11}{(f'{r95:.2f}x' if r95 else '-'):>11}"
        lines.append(row)


def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    host = report["host"]
    both = all(r in results for r in RUNTIMES)
    n, pods, per_pod = report["containers"], report["many_pods"], report["per_pod"]
    total = pods * per_pod
    lines = [
        f"Container benchmark — {host['cpus']} CPUs, kernel {host['kernel']}, load average "
        f"{host['loadavg_before']:.2f} before, {host['loadavg_after']:.2f} after (other work on the machine skews the figures)",
        f"  containerd: {report['versions'].get('containerd', '-')}, sandbox image {report.get('pause_ref') or '-'}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']}), "
        f"log level {report['rktlet_log_level']}",
        f"  image:      {report.get('image_ref') or '-'} (busybox-static), pulled by both before timing",
        f"  lifecycle:  {n} containers, one per pod (after 1 warm-up): {' '.join(TRAP_COMMAND[:2])} '{TRAP_COMMAND[2]}'",
        f"  many:       {pods} pods x {per_pod} containers ({' '.join(SLEEP_COMMAND)}); "
        f"{report['list_calls']} ListContainers, {report['status_calls']} ContainerStatus calls",
    ]
    for name in runtimes:
        net = results[name]["network"]
        lines.append(f"  {name + ' network:':22}bridge {net['bridge']}, {net['subnet']} (bridge + host-local + portmap)")
    lines.append("")
    if runtimes:
        rows = [
            ("CreateContainer", ("lifecycle", "rpcs", "CreateContainer")),
            ("StartContainer", ("lifecycle", "rpcs", "StartContainer")),
            ("create+start", ("lifecycle", "rpcs", "create+start")),
            ("StopContainer (timeout 10, SIGTERM)", ("lifecycle", "rpcs", "StopContainer")),
            ("RemoveContainer", ("lifecycle", "rpcs", "RemoveContainer")),
            (f"ListContainers ({total} containers)", ("many", "rpcs", "ListContainers")),
            (f"ContainerStatus ({total} containers)", ("many", "rpcs", "ContainerStatus")),
        ]
        _latency_rows(lines, rows, results, runtimes, both)
        lines.append("")
        lines.append(f"while making/removing the {total} containers (information):")
        rows = [
            ("  create+start", ("many", "while_filling", "create+start")),
            ("  StopContainer (timeout 0)", ("many", "while_filling", "StopContainer (timeout 0)")),
            ("  RemoveContainer", ("many", "while_filling", "RemoveContainer")),
        ]
        _latency_rows(lines, rows, results, runtimes, both)

        lines.append("")
        lines.append("memory, MB = 10^6 bytes, RSS / PSS (the containers' own processes are left out)")
        lines.append(f"  {'':46}" + "".join(f"{name:>24}" for name in runtimes) + (f"{'RSS ratio':>11}" if both else ""))

        def row(label: str, phase: str, key: str, ratio: bool = False, digits: int = 2) -> None:
            text = f"  {label:46}"
            rss_values = []
            for name in runtimes:
                rss = _get(results[name], phase, "memory", f"{key}_rss_bytes")
                pss = _get(results[name], phase, "memory", f"{key}_pss_bytes")
                rss_values.append(rss)
                cell = _mb(rss, digits) + (f" / {_mb(pss, digits)}" if pss is not None else "")
                text += f"{cell:>24}"
            if both and ratio:
                r = _ratio(rss_values[0], rss_values[1])
                text += f"{(f'{r:.3f}x' if r is not None else '-'):>11}"
            lines.append(text)

        def procs(phase: str) -> str:
            out = ""
            for name in runtimes:
                roles = _get(results[name], phase, "memory", "after", "roles") or {}
                text = " + ".join(f"{roles[r]['count']} {r}" for r in ("conmon", "shim", "pause") if r in roles)
                out += f"{text or 'none':>24}"
            return out

        def daemon(label: str, phase: str, key: str) -> None:
            values = [_get(results[name], phase, "memory", key) for name in runtimes]
            lines.append(f"  {label:46}" + "".join(f"{_mb(v, 3):>24}" for v in values))

        lines.append(f"  pod with one container ({n} pods, lifecycle phase):")
        lines.append(f"    {'monitor processes':44}" + procs("lifecycle"))
        row("  added per pod (conmon | shim + pause)", "lifecycle", "per_pod", ratio=True)
        daemon("    of which anonymous (private) RSS", "lifecycle", "per_pod_anon_bytes")
        row("  one conmon", "lifecycle", "per_conmon")
        row("  one shim", "lifecycle", "per_shim")
        row("  one pause", "lifecycle", "per_pause")
        daemon("  daemon RSS growth per container", "lifecycle", "daemon_rss_growth_per_container_bytes")
        lines.append(f"  {pods} pods x {per_pod} running containers:")
        lines.append(f"    {'monitor processes':44}" + procs("many"))
        row("  per pod", "many", "per_pod", ratio=True)
        daemon("    of which anonymous (private) RSS", "many", "per_pod_anon_bytes")
        row("  per container", "many", "per_container", ratio=True)
        daemon("  daemon RSS growth per container", "many", "daemon_rss_growth_per_container_bytes")
        for label, key in (("  daemon RSS before", "before"), (f"  daemon RSS with {total} containers", "after"),
                           ("  daemon RSS after removal", "after_removal")):
            values = [_get(results[name], "many", "memory", key, "daemon_rss_kb") for name in runtimes]
            lines.append(f"  {label:46}" + "".join(f"{_mb(v * KB if v is not None else None, 1):>24}" for v in values))

        rk = results.get("rktlet", {})
        server = {
            "create+start phase": _get(rk, "lifecycle", "server_side", "create_start"),
            "stop+remove phase": _get(rk, "lifecycle", "server_side", "stop_remove"),
            f"with {total} containers": _get(rk, "many", "server_side"),
        }
        if any(server.values()):
            lines.append("")
            lines.append("rktlet's own per-RPC times from its debug log (p50 / p95 ms, server side):")
            for phase, times in server.items():
                for method, s in sorted((times or {}).items()):
                    lines.append(f"  {phase:26}{method:22}{_ms(s['p50_ms']):>10} / {_ms(s['p95_ms'])}  (n={s['n']})")
    if report["errors"]:
        lines.append("")
        lines.append("Errors:")
        for name, messages in report["errors"].items():
            for message in messages:
                lines.append(f"  {name}: {message}")
    lines.append("")
    lines.append("Cleanup check: " + ("nothing left behind" if not report["leftovers"] else "LEFT BEHIND:"))
    for item in report["leftovers"]:
        lines.append(f"  {item}")
    lines.append("")
    lines.append("Goals:")
    for goal in report["goals"]:
        lines.append(f"  [{goal['status']}] {goal['goal']}: {goal['shown']}")
    return "\n".join(lines)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    text = str(exc).strip()
    if len(text) > 2000:
        text = text[:300] + "\n  ...\n" + text[-1500:]
    return f"{type(exc).__name__}: {text}"


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: Any) -> None:
    """The first signal unwinds through the cleanups; later ones are
    ignored, so that they are not cut short."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="CRI container benchmark: rktlet against containerd, in the same run.")
    parser.add_argument("--containers", type=int, default=20,
                        help="containers timed through create/start/stop/remove, one per pod (default 20)")
    parser.add_argument("--many-pods", type=int, default=100,
                        help="pods present for ListContainers/ContainerStatus and the memory figures (default 100)")
    parser.add_argument("--per-pod", type=int, default=2, help="running containers in each of those pods (default 2)")
    parser.add_argument("--list-calls", type=int, default=200, help="ListContainers calls timed (default 200)")
    parser.add_argument("--status-calls", type=int, default=200, help="ContainerStatus calls timed (default 200)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both, rktlet first)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (every sample included)")
    parser.add_argument("--rktlet-log-level", default="info", choices=("debug", "info", "warn", "error"),
                        help="rktlet's log level (default info, like containerd's; debug adds per-RPC server times)")
    parser.add_argument("--rktlet-log", metavar="FILE",
                        help="copy rktlet's log to FILE before its directory is removed")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of every CRI call, s (default 60)")
    args = parser.parse_args(argv)
    if args.containers < 1 or args.list_calls < 1 or args.status_calls < 1 or args.per_pod < 1:
        parser.error("--containers, --per-pod, --list-calls and --status-calls must be positive")
    if args.many_pods < 1 or args.many_pods > 240:
        parser.error("--many-pods: 1 to 240 (one /24 per runtime)")
    runtimes = [r for r in RUNTIMES if r in (args.runtime or RUNTIMES)]

    if os.geteuid() != 0:
        progress("bench/containers.py: needs root (namespaces, cgroups, bridges); run it with sudo")
        return 2
    if "containerd" in runtimes and containerd_binary() is None:
        progress(f"bench/containers.py: {INSTALL_HINT}")
        return 2
    why = registry_available()
    if why is not None:
        progress(f"bench/containers.py: cannot run the local registry: {why}")
        return 2
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not os.access(os.path.join("/usr/lib/cni", plugin), os.X_OK):
            progress(f"bench/containers.py: CNI plugin /usr/lib/cni/{plugin} missing (apt-get install containernetworking-plugins)")
            return 2
    for program in ("conmon", "runc"):
        if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin") is None:
            progress(f"bench/containers.py: {program} missing (apt-get install {program})")
            return 2

    # ^C, SIGTERM (e.g. from timeout(1)) and SIGHUP unwind through the cleanups.
    for sig in _SIGNALS:
        signal.signal(sig, _interrupt)

    versions = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["rktlet"] = version("rktlet")
    except Exception:
        versions["rktlet"] = "(not installed; from the checkout)"
    if "containerd" in runtimes:
        versions["containerd"] = containerd_version()
        progress(versions["containerd"])

    state_before = host_state()
    forwarding = HostForwarding()
    nat = SharedNatChains()
    cg = BenchCgroups()
    tag = "%04x" % random.randrange(0x10000)
    bridges = [f"bnchrk{tag}", f"bnchcd{tag}"]
    subnets = dict(zip(RUNTIMES, pick_subnets(2)))
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, list[str]] = {}
    registry: Optional[LocalRegistry] = None
    pause_ref = image_ref = ""
    interrupted = False
    try:
        registry = LocalRegistry()
        registry.start()
        if registry.tmpdir:
            OUR_DIRS.append(registry.tmpdir)
        push_image(registry, WORKLOAD_REPO, WORKLOAD_TAG, busybox_image())
        image_ref = registry.ref(WORKLOAD_REPO, WORKLOAD_TAG)
        if "containerd" in runtimes:
            pause = build_image([busybox_layer()], entrypoint=PAUSE_ARGV, cmd=None)
            push_image(registry, PAUSE_REPO, PAUSE_TAG, pause)
            pause_ref = registry.ref(PAUSE_REPO, PAUSE_TAG)
        progress(f"pushed {image_ref}" + (f" and {pause_ref}" if pause_ref else ""))
        for name in runtimes:
            progress(f"{name}...")
            try:
                results[name] = measure(name, args, cg, image_ref, subnet=subnets[name], tag=tag,
                                        registry=registry, pause_ref=pause_ref)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                message = _error_text(exc)
                errors.setdefault(name, []).append(message)
                progress(f"  {name} failed: {message}")
                continue
            for problem in results[name].pop("problems", []):
                errors.setdefault(name, []).append(problem)
    except KeyboardInterrupt as exc:
        interrupted = True
        progress(f"interrupted ({exc or 'SIGINT'}); cleaning up")
    finally:
        # Cleanups must not be cut short by a signal.
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if registry is not None:
            registry.stop()
        cg.cleanup()
        for bridge in bridges:  # normally gone already with each runtime's network
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        forwarding.restore()
        nat.restore()
        for d in OUR_DIRS:  # normally gone already with each runtime
            if os.path.exists(d):
                unmount_under(d)
                shutil.rmtree(d, ignore_errors=True)
    left = leftovers(state_before, bridges, cg)
    if interrupted:
        for item in left:
            progress(f"  left behind: {item}")
        return 130

    report = {
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "loadavg_before": load_before[0],
            "loadavg_after": os.getloadavg()[0],
        },
        "versions": versions,
        "image_ref": image_ref,
        "pause_ref": pause_ref,
        "rktlet_log_level": args.rktlet_log_level,
        "runtimes": runtimes,
        "containers": args.containers,
        "many_pods": args.many_pods,
        "per_pod": args.per_pod,
        "list_calls": args.list_calls,
        "status_calls": args.status_calls,
        "results": results,
        "goals": goals(results),
        "errors": errors,
        "leftovers": left,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
