#!/usr/bin/env python3
"""Pod sandbox benchmark: rktlet against containerd, measured in the same run.

Both runtimes are driven by the same CRI v1 gRPC client code (one channel per
runtime, a blocking call timed with ``time.perf_counter``), with the same pod
configurations (what the kubelet sends for a pod without
``shareProcessNamespace``: ``namespace_options`` network POD, IPC POD, PID
CONTAINER; labels, annotations, a DNS config and a cgroup parent made
beforehand, as the kubelet makes ``/kubepods/.../pod<uid>``) and the same CNI
plugins (Debian's, /usr/lib/cni) in equivalent networks: bridge (each runtime
its own bridge name and /24 subnet, ``isGateway`` true, ``ipMasq`` false, no
default route) + host-local (state in a temporary directory) + portmap.

For each runtime, freshly started:

1. one warm-up pod (run, status, stop, remove; not counted);
2. ``--pods`` N pods (default 20): RunPodSandbox for each, then
   PodSandboxStatus for each, StopPodSandbox for each, RemovePodSandbox for
   each — p50 and p95 of every call;
3. ``--list-pods`` pods (default 100) are made; the memory of the runtime's
   processes is read before and after; with them all present
   ``--list-calls`` (default 200) ListPodSandbox calls are timed (after 5
   untimed ones); then they are stopped and removed.

Per-pod memory overhead = (sum of the memory of the processes the runtime
keeps for pods after - before) / number of pods. Those processes are every
descendant of the daemon, every process in the pods' cgroups, and every
process whose command line names the runtime's temporary directory (that is
how containerd's shims, which leave containerd, are found), the daemon
itself excepted. RSS (``VmRSS``) and PSS (``/proc/PID/smaps_rollup``) are
both summed. The daemon's own RSS growth per pod is reported beside it.

* **rktlet** is started as in the integration tests (``harness/daemon.py``,
  log level ``info`` unless ``--rktlet-log-level``), its default network
  replaced by the benchmark's in ``daemon.cni_conf_dir``. With PID
  CONTAINER it starts no process for a pod.
* **containerd** is Debian's containerd 1.6 with its CRI plugin
  (``harness/containerd.py``): runc v2 shim, cgroupfs,
  ``restrict_oom_score_adj``, and as ``sandbox_image`` a tiny pause-like image
  (busybox-static, ``sleep infinity``) pushed to a local registry on
  127.0.0.1 and pulled over plain HTTP before anything is timed. Each pod is
  a ``containerd-shim-runc-v2`` plus that pause process.

Run it as root from the repository root with the test extras installed::

    sudo .venv/bin/python bench/sandboxes.py [--pods 20] [--runtime rktlet] [--json]

Progress goes to stderr. Exit status 1 when a runtime failed (errors listed),
2 when something it needs is missing, 0 otherwise whether or not the goals are
met. Everything is cleaned up (pods, daemons and shims by PID, bridges, IPAM
state, cgroups, mounts, temporary directories) and checked afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    import grpc

    import common
    from common import (
        KB,
        MB,
        OUR_DIRS,
        PAUSE_REPO,
        PAUSE_TAG,
        RUNTIMES,
        HostForwarding,
        chosen_runtimes,
        error_text,
        fmt_ms,
        footer_lines,
        host_figures,
        latency_rows,
        make_network,
        network_lines,
        pick_subnets,
        pod_config,
        print_report,
        progress,
        pss_kb,
        ratio_goal,
        read_text,
        server_samples,
        status_kb,
        summary,
        unwind_on_signal,
        versions_of,
        wait_idle,
        wait_network_ready,
    )
    from rktlet.cri.proto import pb, pb_grpc
    from rktlet.oci import cgroups
    from harness.containerd import (
        INSTALL_HINT,
        Containerd,
        containerd_binary,
        descendants,
        unmount_under,
    )
    from harness.daemon import Daemon
    from harness.images import build_image, busybox_layer, push_image
    from harness.network import TestNetwork
    from harness.pods import remove_all_pods
    from harness.registry import LocalRegistry, registry_available
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/sandboxes.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/sandboxes.py\n"
    )
    sys.exit(2)

RPCS = ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox", "ListPodSandbox")
#: The goals of the issue.
RUN_RATIO_GOAL = 0.8
LIST_P50_GOAL_MS = 5.0
POD_MEMORY_GOAL_BYTES = 0

# -- processes and memory ----------------------------------------------------------------


def _cgroup_paths(pid: int) -> list[str]:
    """The process's cgroup paths, one per hierarchy."""
    return [line.split(":", 2)[2] for line in read_text(f"/proc/{pid}/cgroup").splitlines() if line.count(":") >= 2]


def _all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _cmdline(pid: int) -> str:
    return read_text(f"/proc/{pid}/cmdline").replace("\0", " ")


def host_used_kb() -> int:
    """MemTotal - MemAvailable of the whole machine (includes the kernel's
    share: namespaces, veths, tmpfs; noisy when anything else runs)."""
    values = {}
    for line in read_text("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values.get("MemTotal", 0) - values.get("MemAvailable", 0)


def pod_processes(daemon_pid: int, marker: str, cgroup_prefix: str) -> set[int]:
    """Processes the runtime keeps besides its daemon: descendants of the
    daemon, processes in cgroups under ``cgroup_prefix``, processes whose
    command line contains ``marker`` (the runtime's temporary directory) and
    their descendants. The daemon and this process are not counted."""
    found = descendants([daemon_pid])
    me = os.getpid()
    for pid in _all_pids():
        if pid in (daemon_pid, me):
            continue
        if any(p == cgroup_prefix or p.startswith(cgroup_prefix + "/") for p in _cgroup_paths(pid)):
            found.add(pid)
        elif marker and marker in _cmdline(pid):
            found.add(pid)
    found |= descendants(found)
    found.discard(me)
    found.discard(daemon_pid)
    return {pid for pid in found if os.path.exists(f"/proc/{pid}")}


def memory_sample(daemon_pid: int, marker: str, cgroup_prefix: str) -> dict[str, Any]:
    pids = pod_processes(daemon_pid, marker, cgroup_prefix)
    kinds: dict[str, int] = {}
    rss = pss = 0
    for pid in pids:
        rss += status_kb(pid, "VmRSS")
        pss += pss_kb(pid)
        name = (read_text(f"/proc/{pid}/comm").strip() or "?")
        kinds[name] = kinds.get(name, 0) + 1
    return {
        "daemon_rss_kb": status_kb(daemon_pid, "VmRSS"),
        "daemon_pss_kb": pss_kb(daemon_pid),
        "processes": len(pids),
        "process_names": kinds,
        "processes_rss_kb": rss,
        "processes_pss_kb": pss,
        "host_used_kb": host_used_kb(),
    }


# -- cgroups (made beforehand, as the kubelet does) ----------------------------------------


class BenchCgroups(common.BenchCgroups):
    """``/rkbench-<token>/<runtime>/pod<uid>`` in every cgroup hierarchy."""

    def __init__(self) -> None:
        super().__init__("rkbench")

    def cleanup(self) -> None:
        try:
            cgroups.remove(self._created)
        except Exception as e:  # reported by the leftover check
            progress(f"  cgroup removal: {e}")
        self._created = []
        # runc also makes the pods' cgroups in the unified (cgroup2) hierarchy
        # of a hybrid host, which rktlet's driver leaves alone.
        for top in (self.layout.unified,) if self.layout.unified else ():
            base = os.path.join(top, self.root.lstrip("/"))
            if os.path.isdir(base):
                for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda w: -w[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass

    def leftovers(self) -> list[str]:
        return self.all_dirs()


# -- the pause image ---------------------------------------------------------------------------


def pause_image():
    """busybox-static running ``sleep infinity`` (a stand-in for registry.k8s.io/pause)."""
    return build_image([busybox_layer()], entrypoint=["/bin/sleep", "infinity"], cmd=None)


# -- the runtimes ------------------------------------------------------------------------------


class Runtime:
    """A started runtime as the benchmark sees it."""

    def __init__(self, name: str, pid: int, socket: str, marker: str, network: TestNetwork,
                 cleanup: Callable[[], None], log: Callable[[], str], remove_pods: Callable[[], Any]):
        self.name = name
        self.pid = pid
        self.socket = socket
        self.marker = marker
        self.network = network
        self._cleanup = cleanup
        self.log = log
        self.remove_pods = remove_pods
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = pb_grpc.RuntimeServiceStub(self.channel)

    def cleanup(self) -> None:
        try:
            self.channel.close()
        finally:
            self._cleanup()


def start_rktlet(opts: argparse.Namespace, subnet: str, tag: str, **_: Any) -> Runtime:
    daemon = Daemon(extra_args=["--log-level", opts.rktlet_log_level])
    OUR_DIRS.append(daemon.base)
    network: Optional[TestNetwork] = None
    log_text: list[str] = []

    def cleanup() -> None:
        try:
            remove_all_pods(daemon)
            daemon.stop()
            log_text.append(daemon.log())
        finally:
            daemon.cleanup()
            if network is not None:
                network.cleanup()

    try:
        daemon.start()
        # Replace rktlet's default network (10-rktlet.conflist) with the benchmark's.
        network = make_network(daemon.cni_conf_dir, "bench-rktlet", f"bnchrk{tag}", subnet)
        assert daemon.process is not None
        runtime = Runtime("rktlet", daemon.process.pid, daemon.socket, daemon.base, network, cleanup,
                          lambda: log_text[0] if log_text else daemon.log(), lambda: remove_all_pods(daemon))
        wait_network_ready(runtime.stub)
        return runtime
    except BaseException:
        cleanup()
        raise


def start_containerd(opts: argparse.Namespace, subnet: str, tag: str, registry: Optional[LocalRegistry] = None,
                     pause_ref: str = "", **_: Any) -> Runtime:
    assert registry is not None
    ctrd = Containerd(insecure_registries=[registry.host], cri={"sandbox_image": pause_ref})
    network: Optional[TestNetwork] = None
    log_text: list[str] = []

    def cleanup() -> None:
        try:
            errors = ctrd.remove_all_pods()
            for error in errors:
                progress(f"  containerd cleanup: {error}")
            log_text.append(ctrd.log(tail=200_000) if ctrd.base else "")
        finally:
            ctrd.cleanup()
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
        runtime = Runtime("containerd", ctrd.pid, ctrd.socket, ctrd.base, network, cleanup,
                          lambda: log_text[0] if log_text else ctrd.log(tail=200_000), ctrd.remove_all_pods)
        wait_network_ready(runtime.stub)
        # Pre-pull the sandbox image so that no RunPodSandbox pulls it.
        pb_grpc.ImageServiceStub(runtime.channel).PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=pause_ref)), timeout=120
        )
        return runtime
    except BaseException:
        cleanup()
        raise


STARTERS: dict[str, Callable[..., Runtime]] = {"rktlet": start_rktlet, "containerd": start_containerd}


# -- the measurement ---------------------------------------------------------------------------


class PodMaker:
    def __init__(self, runtime: Runtime, cg: BenchCgroups, timeout: float):
        self.runtime = runtime
        self.cg = cg
        self.timeout = timeout
        self.count = 0

    def config(self, phase: str) -> pb.PodSandboxConfig:
        self.count += 1
        uid = str(uuid.uuid4())
        cgroup_parent = self.cg.pod(self.runtime.name, uid)
        return pod_config(f"{phase}-{self.count}", uid, cgroup_parent)

    def timed(self, method: str, request: Any) -> tuple[Any, float]:
        call = getattr(self.runtime.stub, method)
        started = time.perf_counter()
        response = call(request, timeout=self.timeout)
        return response, (time.perf_counter() - started) * 1000

    def run(self, config: pb.PodSandboxConfig) -> tuple[str, float]:
        response, ms = self.timed("RunPodSandbox", pb.RunPodSandboxRequest(config=config))
        return response.pod_sandbox_id, ms

    def status(self, sandbox_id: str) -> float:
        response, ms = self.timed("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
        if response.status.state != pb.SANDBOX_READY:
            raise RuntimeError(f"sandbox {sandbox_id[:13]} is not ready: {response.status.state}")
        if not response.status.network.ip:
            raise RuntimeError(f"sandbox {sandbox_id[:13]} has no IP")
        return ms

    def stop(self, sandbox_id: str) -> float:
        return self.timed("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))[1]

    def remove(self, sandbox_id: str, cgroup_parent: str) -> float:
        ms = self.timed("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))[1]
        self.cg.release_pod(cgroup_parent)  # what the kubelet does once the pod is gone
        return ms


def _server_times(log: str) -> dict[str, list[float]]:
    """rktlet's own timings from its log: ``ready in Nms`` (info) and the
    per-RPC lines of ``--log-level debug``."""
    out: dict[str, list[float]] = {"ready_in": [float(m) for m in re.findall(r"pod sandbox \S+ \(.*?\) ready in (\d+)ms", log)]}
    out.update(server_samples(log))
    return out


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, measure, stop it; always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    try:
        maker = PodMaker(runtime, cg, opts.timeout)
        samples: dict[str, list[float]] = {rpc: [] for rpc in RPCS}

        # 1. warm-up (not counted)
        config = maker.config("warmup")
        sid, warm_run = maker.run(config)
        maker.status(sid)
        maker.stop(sid)
        maker.remove(sid, config.linux.cgroup_parent)
        result["warmup_run_ms"] = warm_run

        # 2. N pods: run each, status each, stop each, remove each
        progress(f"  {opts.pods} pods: RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox...")
        wait_idle([runtime.pid], limit=10.0)
        pods = []
        for _ in range(opts.pods):
            config = maker.config("pod")
            sid, ms = maker.run(config)
            pods.append((sid, config.linux.cgroup_parent))
            samples["RunPodSandbox"].append(ms)
        for sid, _ in pods:
            samples["PodSandboxStatus"].append(maker.status(sid))
        for sid, _ in pods:
            samples["StopPodSandbox"].append(maker.stop(sid))
        for sid, cgroup_parent in pods:
            samples["RemovePodSandbox"].append(maker.remove(sid, cgroup_parent))

        # 3. memory and ListPodSandbox with --list-pods pods present
        progress(f"  {opts.list_pods} pods for ListPodSandbox and memory...")
        prefix = cg.prefix(name)
        wait_idle([runtime.pid], quiet=1.0, limit=10.0)
        before = memory_sample(runtime.pid, runtime.marker, prefix)
        many = []
        fill_ms = []
        for _ in range(opts.list_pods):
            config = maker.config("list")
            sid, ms = maker.run(config)
            many.append((sid, config.linux.cgroup_parent))
            fill_ms.append(ms)
        wait_idle([runtime.pid], quiet=1.0, limit=10.0)
        after = memory_sample(runtime.pid, runtime.marker, prefix)
        request = pb.ListPodSandboxRequest()
        for _ in range(5):
            runtime.stub.ListPodSandbox(request, timeout=opts.timeout)
        listed = 0
        for _ in range(opts.list_calls):
            response, ms = maker.timed("ListPodSandbox", request)
            listed = len(response.items)
            samples["ListPodSandbox"].append(ms)
        if listed != opts.list_pods:
            raise RuntimeError(f"ListPodSandbox returned {listed} sandboxes, {opts.list_pods} expected")
        stop_many = [maker.stop(sid) for sid, _ in many]
        remove_many = [maker.remove(sid, cgroup_parent) for sid, cgroup_parent in many]
        wait_idle([runtime.pid], quiet=1.0, limit=10.0)
        final = memory_sample(runtime.pid, runtime.marker, prefix)

        n = opts.list_pods
        result["rpcs"] = {rpc: summary(values) for rpc, values in samples.items()}
        result["samples_ms"] = samples
        result["with_many_pods"] = {
            "RunPodSandbox": summary(fill_ms),
            "StopPodSandbox": summary(stop_many),
            "RemovePodSandbox": summary(remove_many),
        }
        result["memory"] = {
            "pods": n,
            "before": before,
            "after": after,
            "after_removal": final,
            "per_pod_processes": (after["processes"] - before["processes"]) / n,
            "per_pod_rss_bytes": (after["processes_rss_kb"] - before["processes_rss_kb"]) * KB / n,
            "per_pod_pss_bytes": (after["processes_pss_kb"] - before["processes_pss_kb"]) * KB / n,
            "daemon_rss_growth_per_pod_bytes": (after["daemon_rss_kb"] - before["daemon_rss_kb"]) * KB / n,
            "host_used_growth_per_pod_bytes": (after["host_used_kb"] - before["host_used_kb"]) * KB / n,
        }
    finally:
        try:
            runtime.cleanup()
        finally:
            if name == "rktlet":
                server = _server_times(runtime.log())
                result["server_side"] = {key: summary(values) for key, values in server.items() if values}
    return result


# -- cleanup check ---------------------------------------------------------------------------------


def host_state() -> dict[str, list[str]]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    shims = subprocess.run(["pgrep", "-a", "containerd-shim"], capture_output=True, text=True).stdout.splitlines()
    return {
        "netns": sorted(line.split()[0] for line in netns if line.strip()),
        "nat_cni": sorted(line for line in nat if "CNI-" in line),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links if line.count(":") >= 2),
        "shims": sorted(shims),
    }


def leftovers(before: dict[str, list[str]], bridges: list[str], temp_dirs: list[str],
              cg: BenchCgroups) -> list[str]:
    # Exited shims stay zombies until PID 1 reaps them (they were reparented to it).
    deadline = time.monotonic() + 5
    after = host_state()
    while time.monotonic() < deadline and any("<defunct>" in line for line in after["shims"]):
        time.sleep(0.2)
        after = host_state()
    found = []
    for key in ("netns", "nat_cni"):
        for item in sorted(set(after[key]) - set(before[key])):
            found.append(f"new since the start (maybe another user's): {key}: {item}")
    for item in sorted(set(after["shims"]) - set(before["shims"])):
        if "<defunct>" in item:
            found.append(f"exited shim not yet reaped by PID 1 (zombie): {item}")
        else:
            ours = any(d in item for d in temp_dirs)
            found.append(f"{'shim of this run' if ours else 'new shim, not of this run'}: {item}")
    for bridge in bridges:
        if bridge in after["links"]:
            found.append(f"bridge still present: {bridge}")
    mounts = [line.split()[1] for line in read_text("/proc/self/mounts").splitlines()]
    for d in temp_dirs:
        found += [f"mount under {d}: {m}" for m in mounts if m == d or m.startswith(d + "/")]
        if os.path.exists(d):
            found.append(f"temporary directory still present: {d}")
    found += [f"cgroup still present: {p}" for p in cg.leftovers()]
    return found


# -- report ---------------------------------------------------------------------------------------


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rk, cd = results.get("rktlet", {}), results.get("containerd", {})

    text = f"RunPodSandbox p50 at most {RUN_RATIO_GOAL}x containerd's"
    a = rk.get("rpcs", {}).get("RunPodSandbox", {}).get("p50_ms")
    b = cd.get("rpcs", {}).get("RunPodSandbox", {}).get("p50_ms")
    out.append(ratio_goal(text, a, b, lambda r: r <= RUN_RATIO_GOAL, lambda r: f"{r:.2f}x ({a:.1f} ms / {b:.1f} ms)"))

    text = f"ListPodSandbox with 100 pods p50 under {LIST_P50_GOAL_MS:g} ms"
    p50 = rk.get("rpcs", {}).get("ListPodSandbox", {}).get("p50_ms")
    pods = rk.get("memory", {}).get("pods")
    if p50 is not None:
        note = "" if pods == 100 else f", measured with {pods} pods, not 100"
        out.append({"goal": text, "value": p50, "shown": f"{p50:.2f} ms (rktlet{note})",
                    "status": "PASS" if p50 < LIST_P50_GOAL_MS else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured", "status": "N/A"})

    text = "per-pod memory overhead 0 bytes for pods without a shared PID namespace"
    mem = rk.get("memory")
    if mem:
        per_pod = max(mem["per_pod_rss_bytes"], mem["per_pod_pss_bytes"])
        procs = mem["after"]["processes"]
        out.append({"goal": text, "value": per_pod,
                    "shown": f"{per_pod:.0f} bytes (rktlet: {procs} pod processes with {mem['pods']} pods)",
                    "status": "PASS" if per_pod <= POD_MEMORY_GOAL_BYTES and procs == 0 else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured", "status": "N/A"})
    return out


def _format_figures(lines: list[str], report: dict[str, Any], runtimes: list[str], both: bool) -> None:
    results = report["results"]
    rows = [(rpc + (f" ({report['list_pods']} pods)" if rpc == "ListPodSandbox" else ""), ("rpcs", rpc))
            for rpc in RPCS]
    latency_rows(lines, rows, results, runtimes, both, width=26)
    lines.append("")
    lines.append(f"with {report['list_pods']} pods being made/present (p50 ms):")
    for rpc in ("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"):
        row = f"  {rpc:24}" + "".join(f"{fmt_ms(results[n]['with_many_pods'][rpc]['p50_ms']):>16}" for n in runtimes)
        lines.append(row)
    lines.append("")
    lines.append(f"memory, with {report['list_pods']} pods (MB = 10^6 bytes)")
    rows = (
        ("pod processes before/after", lambda m: f"{m['before']['processes']}/{m['after']['processes']}"),
        ("per-pod overhead RSS (MB)", lambda m: f"{m['per_pod_rss_bytes'] / MB:.3f}"),
        ("per-pod overhead PSS (MB)", lambda m: f"{m['per_pod_pss_bytes'] / MB:.3f}"),
        ("daemon RSS before (MB)", lambda m: f"{m['before']['daemon_rss_kb'] * KB / MB:.1f}"),
        ("daemon RSS growth/pod (MB)", lambda m: f"{m['daemon_rss_growth_per_pod_bytes'] / MB:.3f}"),
        ("daemon RSS after removal (MB)", lambda m: f"{m['after_removal']['daemon_rss_kb'] * KB / MB:.1f}"),
        ("host used/pod, noisy (MB)", lambda m: f"{m['host_used_growth_per_pod_bytes'] / MB:.3f}"),
    )
    for label, fmt in rows:
        lines.append(f"  {label:30}" + "".join(f"{fmt(results[n]['memory']):>14}" for n in runtimes))
    for name in runtimes:
        names = results[name]["memory"]["after"]["process_names"]
        if names:
            lines.append(f"  {name} pod processes: " + ", ".join(f"{k} x{v}" for k, v in sorted(names.items())))
    server = results.get("rktlet", {}).get("server_side")
    if server:
        lines.append("")
        lines.append("rktlet's own timings from its log, all pods (p50 / p95 ms):")
        for key, s in server.items():
            label = "sandbox ready in (server)" if key == "ready_in" else f"{key} (server)"
            lines.append(f"  {label:30}{fmt_ms(s['p50_ms']):>10} / {fmt_ms(s['p95_ms'])}  (n={s['n']})")


def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    host = report["host"]
    lines = [
        f"Pod sandbox benchmark — {host['cpus']} CPUs, kernel {host['kernel']}, load average "
        f"{host['loadavg_before']:.2f} before, {host['loadavg_after']:.2f} after (other work on the machine skews the figures)",
        f"  containerd: {report['versions'].get('containerd', '-')}, sandbox image {report.get('pause_ref') or '-'}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']})",
        f"  pods:       {report['pods']} timed pods (after 1 warm-up), ListPodSandbox: {report['list_calls']} calls "
        f"with {report['list_pods']} pods present; namespace_options network=POD ipc=POD pid=CONTAINER",
    ]
    lines += network_lines(report, runtimes)
    lines.append("")
    both = all(r in results for r in RUNTIMES)
    if runtimes:
        _format_figures(lines, report, runtimes, both)
    lines += footer_lines(report)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="CRI pod sandbox benchmark: rktlet against containerd, in the same run.")
    parser.add_argument("--pods", type=int, default=20, help="pods timed per runtime (default 20)")
    parser.add_argument("--list-pods", type=int, default=100,
                        help="pods present for ListPodSandbox and the memory figures (default 100)")
    parser.add_argument("--list-calls", type=int, default=200, help="ListPodSandbox calls timed (default 200)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both, rktlet first)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (every sample included)")
    parser.add_argument("--rktlet-log-level", default="info", choices=("debug", "info", "warn", "error"),
                        help="rktlet's log level (default info, like containerd's; debug adds per-RPC server times)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of every CRI call, s (default 60)")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.list_pods < 1 or args.list_calls < 1:
        parser.error("--pods, --list-pods and --list-calls must be positive")
    if args.list_pods > 250:
        parser.error("--list-pods: at most 250 (one /24 per runtime)")
    runtimes = chosen_runtimes(args)

    if os.geteuid() != 0:
        progress("bench/sandboxes.py: needs root (namespaces, cgroups, bridges); run it with sudo")
        return 2
    if "containerd" in runtimes:
        if containerd_binary() is None:
            progress(f"bench/sandboxes.py: {INSTALL_HINT}")
            return 2
        why = registry_available()
        if why is not None:
            progress(f"bench/sandboxes.py: cannot run the local registry: {why}")
            return 2
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not os.access(os.path.join("/usr/lib/cni", plugin), os.X_OK):
            progress(f"bench/sandboxes.py: CNI plugin /usr/lib/cni/{plugin} missing (apt-get install containernetworking-plugins)")
            return 2

    # SIGTERM (e.g. from timeout(1)) unwinds through the cleanups like ^C.
    signal.signal(signal.SIGTERM, unwind_on_signal)

    versions = versions_of(runtimes)
    state_before = host_state()
    forwarding = HostForwarding()
    cg = BenchCgroups()
    tag = "%04x" % random.randrange(0x10000)
    bridges = [f"bnchrk{tag}", f"bnchcd{tag}"]
    subnets = dict(zip(RUNTIMES, pick_subnets(2, prefix="10.236")))
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, list[str]] = {}
    registry: Optional[LocalRegistry] = None
    pause_ref = ""
    try:
        if "containerd" in runtimes:
            registry = LocalRegistry()
            registry.start()
            if registry.tmpdir:
                OUR_DIRS.append(registry.tmpdir)
            image = pause_image()
            push_image(registry, PAUSE_REPO, PAUSE_TAG, image)
            pause_ref = registry.ref(PAUSE_REPO, PAUSE_TAG)
            progress(f"pushed {pause_ref}")
        for name in runtimes:
            progress(f"{name}...")
            try:
                results[name] = measure(name, args, cg, subnet=subnets[name], tag=tag, registry=registry,
                                        pause_ref=pause_ref)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                message = error_text(exc)
                errors.setdefault(name, []).append(message)
                progress(f"  {name} failed: {message}")
                continue
            r = results[name]["rpcs"]
            progress("  " + ", ".join(f"{rpc} p50 {r[rpc]['p50_ms']:.2f} ms" for rpc in RPCS))
    finally:
        if registry is not None:
            registry.stop()
        cg.cleanup()
        for bridge in bridges:  # normally gone already with each runtime's network
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        forwarding.restore()
        for d in OUR_DIRS:  # normally gone already with each runtime
            if os.path.exists(d):
                unmount_under(d)
                shutil.rmtree(d, ignore_errors=True)
    left = leftovers(state_before, bridges, list(OUR_DIRS), cg)

    report = {
        "host": host_figures(load_before),
        "versions": versions,
        "pause_ref": pause_ref,
        "runtimes": runtimes,
        "pods": args.pods,
        "list_pods": args.list_pods,
        "list_calls": args.list_calls,
        "results": results,
        "goals": goals(results),
        "errors": errors,
        "leftovers": left,
    }
    print_report(report, args.json, format_table)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
