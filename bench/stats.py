#!/usr/bin/env python3
"""Container statistics benchmark: rktlet against containerd, measured in the same run.

``ListContainerStats`` is what the kubelet calls (with ``ListPodSandboxStats``)
for its summary API, its eviction manager and its metrics endpoints, every
10-15 s, with every container of the node. This measures it with
``--many-pods`` pods (default 100) of ``--per-pod`` running containers each
(default 2, ``sleep 3600``), for both runtimes, with the same client code and
the same pods and containers as ``bench/containers.py`` (``bench/common.py``:
the kubelet's configurations for a BestEffort pod without
``shareProcessNamespace``, the busybox image from a local registry, bridge +
host-local + portmap networks, one per runtime).

For each runtime, freshly started: one warm-up pod (as in containers.py),
then the pods and containers are made (not timed) and checked running, the
daemon and its monitors are let go idle, and two series are run:

1. ``--calls`` (default 100) unfiltered ``ListContainerStats`` calls, one
   after the other, after 5 untimed ones;
2. the same number of unfiltered ``ListPodSandboxStats`` calls (for
   information; a runtime that does not implement it is reported so).

For each series:

* **latency**: p50 and p95 of the blocking gRPC call on the client
  (``time.perf_counter``), with linear interpolation between ranks; with
  ``--rktlet-log-level debug`` also rktlet's own time of each call from its
  log (``runtime.v1.RuntimeService/ListContainerStats ... 12.3ms OK``);
* **daemon CPU per call**: utime + stime of the daemon process
  (``/proc/PID/stat``, all its threads) after the series minus before,
  divided by the calls. Only the daemon process: containerd asks each pod's
  shim for its containers' figures (``containerd-shim-runc-v2``, a separate
  process), and rktlet's conmons are separate too, so the CPU of those
  monitors is given apart (summed over them the same way), and the total;
* **processes spawned**: whether any process was made during the series,
  found three ways: (a) a separate poller process reads the daemon's
  children (``/proc/PID/task/*/children``) every ``--poll-ms`` (default 5)
  ms and records any PID not there at the start, with its command line;
  (b) the daemon's and the monitors' ``cminflt``, ``cutime`` and ``cstime``
  (``/proc/PID/stat``: page faults and CPU of children they reaped) must not
  change — this catches children that live less than a poll interval,
  since every process that runs makes page faults; (c) the runtime's whole
  process tree (the daemon's descendants, containerd's shims and what runs
  under them) is compared before and after. Containers' processes, conmons,
  shims and pause processes present at the start are not "new";
* what came back (from the last call): the number of items, how many have
  CPU, memory working set and writable-layer figures, and the response's
  size, so that two runtimes doing different work would show.

Goals (printed with PASS or MISS): rktlet's ListContainerStats p50 at most
1.0x containerd's; no process spawned per call (rktlet, both series: none
of (a), (b), (c) saw anything).

Run it as root from the repository root with the test extras installed::

    sudo .venv/bin/python bench/stats.py [--calls 100] [--many-pods 100] [--per-pod 2] [--runtime rktlet] [--json]
    sudo .venv/bin/python bench/stats.py --runtime rktlet --rktlet-log-level debug --rktlet-log /tmp/rktlet.log

Progress goes to stderr. Exit status 1 when a runtime failed (errors listed),
2 when something it needs is missing, 130 when interrupted, 0 otherwise
whether or not the goals are met. Everything is cleaned up as by
``bench/containers.py`` (containers and pods through the CRI, daemons and
left-over monitors by PID, bridges, IPAM state, cgroups, mounts, temporary
directories, ``ip_forward``, portmap's shared chains) and checked afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    import grpc

    from common import (
        CLK_TCK,
        RUNTIMES,
        SLEEP_COMMAND,
        STARTERS,
        BenchCgroups,
        Runtime,
        add_runtime_options,
        chosen_runtimes,
        descendants,
        dig,
        fmt_ms,
        fmt_ratio,
        footer_lines,
        header_lines,
        latency_rows,
        make_many,
        network_lines,
        prepare,
        progress,
        ratio_goal,
        ratio_of,
        remove_many,
        run_comparison,
        server_samples,
        stat_fields,
        summary,
    )
    from rktlet.cri.proto import pb
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/stats.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/stats.py\n"
    )
    sys.exit(2)

#: The goals.
LIST_STATS_RATIO_GOAL = 1.0
SPAWN_GOAL = 0

SERIES = ("ListContainerStats", "ListPodSandboxStats")
WARMUP_CALLS = 5

# Indexes in stat_fields() (fields of /proc/PID/stat from the state on).
_MINFLT, _CMINFLT, _MAJFLT, _CMAJFLT, _UTIME, _STIME, _CUTIME, _CSTIME = 7, 8, 9, 10, 11, 12, 13, 14


# -- watching for processes ---------------------------------------------------------------------------

#: The poller: a separate process (no GIL shared with the gRPC client, no
#: fork of a process that has gRPC threads), reading the daemon's children
#: every interval until a line or EOF arrives on its stdin, then printing
#: what it saw as JSON.
POLLER = r"""
import json, os, select, sys, time

pid, interval = int(sys.argv[1]), float(sys.argv[2])


def children(p):
    found = set()
    try:
        tids = os.listdir(f"/proc/{p}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{p}/task/{tid}/children") as f:
                found.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return found


def describe(p):
    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return b""
    return {"pid": p, "comm": read(f"/proc/{p}/comm").decode("utf-8", "replace").strip(),
            "argv": [a.decode("utf-8", "replace") for a in read(f"/proc/{p}/cmdline").split(b"\0") if a]}


known = children(pid)
new = {}
polls = 0
print("ready", flush=True)
started = time.monotonic()
while not select.select([sys.stdin], [], [], interval)[0]:
    polls += 1
    for p in children(pid) - known:
        seen = describe(p)
        # First seen maybe between fork and exec: keep the latest description.
        if p not in new or seen["comm"]:
            new[p] = seen
print(json.dumps({"polls": polls, "elapsed_s": time.monotonic() - started, "baseline_children": len(known),
                  "new": sorted(new.values(), key=lambda d: d["pid"])}), flush=True)
"""


class ChildPoller:
    """Runs :data:`POLLER` on ``pid`` while the series runs."""

    def __init__(self, pid: int, interval_s: float):
        self.process = subprocess.Popen([sys.executable, "-c", POLLER, str(pid), str(interval_s)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the child poller did not start ({line!r})")

    def finish(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate("stop\n", timeout=30)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        return json.loads(out)


def _counters(pid: int) -> Optional[dict[str, int]]:
    """utime, stime and the reaped children's counters of ``pid`` (None when gone)."""
    fields = stat_fields(pid)
    try:
        return {
            "cpu_ticks": int(fields[_UTIME]) + int(fields[_STIME]),
            "system_ticks": int(fields[_STIME]),
            "children_cpu_ticks": int(fields[_CUTIME]) + int(fields[_CSTIME]),
            "children_faults": int(fields[_CMINFLT]) + int(fields[_CMAJFLT]),
            "start": int(fields[19]),
        }
    except (IndexError, ValueError):
        return None


def _tree(runtime: Runtime) -> dict[int, str]:
    """The runtime's processes besides the daemon, with their role: its
    descendants and (containerd) its shims and what runs under them."""
    found = {pid: "descendant" for pid in descendants([runtime.pid])}
    found.update(runtime.roles())
    return found


class Snapshot:
    """What the daemon and its monitors had used and reaped at one moment."""

    def __init__(self, runtime: Runtime, first: bool):
        # The slow part (the process tree, from all of /proc) is kept out of
        # the window: before the counters and the clock for the first
        # snapshot, after them for the second.
        if first:
            self.tree = _tree(runtime)
            monitors = runtime.monitors()
        else:
            self.time = time.perf_counter()
        daemon = _counters(runtime.pid)
        if daemon is None:
            raise RuntimeError(f"the {runtime.name} daemon (PID {runtime.pid}) is gone")
        self.daemon = daemon
        if first:
            self.monitors = {pid: c for pid in monitors if (c := _counters(pid)) is not None}
            self.time = time.perf_counter()
        else:
            self.monitors = {pid: c for pid in runtime.monitors() if (c := _counters(pid)) is not None}
            self.tree = _tree(runtime)


def _delta(before: Snapshot, after: Snapshot, calls: int) -> dict[str, Any]:
    """CPU per call and the signs of children made between two snapshots."""
    ms_per_tick = 1000.0 / CLK_TCK
    daemon_ticks = after.daemon["cpu_ticks"] - before.daemon["cpu_ticks"]
    monitor_ticks = monitor_reaped_faults = monitor_reaped_ticks = 0
    same = [pid for pid in after.monitors
            if pid in before.monitors and before.monitors[pid]["start"] == after.monitors[pid]["start"]]
    for pid in same:
        b, a = before.monitors[pid], after.monitors[pid]
        monitor_ticks += a["cpu_ticks"] - b["cpu_ticks"]
        monitor_reaped_faults += a["children_faults"] - b["children_faults"]
        monitor_reaped_ticks += a["children_cpu_ticks"] - b["children_cpu_ticks"]
    new = sorted(set(after.tree) - set(before.tree))
    return {
        "wall_s": after.time - before.time,
        "daemon_cpu_ms": daemon_ticks * ms_per_tick,
        "daemon_cpu_ms_per_call": daemon_ticks * ms_per_tick / calls,
        "daemon_system_ms_per_call": (after.daemon["system_ticks"] - before.daemon["system_ticks"]) * ms_per_tick / calls,
        "daemon_cpu_share": daemon_ticks / CLK_TCK / (after.time - before.time),
        "monitors": len(same),
        "monitors_cpu_ms_per_call": monitor_ticks * ms_per_tick / calls,
        "total_cpu_ms_per_call": (daemon_ticks + monitor_ticks) * ms_per_tick / calls,
        "daemon_reaped_children_faults": after.daemon["children_faults"] - before.daemon["children_faults"],
        "daemon_reaped_children_cpu_ticks": after.daemon["children_cpu_ticks"] - before.daemon["children_cpu_ticks"],
        "monitors_reaped_children_faults": monitor_reaped_faults,
        "monitors_reaped_children_cpu_ticks": monitor_reaped_ticks,
        "new_in_tree": [{"pid": pid, "role": after.tree[pid]} for pid in new],
    }


# -- the series ----------------------------------------------------------------------------------------------


def _has(message: Any, *path: str) -> bool:
    """Whether the nested message fields along ``path`` are all set."""
    for name in path:
        if not message.HasField(name):
            return False
        message = getattr(message, name)
    return True


def container_stats_content(response: pb.ListContainerStatsResponse) -> dict[str, Any]:
    items = list(response.stats)
    return {
        "items": len(items),
        "with_cpu": sum(1 for s in items if _has(s, "cpu", "usage_core_nano_seconds")),
        "with_cpu_rate": sum(1 for s in items if _has(s, "cpu", "usage_nano_cores")),
        "with_memory_working_set": sum(1 for s in items if _has(s, "memory", "working_set_bytes")),
        "with_writable_layer": sum(1 for s in items if _has(s, "writable_layer", "used_bytes")),
        "response_bytes": response.ByteSize(),
        "ids": sorted(s.attributes.id for s in items),
    }


def pod_stats_content(response: pb.ListPodSandboxStatsResponse) -> dict[str, Any]:
    items = list(response.stats)
    return {
        "items": len(items),
        "containers": sum(len(s.linux.containers) for s in items),
        "with_cpu": sum(1 for s in items if _has(s, "linux", "cpu", "usage_core_nano_seconds")),
        "with_memory_working_set": sum(1 for s in items if _has(s, "linux", "memory", "working_set_bytes")),
        "with_network": sum(1 for s in items if _has(s, "linux", "network")),
        "response_bytes": response.ByteSize(),
    }


def series(runtime: Runtime, method: str, request: Any, calls: int, timeout: float, poll_s: float,
           content: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """``calls`` timed calls of ``method`` (after untimed ones), with the
    daemon's CPU and any process made meanwhile."""
    call = getattr(runtime.stub, method)
    try:
        for _ in range(WARMUP_CALLS):
            call(request, timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return {"unimplemented": f"{e.code().name}: {e.details()}"}
        raise
    runtime.idle(quiet=0.5)
    log_start = runtime.log_offset()
    poller = ChildPoller(runtime.pid, poll_s)
    try:
        before = Snapshot(runtime, first=True)
        samples: list[float] = []
        response = None
        for _ in range(calls):
            started = time.perf_counter()
            response = call(request, timeout=timeout)
            samples.append((time.perf_counter() - started) * 1000)
        after = Snapshot(runtime, first=False)
    finally:
        polled = poller.finish()
    log_end = runtime.log_offset()
    delta = _delta(before, after, calls)
    spawned = polled["new"]
    delta["new_in_tree"] = [dict(entry, comm=_comm_of(entry["pid"])) for entry in delta["new_in_tree"]]
    result = {
        "latency": summary(samples),
        "samples_ms": samples,
        "cpu": delta,
        "poller": {"interval_ms": poll_s * 1000, "polls": polled["polls"], "elapsed_s": polled["elapsed_s"],
                   "baseline_children": polled["baseline_children"], "new_children": spawned},
        "spawned": (len(spawned) + len(delta["new_in_tree"]) + delta["daemon_reaped_children_faults"]
                    + delta["monitors_reaped_children_faults"] + delta["daemon_reaped_children_cpu_ticks"]
                    + delta["monitors_reaped_children_cpu_ticks"]) > 0,
        "content": content(response),
    }
    if runtime.log_path:
        server = server_samples(runtime.read_log(log_start, log_end)).get(method)
        if server:
            result["server_side"] = summary(server)
            result["server_samples_ms"] = server
    return result


def _comm_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "(gone)"


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, image_ref: str, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, fill it, run the series, empty it and stop it;
    always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    try:
        driver = prepare(runtime, cg, image_ref, opts.timeout, result)  # pull, warm-up (not counted)
        n_pods, per_pod = opts.many_pods, opts.per_pod
        total = n_pods * per_pod
        progress(f"  {n_pods} pods x {per_pod} running containers ({total})...")
        pods, ids, fill = make_many(driver, n_pods, per_pod, SLEEP_COMMAND, phase="stats")
        driver.wait_running(ids)
        result.update({"pods": n_pods, "per_pod": per_pod, "containers": total, "create_start": summary(fill)})
        runtime.idle()

        poll_s = opts.poll_ms / 1000.0
        progress(f"    {opts.calls} ListContainerStats...")
        r = result["ListContainerStats"] = series(runtime, "ListContainerStats", pb.ListContainerStatsRequest(),
                                                  opts.calls, opts.timeout, poll_s, container_stats_content)
        if "unimplemented" in r:
            raise RuntimeError(f"ListContainerStats: {r['unimplemented']}")
        got = r["content"].pop("ids")
        if got != sorted(ids):
            raise RuntimeError(f"ListContainerStats returned {len(got)} containers, {total} expected "
                               f"({len(set(got) & set(ids))} of ours)")
        progress(f"    {opts.calls} ListPodSandboxStats...")
        r = result["ListPodSandboxStats"] = series(runtime, "ListPodSandboxStats", pb.ListPodSandboxStatsRequest(),
                                                   opts.calls, opts.timeout, poll_s, pod_stats_content)
        if "content" in r and r["content"]["items"] != n_pods:
            result.setdefault("problems", []).append(
                f"ListPodSandboxStats returned {r['content']['items']} pods, {n_pods} expected")
        progress("    " + ", ".join(
            f"{m} p50 {result[m]['latency']['p50_ms']:.2f} ms, {result[m]['cpu']['daemon_cpu_ms_per_call']:.2f} ms CPU"
            for m in SERIES if "latency" in result[m]))

        progress("    stopping and removing them...")
        remove_many(driver, pods, ids)
    finally:
        runtime.cleanup()
    return result


# -- report ---------------------------------------------------------------------------------------------------


def _spawn_text(r: Optional[dict[str, Any]]) -> str:
    """What a series saw of processes being made, in a few words."""
    if not r:
        return "-"
    if "unimplemented" in r:
        return "unimplemented"
    cpu, poller = r["cpu"], r["poller"]
    parts = []
    if poller["new_children"]:
        names = sorted({c["comm"] or "?" for c in poller["new_children"]})
        parts.append(f"{len(poller['new_children'])} new children ({', '.join(names)})")
    if cpu["daemon_reaped_children_faults"] or cpu["daemon_reaped_children_cpu_ticks"]:
        parts.append(f"daemon reaped children ({cpu['daemon_reaped_children_faults']} faults)")
    if cpu["monitors_reaped_children_faults"] or cpu["monitors_reaped_children_cpu_ticks"]:
        parts.append(f"monitors reaped children ({cpu['monitors_reaped_children_faults']} faults)")
    if cpu["new_in_tree"]:
        names = sorted({e["comm"] for e in cpu["new_in_tree"]})
        parts.append(f"{len(cpu['new_in_tree'])} new in its tree ({', '.join(names)})")
    return "; ".join(parts) if parts else "none"


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rk, cd = results.get("rktlet", {}), results.get("containerd", {})

    text = f"ListContainerStats p50 at most {LIST_STATS_RATIO_GOAL:.1f}x containerd's"
    a = dig(rk, "ListContainerStats", "latency", "p50_ms")
    b = dig(cd, "ListContainerStats", "latency", "p50_ms")
    note = "" if rk.get("containers") == cd.get("containers") else " (different numbers of containers!)"
    out.append(ratio_goal(
        text, a, b, lambda r: r <= LIST_STATS_RATIO_GOAL,
        lambda r: f"{r:.2f}x ({a:.2f} ms / {b:.2f} ms, {rk.get('containers')} containers){note}",
    ))

    text = "no process spawned per call"
    measured = [m for m in SERIES if "cpu" in rk.get(m, {})]
    if "ListContainerStats" in measured:
        spawned = [m for m in measured if rk[m]["spawned"]]
        calls = sum(rk[m]["latency"]["n"] for m in measured)
        detail = "; ".join(f"{m}: {_spawn_text(rk[m])}" for m in measured)
        out.append({"goal": text, "value": len(spawned),
                    "shown": (f"rktlet, {calls} calls of {' and '.join(measured)}: " +
                              ("nothing spawned" if not spawned else detail)),
                    "status": "PASS" if not spawned else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured (rktlet)", "status": "N/A"})
    return out


def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    both = all(r in results for r in RUNTIMES)
    pods, per_pod = report["many_pods"], report["per_pod"]
    total = pods * per_pod
    lines = header_lines("Container stats benchmark", report) + [
        f"  pods:       {pods} pods x {per_pod} running containers ({' '.join(SLEEP_COMMAND)}); "
        f"{report['calls']} calls of each RPC, one after the other, after {WARMUP_CALLS} untimed ones",
    ]
    lines += network_lines(report, runtimes)
    lines.append("")
    if runtimes:
        rows = [
            (f"ListContainerStats ({total} containers)", ("ListContainerStats", "latency")),
            (f"ListPodSandboxStats ({pods} pods)", ("ListPodSandboxStats", "latency")),
        ]
        latency_rows(lines, rows, results, runtimes, both)
        for name in runtimes:
            for m in SERIES:
                if "unimplemented" in results[name].get(m, {}):
                    lines.append(f"  {name} {m}: {results[name][m]['unimplemented']}")

        lines.append("")
        lines.append("CPU per call, ms: utime+stime (/proc/PID/stat) over the series / calls")
        lines.append(f"  {'':44}" + "".join(f"{name:>14}" for name in runtimes) + (f"{'ratio':>10}" if both else ""))

        def cpu_row(label: str, m: str, key: str, digits: int = 2, ratio: bool = True, scale: float = 1.0) -> None:
            values = [dig(results[name], m, "cpu", key) for name in runtimes]
            values = [v * scale if v is not None else None for v in values]
            row = f"  {label:44}" + "".join(f"{(f'{v:.{digits}f}' if v is not None else '-'):>14}" for v in values)
            if both and ratio:
                row += f"{fmt_ratio(ratio_of(values[0], values[1])):>10}"
            lines.append(row)

        monitors = " | ".join({"rktlet": "conmons", "containerd": "shims + pause"}[n] for n in runtimes)
        for m in SERIES:
            lines.append(f"  {m}:")
            cpu_row("  daemon process (the goal's figure)", m, "daemon_cpu_ms_per_call")
            cpu_row("    of which in the kernel (stime)", m, "daemon_system_ms_per_call")
            cpu_row(f"  monitors ({monitors})", m, "monitors_cpu_ms_per_call")
            cpu_row("  daemon + monitors", m, "total_cpu_ms_per_call")
            cpu_row("  daemon busy, % of the series' wall time", m, "daemon_cpu_share", digits=0, ratio=False, scale=100)

        lines.append("")
        lines.append("processes made during the series (daemon's children polled every "
                     f"{report['poll_ms']:g} ms; children reaped by the daemon or monitors; new in the runtime's tree):")
        for m in SERIES:
            for name in runtimes:
                r = results[name].get(m)
                polls = dig(r, "poller", "polls")
                lines.append(f"  {m + ', ' + name:44}{_spawn_text(r)}" + (f"  ({polls} polls)" if polls else ""))

        lines.append("")
        lines.append("what came back (last call):")
        for name in runtimes:
            c = dig(results[name], "ListContainerStats", "content")
            if c:
                lines.append(f"  {'ListContainerStats, ' + name:44}{c['items']} containers: {c['with_cpu']} with CPU "
                             f"({c['with_cpu_rate']} with a rate), {c['with_memory_working_set']} with memory working "
                             f"set, {c['with_writable_layer']} with writable layer; {c['response_bytes']} bytes")
        for name in runtimes:
            c = dig(results[name], "ListPodSandboxStats", "content")
            if c:
                lines.append(f"  {'ListPodSandboxStats, ' + name:44}{c['items']} pods ({c['containers']} containers "
                             f"inside): {c['with_cpu']} with CPU, {c['with_memory_working_set']} with memory working "
                             f"set, {c['with_network']} with network; {c['response_bytes']} bytes")

        rk = results.get("rktlet", {})
        server = {m: dig(rk, m, "server_side") for m in SERIES}
        if any(server.values()):
            lines.append("")
            lines.append("rktlet's own time per call from its debug log (server side; the rest is gRPC and the client):")
            for m, s in server.items():
                if s:
                    client = dig(rk, m, "latency", "p50_ms")
                    rest = f"; client p50 - server p50 = {client - s['p50_ms']:.2f} ms" if client is not None else ""
                    lines.append(f"  {m:30}p50 {fmt_ms(s['p50_ms'])} / p95 {fmt_ms(s['p95_ms'])} ms (n={s['n']}){rest}")
    lines += footer_lines(report)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="CRI ListContainerStats benchmark: rktlet against containerd, in the same run.")
    parser.add_argument("--many-pods", type=int, default=100, help="pods present (default 100)")
    parser.add_argument("--per-pod", type=int, default=2, help="running containers in each pod (default 2)")
    parser.add_argument("--calls", type=int, default=100,
                        help="ListContainerStats calls timed, and as many ListPodSandboxStats (default 100)")
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="interval of the poll for the daemon's new children, ms (default 5)")
    add_runtime_options(parser)
    args = parser.parse_args(argv)
    if args.per_pod < 1 or args.calls < 1 or args.poll_ms <= 0:
        parser.error("--per-pod, --calls and --poll-ms must be positive")
    if args.many_pods < 1 or args.many_pods > 240:
        parser.error("--many-pods: 1 to 240 (one /24 per runtime)")
    return run_comparison("bench/stats.py", chosen_runtimes(args), measure, args,
                          ("many_pods", "per_pod", "calls", "poll_ms"), goals, format_table)


if __name__ == "__main__":
    sys.exit(main())
