"""What the benchmarks that compare rktlet with containerd share.

Imported by ``bench/containers.py``, ``bench/stats.py`` (everything: the
runtimes, pods and containers as the kubelet makes them, the cleanup and its
check) and by ``bench/sandboxes.py`` and ``bench/pull_image.py`` (the small
helpers: percentiles, /proc readers, error texts), and by
``bench/critest_benchmark.py`` (the starters, the cleanup check, the report
helpers; containerd 2.x through ``containerd=`` and ``mirrors=``). The
scripts run as ``python bench/<script>.py``, so this module is found as
``common`` beside them; it is not a part of the rktlet package.

The pieces, in the order of a run:

* :func:`check_requirements` — root, containerd, the registry, the CNI
  plugins, conmon and runc, or exit status 2 with what is missing;
* :func:`compare` — sets up what both runtimes use (a local registry with
  the busybox workload image and containerd's pause image, a cgroup tree,
  two bridges and subnets), calls a ``measure`` function per runtime, and
  always cleans up and checks what is left (:class:`Environment`);
* :data:`STARTERS` — start rktlet or containerd afresh as a :class:`Runtime`
  with the benchmark's network; its ``cleanup`` stops and removes every
  container and pod through the CRI and stops the daemon by PID;
* :class:`Driver` — pods and containers with the kubelet's configurations,
  each call timed; :func:`prepare`, :func:`make_many`, :func:`remove_many`;
* report helpers: :func:`summary`, :func:`latency_rows`, :func:`header_lines`,
  :func:`footer_lines`.
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

import grpc  # noqa: E402

from rktlet.cri.proto import pb, pb_grpc  # noqa: E402
from rktlet.oci import cgroups  # noqa: E402
from harness.containerd import (  # noqa: E402
    INSTALL_HINT,
    Containerd,
    containerd_binary,
    containerd_version,
    descendants,
    unmount_under,
)
from harness.daemon import Daemon  # noqa: E402
from harness.images import build_image, busybox_image, busybox_layer, push_image  # noqa: E402
from harness.network import NAT_TOOLS, SHARED_CHAINS, TestNetwork, nat_chains, remove_chains  # noqa: E402
from harness.pods import remove_everything  # noqa: E402
from harness.registry import LocalRegistry, registry_available  # noqa: E402

RUNTIMES = ("rktlet", "containerd")
MB = 1_000_000
KB = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: A container that exits 0 on SIGTERM (busybox sh as PID 1 ignores SIGTERM
#: unless it traps it).
TRAP_COMMAND = ["sh", "-c", 'trap "exit 0" TERM; while true; do sleep 0.1; done']
#: Long-running containers that do nothing.
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


def read_text(path: str) -> str:
    """The content of ``path``, "" when it cannot be read (a process gone)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def status_kb(pid: int, key: str) -> int:
    """A kB figure (``VmRSS``, ``RssAnon``...) of /proc/PID/status, 0 when absent."""
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    for line in read_text(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards:
    index 0 is the state, 7 minflt, 8 cminflt, 11 utime, 12 stime, 13 cutime,
    14 cstime, 19 starttime); [] when the process is gone."""
    stat = read_text(f"/proc/{pid}/stat")
    return stat[stat.rfind(")") + 2 :].split() if stat else []


def start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (tells a reused PID apart)."""
    fields = stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid``, in clock ticks."""
    fields = stat_fields(pid)
    try:
        return sum(int(f) for f in fields[11:15])
    except (ValueError, IndexError):
        return 0


def comm(pid: int) -> str:
    return read_text(f"/proc/{pid}/comm").strip()


def argv_of(pid: int) -> list[str]:
    return [a for a in read_text(f"/proc/{pid}/cmdline").split("\0") if a]


def wait_idle(pids: list[int], quiet: float = 0.5, limit: float = 15.0) -> None:
    """Wait until ``pids`` together used no CPU for ``quiet`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    last = sum(cpu_ticks(p) for p in pids)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(cpu_ticks(p) for p in pids)
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
        rss = status_kb(pid, "VmRSS")
        if rss == 0 and not os.path.exists(f"/proc/{pid}"):
            continue
        entry["count"] += 1
        entry["rss_kb"] += rss
        entry["pss_kb"] += pss_kb(pid)
        entry["rss_anon_kb"] += status_kb(pid, "RssAnon")
        entry["rss_file_kb"] += status_kb(pid, "RssFile")
    return {
        "daemon_rss_kb": status_kb(daemon_pid, "VmRSS"),
        "daemon_pss_kb": pss_kb(daemon_pid),
        "roles": by_role,
    }


def role_figure(sample: dict[str, Any], role: str, key: str) -> int:
    return sample["roles"].get(role, {}).get(key, 0)


# -- cgroups (made beforehand, as the kubelet does) ---------------------------------------------


class BenchCgroups:
    """``/rkcbench-<token>/<runtime>/pod<uid>`` in every cgroup hierarchy
    (and the unified one of a hybrid host, where runc makes them too)."""

    def __init__(self, name: str = "rkcbench") -> None:
        self.layout = cgroups.detect()
        self.root = f"/{name}-{uuid.uuid4().hex[:8]}"
        self._created: list[str] = []

    def prefix(self, runtime: str) -> str:
        return f"{self.root}/{runtime}"

    def pod(self, runtime: str, uid: str) -> str:
        """Make the pod's cgroup (and its parents) and return its path."""
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
        for line in read_text("/proc/self/mountinfo").splitlines():
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


def pick_subnets(count: int, prefix: str = "10.237") -> list[str]:
    """Distinct private /24s (``prefix``.X.0/24) that no route or address uses yet."""
    taken = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    choices = [x for x in range(1, 255) if f"{prefix}.{x}." not in taken]
    return [f"{prefix}.{x}.0/24" for x in random.sample(choices, count)]


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
        self.value = read_text(self.PATH).strip()

    def restore(self) -> None:
        if self.value and read_text(self.PATH).strip() != self.value:
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
        self.socket = socket
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

    def monitors(self) -> list[int]:
        """The runtime's monitor processes: rktlet's conmons, containerd's
        shims and pause processes (not the containers' own processes)."""
        return [pid for pid, role in self.roles().items() if role != "container"]

    def idle(self, quiet: float = 1.0) -> None:
        """Wait until the daemon and the monitors (not the containers, whose
        loops never rest) used no CPU for ``quiet`` seconds."""
        wait_idle([self.pid, *self.monitors()], quiet=quiet)

    def memory(self) -> dict[str, Any]:
        return memory_sample(self.pid, self.roles())

    def cleanup(self) -> None:
        try:
            self.channel.close()
        finally:
            self._cleanup()


def wait_network_ready(stub: pb_grpc.RuntimeServiceStub, timeout: float = 30.0) -> None:
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


def kill_by_pid(victims: dict[int, Optional[int]], timeout: float = 10.0) -> list[int]:
    """SIGKILL each ``pid`` still alive with the same start time; return those killed."""
    killed = []
    for pid, started in victims.items():
        if started is not None and start_time(pid) == started and os.path.exists(f"/proc/{pid}"):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        stat_fields(p)[:1] not in ([], ["Z"]) for p in killed
    ):
        time.sleep(0.05)
    return killed


class BenchDaemon(Daemon):
    """The integration tests' daemon, in a session of its own: a ^C or a
    ``timeout`` signal sent to the benchmark's process group must not stop
    it before the benchmark has removed its containers through the CRI."""

    def spawn(self, **popen_kwargs: Any) -> subprocess.Popen:
        popen_kwargs.setdefault("start_new_session", True)
        return super().spawn(**popen_kwargs)


def start_rktlet(opts: argparse.Namespace, subnet: str, tag: str, rktlet_args: tuple[str, ...] = (),
                 **_: Any) -> Runtime:
    """rktlet as in the integration tests, at ``opts.rktlet_log_level``
    (plus ``rktlet_args``), its default network replaced by the benchmark's;
    ``opts.rktlet_log`` (when set) gets a copy of its log at cleanup."""
    daemon = BenchDaemon(extra_args=["--log-level", opts.rktlet_log_level, *rktlet_args])
    OUR_DIRS.append(daemon.base)
    network: Optional[TestNetwork] = None

    def roles() -> dict[int, str]:
        """conmon (the daemon's children) and the containers' processes under them."""
        if daemon.process is None or daemon.process.poll() is not None:
            return {}
        found: dict[int, str] = {}
        for pid in descendants([daemon.process.pid]):
            found[pid] = "conmon" if comm(pid) == "conmon" else "container"
        return found

    def cleanup() -> None:
        try:
            if daemon.process is not None and daemon.process.poll() is None:
                channel = grpc.insecure_channel(f"unix:{daemon.socket}")
                try:
                    for error in remove_everything(pb_grpc.RuntimeServiceStub(channel)):
                        progress(f"  rktlet cleanup: {error}")
                finally:
                    channel.close()
                # conmon outlives the daemon by design: note what is left by
                # PID (and start time) before stopping it, kill it afterwards.
                left = {pid: start_time(pid) for pid in descendants([daemon.process.pid])}
                daemon.stop()
                killed = kill_by_pid(left)
                if killed:
                    progress(f"  rktlet cleanup: killed {len(killed)} left-over monitor/container processes by PID")
            if getattr(opts, "rktlet_log", None) and os.path.exists(daemon.log_path):
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
        wait_network_ready(runtime.stub)
        return runtime
    except BaseException:
        cleanup()
        raise


def start_containerd(opts: argparse.Namespace, subnet: str, tag: str, registry: Optional[LocalRegistry] = None,
                     pause_ref: str = "", containerd: Optional[str] = None,
                     mirrors: Optional[dict[str, str]] = None, metrics_address: str = "", **_: Any) -> Runtime:
    """containerd with its CRI plugin (``harness/containerd.py``), the
    benchmark's network and ``pause_ref`` as its sandbox image, pulled.
    ``containerd`` is the program (Debian's by default, e.g. a 2.x build),
    ``mirrors`` its ``{upstream host: URL}``, ``metrics_address`` where it
    serves its Prometheus metrics (none by default)."""
    assert registry is not None
    ctrd = Containerd(insecure_registries=[registry.host], cri={"sandbox_image": pause_ref}, binary=containerd,
                      mirrors=mirrors, metrics_address=metrics_address)
    network: Optional[TestNetwork] = None

    def roles() -> dict[int, str]:
        """Each pod's shim, its pause process and its containers' processes."""
        found: dict[int, str] = {}
        for shim, below in ctrd.shim_tree().items():
            found[shim] = "shim"
            for pid in below:
                found[pid] = "pause" if argv_of(pid) == PAUSE_ARGV else "container"
        return found

    def cleanup() -> None:
        try:
            if ctrd.process is not None and ctrd.process.poll() is None:
                for error in remove_everything(ctrd.runtime()):
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
        wait_network_ready(runtime.stub)
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


def pod_config(name: str, uid: str, cgroup_parent: str, log_directory: str = "") -> pb.PodSandboxConfig:
    """What the kubelet sends for a BestEffort pod without shareProcessNamespace
    and without host ports (no ``log_directory`` unless given)."""
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


def prepare(runtime: Runtime, cg: BenchCgroups, image_ref: str, timeout: float, result: dict[str, Any]) -> Driver:
    """PullImage of the workload (its time in ``result["pull_ms"]``), a
    directory for the pods' logs, and one warm-up pod with one container
    (create, start, stop, remove; not counted)."""
    started = time.perf_counter()
    runtime.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image_ref)), timeout=120)
    result["pull_ms"] = (time.perf_counter() - started) * 1000
    log_root = tempfile.mkdtemp(prefix=f"rkcbench-logs-{runtime.name}-", dir="/tmp")
    OUR_DIRS.append(log_root)
    driver = Driver(runtime, cg, image_ref, log_root, timeout)
    pod = driver.new_pod("warmup")
    cid, _ = driver.create(pod, "app", TRAP_COMMAND)
    driver.start(cid)
    driver.wait_running([cid])
    time.sleep(0.3)
    driver.stop(cid, 10)
    driver.remove(cid)
    driver.remove_pod(pod)
    return driver


def make_many(driver: Driver, n_pods: int, per_pod: int, command: list[str] = SLEEP_COMMAND,
              phase: str = "many") -> tuple[list[Pod], list[str], list[float]]:
    """``n_pods`` pods with ``per_pod`` containers each running ``command``,
    created and started one after the other: the pods, the container ids
    and the create+start times (ms)."""
    fill: list[float] = []
    pods: list[Pod] = []
    ids: list[str] = []
    started = time.monotonic()
    for i in range(n_pods):
        pod = driver.new_pod(phase)
        pods.append(pod)
        for k in range(per_pod):
            cid, create_ms = driver.create(pod, f"c{k}", command)
            fill.append(create_ms + driver.start(cid))
            ids.append(cid)
        if (i + 1) % 25 == 0:
            progress(f"    {i + 1} pods, {len(ids)} containers ({time.monotonic() - started:.0f} s)")
    return pods, ids, fill


def remove_many(driver: Driver, pods: list[Pod], ids: list[str]) -> tuple[list[float], list[float]]:
    """StopContainer (timeout 0: ``sleep`` as PID 1 ignores SIGTERM) and
    RemoveContainer of every container, then the pods: the stop and remove
    times (ms)."""
    stop_ms = [driver.stop(cid, 0) for cid in ids]
    remove_ms = [driver.remove(cid) for cid in ids]
    for pod in pods:
        driver.remove_pod(pod)
    return stop_ms, remove_ms


RPC_LINE = re.compile(r"runtime\.v1\.RuntimeService/(\w+) .*?([\d.]+)ms OK")


def server_samples(log: str) -> dict[str, list[float]]:
    """rktlet's own per-RPC durations (ms), from its debug log lines."""
    out: dict[str, list[float]] = {}
    for method, ms in RPC_LINE.findall(log):
        out.setdefault(method, []).append(float(ms))
    return out


def server_times(log: str) -> dict[str, dict[str, Any]]:
    """:func:`server_samples` summarized per RPC."""
    return {method: summary(values) for method, values in server_samples(log).items()}


def per_item(total_kb: int, n: int) -> Optional[float]:
    """kB total -> bytes per item (``None`` without items)."""
    return total_kb * KB / n if n else None


# -- cleanup check -----------------------------------------------------------------------------------------


def output_lines(argv: list[str]) -> list[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


def host_state() -> dict[str, list[str]]:
    links = output_lines(["ip", "-o", "link"])
    mounts = [line.split()[1] for line in read_text("/proc/self/mounts").splitlines() if len(line.split()) > 1]
    cgroup_dirs = []
    for top in os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup") else []:
        base = os.path.join("/sys/fs/cgroup", top)
        if os.path.isdir(base):
            cgroup_dirs += [os.path.join(base, n) for n in os.listdir(base) if n.startswith("rktlet")]
    return {
        "conmon": sorted(output_lines(["pgrep", "-a", "conmon"])),
        "shims": sorted(output_lines(["pgrep", "-af", "containerd-shim"])),
        "netns": sorted(line.split()[0] for line in output_lines(["ip", "netns", "list"]) if line.strip()),
        "nat_cni": sorted(line for line in output_lines(["iptables", "-w", "-t", "nat", "-S"]) if "CNI-" in line),
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
    mounts = [line.split()[1] for line in read_text("/proc/self/mounts").splitlines() if len(line.split()) > 1]
    for d in ours:
        found += [f"mount under {d}: {m}" for m in mounts if m == d or m.startswith(d + "/")]
        if os.path.exists(d):
            found.append(f"temporary directory still present: {d}")
    found += [f"cgroup still present: {p}" for p in cg.all_dirs()]
    return sorted(set(found))


# -- running a comparison ------------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    text = str(exc).strip()
    if len(text) > 2000:
        text = text[:300] + "\n  ...\n" + text[-1500:]
    return f"{type(exc).__name__}: {text}"


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def unwind_on_signal(signum: int, frame: Any) -> None:
    """A signal handler that unwinds through the cleanups like ^C (for
    SIGTERM, e.g. from timeout(1), in the scripts that do not use
    :func:`compare`)."""
    raise KeyboardInterrupt(f"signal {signum}")


def chosen_runtimes(args: argparse.Namespace) -> list[str]:
    """The runtimes named by ``--runtime`` (default both), in the order of :data:`RUNTIMES`."""
    return [r for r in RUNTIMES if r in (args.runtime or RUNTIMES)]


def versions_of(runtimes: list[str], containerd: Optional[str] = None) -> dict[str, str]:
    """Python's and rktlet's versions, and containerd's when it is measured
    (shown as progress too; ``containerd`` is the program, Debian's by default)."""
    versions = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["rktlet"] = version("rktlet")
    except Exception:
        versions["rktlet"] = "(not installed; from the checkout)"
    if "containerd" in runtimes:
        versions["containerd"] = containerd_version(containerd)
        progress(versions["containerd"])
    return versions


def host_figures(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The report's ``host``: CPUs, kernel, load average before (``load_before``,
    from :func:`os.getloadavg`) and now."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_before": load_before[0],
        "loadavg_after": os.getloadavg()[0],
    }


def _interrupt(signum: int, frame: Any) -> None:
    """The first signal unwinds through the cleanups; later ones are
    ignored, so that they are not cut short."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def check_requirements(script: str, runtimes: list[str], containerd: Optional[str] = None) -> Optional[str]:
    """Why ``script`` cannot run here (root, containerd — Debian's, or the
    program ``containerd`` —, the registry, CNI plugins, conmon, runc), or None."""
    if os.geteuid() != 0:
        return f"{script}: needs root (namespaces, cgroups, bridges); run it with sudo"
    if "containerd" in runtimes and containerd is not None and not os.access(containerd, os.X_OK):
        return f"{script}: {containerd} is not an executable containerd"
    if "containerd" in runtimes and containerd is None and containerd_binary() is None:
        return f"{script}: {INSTALL_HINT}"
    why = registry_available()
    if why is not None:
        return f"{script}: cannot run the local registry: {why}"
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not os.access(os.path.join("/usr/lib/cni", plugin), os.X_OK):
            return f"{script}: CNI plugin /usr/lib/cni/{plugin} missing (apt-get install containernetworking-plugins)"
    for program in ("conmon", "runc"):
        if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin") is None:
            return f"{script}: {program} missing (apt-get install {program})"
    return None


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """The options every comparison has: --runtime, --json,
    --rktlet-log-level, --rktlet-log, --timeout."""
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both, rktlet first)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (every sample included)")
    parser.add_argument("--rktlet-log-level", default="info", choices=("debug", "info", "warn", "error"),
                        help="rktlet's log level (default info, like containerd's; debug adds per-RPC server times)")
    parser.add_argument("--rktlet-log", metavar="FILE",
                        help="copy rktlet's log to FILE before its directory is removed")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of every CRI call, s (default 60)")


def compare(runtimes: list[str], measure: Callable[..., dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Run ``measure(name, args, cg, image_ref, subnet=, tag=, registry=,
    pause_ref=)`` for each runtime (started by it through :data:`STARTERS`)
    with the busybox workload image and containerd's pause image pushed to a
    local registry, then clean up everything and check what is left.

    Returns the common part of the report (``host``, ``versions``,
    ``image_ref``, ``pause_ref``, ``rktlet_log_level``, ``runtimes``,
    ``results``, ``errors`` — a measure's ``problems`` are moved there —,
    ``leftovers``) and ``interrupted``: ^C, SIGTERM and SIGHUP unwind
    through the cleanups (later signals are ignored until they are done).
    """
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)

    versions = versions_of(runtimes)
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
                message = error_text(exc)
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
        for sig in SIGNALS:
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
    return {
        "host": host_figures(load_before),
        "versions": versions,
        "image_ref": image_ref,
        "pause_ref": pause_ref,
        "rktlet_log_level": args.rktlet_log_level,
        "runtimes": runtimes,
        "results": results,
        "errors": errors,
        "leftovers": left,
        "interrupted": interrupted,
    }


# -- report -------------------------------------------------------------------------------------------------


def ratio_of(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def ratio_goal(text: str, a: Optional[float], b: Optional[float], passes: Callable[[float], bool],
               shown: Callable[[float], str]) -> dict[str, Any]:
    """One goal row comparing rktlet's figure *a* with containerd's *b*:
    PASS or MISS by ``passes(a / b)``, shown as ``shown(a / b)``; N/A when
    either runtime was not measured."""
    ratio = ratio_of(a, b)
    if ratio is None:
        return {"goal": text, "value": None, "shown": "not measured (needs both runtimes)", "status": "N/A"}
    return {"goal": text, "value": ratio, "shown": shown(ratio), "status": "PASS" if passes(ratio) else "MISS"}


def dig(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, None when a level is missing."""
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt_ms(value: Optional[float]) -> str:
    return f"{value:.2f}" if value is not None else "-"


def fmt_mb(value: Optional[float], digits: int = 2) -> str:
    return f"{value / MB:.{digits}f}" if value is not None else "-"


def fmt_ratio(value: Optional[float], digits: int = 2) -> str:
    return f"{value:.{digits}f}x" if value is not None else "-"


def latency_rows(lines: list[str], rows: list[tuple[str, tuple[str, ...]]], results: dict[str, Any],
                 runtimes: list[str], both: bool, width: int = 40) -> None:
    """A table of p50/p95 per runtime (and their ratios with ``both``) for
    each ``(label, path to a summary in a runtime's results)``."""
    header = f"{'latency, ms':{width}}" + "".join(f"{name + ' p50':>16}{name + ' p95':>16}" for name in runtimes)
    if both:
        header += f"{'ratio p50':>11}{'ratio p95':>11}"
    lines.append(header)
    for label, path in rows:
        row = f"{label:{width}}"
        stats = {}
        for name in runtimes:
            s = dig(results[name], *path) or {}
            stats[name] = s
            row += f"{fmt_ms(s.get('p50_ms')):>16}{fmt_ms(s.get('p95_ms')):>16}"
        if both:
            r50 = ratio_of(stats["rktlet"].get("p50_ms"), stats["containerd"].get("p50_ms"))
            r95 = ratio_of(stats["rktlet"].get("p95_ms"), stats["containerd"].get("p95_ms"))
            row += f"{fmt_ratio(r50):>11}{fmt_ratio(r95):>11}"
        lines.append(row)


def header_lines(title: str, report: dict[str, Any]) -> list[str]:
    """The title with the host's CPUs, kernel and load, and the versions."""
    host = report["host"]
    return [
        f"{title} — {host['cpus']} CPUs, kernel {host['kernel']}, load average "
        f"{host['loadavg_before']:.2f} before, {host['loadavg_after']:.2f} after (other work on the machine skews the figures)",
        f"  containerd: {report['versions'].get('containerd', '-')}, sandbox image {report.get('pause_ref') or '-'}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']}), "
        f"log level {report['rktlet_log_level']}",
        f"  image:      {report.get('image_ref') or '-'} (busybox-static), pulled by both before timing",
    ]


def network_lines(report: dict[str, Any], runtimes: list[str]) -> list[str]:
    lines = []
    for name in runtimes:
        net = report["results"][name]["network"]
        lines.append(f"  {name + ' network:':22}bridge {net['bridge']}, {net['subnet']} (bridge + host-local + portmap)")
    return lines


def footer_lines(report: dict[str, Any]) -> list[str]:
    """Errors, the cleanup check and the goals with PASS/MISS."""
    lines: list[str] = []
    if report["errors"]:
        lines.append("")
        lines.append("Errors:")
        for name, messages in report["errors"].items():
            for message in messages:
                lines.append(f"  {name}: {message}")
    if "leftovers" in report:
        lines.append("")
        lines.append("Cleanup check: " + ("nothing left behind" if not report["leftovers"] else "LEFT BEHIND:"))
        for item in report["leftovers"]:
            lines.append(f"  {item}")
    lines.append("")
    lines.append("Goals:")
    for goal in report["goals"]:
        lines.append(f"  [{goal['status']}] {goal['goal']}: {goal['shown']}")
    return lines


def print_report(report: dict[str, Any], as_json: bool, format_table: Callable[[dict[str, Any]], str]) -> None:
    """``report`` as JSON (``--json``) or as the script's table on stdout."""
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))


def run_comparison(script: str, runtimes: list[str], measure: Callable[..., dict[str, Any]],
                   args: argparse.Namespace, settings: tuple[str, ...],
                   goals: Callable[[dict[str, Any]], list[dict[str, Any]]],
                   format_table: Callable[[dict[str, Any]], str],
                   requirements: Optional[Callable[[], Optional[str]]] = None) -> int:
    """The end of a comparison script's ``main``: :func:`check_requirements`
    (then ``requirements()``, the script's own, if given), :func:`compare`,
    the options named in ``settings`` and the ``goals`` added to the report,
    which is printed. Returns the exit status: 2 when something is missing,
    130 when interrupted, 1 when a runtime failed, 0 otherwise."""
    why = check_requirements(script, runtimes)
    if why is None and requirements is not None:
        why = requirements()
    if why is not None:
        progress(why)
        return 2

    report = compare(runtimes, measure, args)
    if report.pop("interrupted"):
        return 130
    report.update({key: getattr(args, key) for key in settings})
    report["goals"] = goals(report["results"])
    print_report(report, args.json, format_table)
    return 1 if report["errors"] else 0
