#!/usr/bin/env python3
"""Container lifecycle benchmark: rktlet against containerd, measured in the same run.

Both runtimes are driven by the same CRI v1 gRPC client code (one channel per
runtime, every blocking call timed with ``time.perf_counter``), with the same
busybox image (``harness/images.py`` ``busybox_image()``, pushed to a
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

What the benchmarks share (the runtimes, pods and containers, the cleanup
and its check) is in ``bench/common.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    from common import (
        KB,
        MB,
        RUNTIMES,
        SLEEP_COMMAND,
        STARTERS,
        TRAP_COMMAND,
        BenchCgroups,
        Driver,
        Runtime,
        add_runtime_options,
        chosen_runtimes,
        dig,
        fmt_mb,
        fmt_ms,
        footer_lines,
        header_lines,
        latency_rows,
        make_many,
        network_lines,
        per_item,
        prepare,
        progress,
        ratio_goal,
        ratio_of,
        remove_many,
        run_comparison,
        role_figure,
        server_times,
        summary,
    )
    from rktlet.cri.proto import pb
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/containers.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/containers.py\n"
    )
    sys.exit(2)

#: The goals.
CREATE_START_RATIO_GOAL = 1.0
LIST_P50_GOAL_MS = 5.0
LIST_GOAL_CONTAINERS = 200
MEMORY_RATIO_GOAL = 0.2


# -- the measurement ---------------------------------------------------------------------------------------


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
    conmons = role_figure(mem1, "conmon", "count")
    shims = role_figure(mem1, "shim", "count")
    monitor_rss = role_figure(mem1, "conmon", "rss_kb") + role_figure(mem1, "shim", "rss_kb") + role_figure(mem1, "pause", "rss_kb")
    monitor_pss = role_figure(mem1, "conmon", "pss_kb") + role_figure(mem1, "shim", "pss_kb") + role_figure(mem1, "pause", "pss_kb")
    monitor_anon = sum(role_figure(mem1, r, "rss_anon_kb") for r in ("conmon", "shim", "pause"))
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
            "per_pod_rss_bytes": per_item(monitor_rss, n),
            "per_pod_pss_bytes": per_item(monitor_pss, n),
            "per_pod_anon_bytes": per_item(monitor_anon, n),
            "per_conmon_rss_bytes": per_item(role_figure(mem1, "conmon", "rss_kb"), conmons),
            "per_conmon_pss_bytes": per_item(role_figure(mem1, "conmon", "pss_kb"), conmons),
            "per_shim_rss_bytes": per_item(role_figure(mem1, "shim", "rss_kb"), shims),
            "per_shim_pss_bytes": per_item(role_figure(mem1, "shim", "pss_kb"), shims),
            "per_pause_rss_bytes": per_item(role_figure(mem1, "pause", "rss_kb"), role_figure(mem1, "pause", "count")),
            "per_pause_pss_bytes": per_item(role_figure(mem1, "pause", "pss_kb"), role_figure(mem1, "pause", "count")),
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
    pods, ids, fill = make_many(driver, n_pods, per_pod, SLEEP_COMMAND)
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
    stop_ms, remove_ms = remove_many(driver, pods, ids)
    runtime.idle()
    mem2 = runtime.memory()

    conmons = role_figure(mem1, "conmon", "count")
    shims = role_figure(mem1, "shim", "count")
    pauses = role_figure(mem1, "pause", "count")
    monitor_rss = role_figure(mem1, "conmon", "rss_kb") + role_figure(mem1, "shim", "rss_kb") + role_figure(mem1, "pause", "rss_kb")
    monitor_pss = role_figure(mem1, "conmon", "pss_kb") + role_figure(mem1, "shim", "pss_kb") + role_figure(mem1, "pause", "pss_kb")
    monitor_anon = sum(role_figure(mem1, r, "rss_anon_kb") for r in ("conmon", "shim", "pause"))
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
            "per_pod_rss_bytes": per_item(monitor_rss, n_pods),
            "per_pod_pss_bytes": per_item(monitor_pss, n_pods),
            "per_pod_anon_bytes": per_item(monitor_anon, n_pods),
            "per_container_rss_bytes": per_item(monitor_rss, total),
            "per_container_pss_bytes": per_item(monitor_pss, total),
            "daemon_rss_growth_per_container_bytes": daemon_growth / total,
            "daemon_rss_growth_per_pod_bytes": daemon_growth / n_pods,
            "container_processes_rss_bytes_each": per_item(role_figure(mem1, "container", "rss_kb"),
                                                       role_figure(mem1, "container", "count")),
        },
    }
    if runtime.log_path:
        result["many"]["server_side"] = server_times(runtime.read_log(log_start, log_end))


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, image_ref: str, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, measure, stop it; always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    try:
        driver = prepare(runtime, cg, image_ref, opts.timeout, result)  # pull, warm-up (not counted)
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


# -- report ---------------------------------------------------------------------------------------------------


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rk, cd = results.get("rktlet", {}), results.get("containerd", {})

    text = f"create+start p50 at most {CREATE_START_RATIO_GOAL:.1f}x containerd's"
    a = dig(rk, "lifecycle", "rpcs", "create+start", "p50_ms")
    b = dig(cd, "lifecycle", "rpcs", "create+start", "p50_ms")
    out.append(ratio_goal(text, a, b, lambda r: r <= CREATE_START_RATIO_GOAL,
                          lambda r: f"{r:.2f}x ({a:.1f} ms / {b:.1f} ms)"))

    text = f"ListContainers with {LIST_GOAL_CONTAINERS} containers under {LIST_P50_GOAL_MS:g} ms p50"
    p50 = dig(rk, "many", "rpcs", "ListContainers", "p50_ms")
    if p50 is not None:
        n = rk["many"]["containers"]
        note = "" if n == LIST_GOAL_CONTAINERS else f", measured with {n} containers, not {LIST_GOAL_CONTAINERS}"
        out.append({"goal": text, "value": p50, "shown": f"{p50:.2f} ms (rktlet{note})",
                    "status": "PASS" if p50 < LIST_P50_GOAL_MS else "MISS"})
    else:
        out.append({"goal": text, "value": None, "shown": "not measured", "status": "N/A"})

    text = f"added memory per pod with one container under {MEMORY_RATIO_GOAL}x containerd's (its shim + pause)"
    a = dig(rk, "lifecycle", "memory", "per_pod_rss_bytes")
    b = dig(cd, "lifecycle", "memory", "per_pod_rss_bytes")
    out.append(ratio_goal(
        text, a, b, lambda r: r < MEMORY_RATIO_GOAL,
        lambda r: f"{r:.3f}x RSS (rktlet conmon {a / MB:.2f} MB / containerd shim + pause {b / MB:.2f} MB)",
    ))
    return out



def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    both = all(r in results for r in RUNTIMES)
    n, pods, per_pod = report["containers"], report["many_pods"], report["per_pod"]
    total = pods * per_pod
    lines = header_lines("Container benchmark", report) + [
        f"  lifecycle:  {n} containers, one per pod (after 1 warm-up): {' '.join(TRAP_COMMAND[:2])} '{TRAP_COMMAND[2]}'",
        f"  many:       {pods} pods x {per_pod} containers ({' '.join(SLEEP_COMMAND)}); "
        f"{report['list_calls']} ListContainers, {report['status_calls']} ContainerStatus calls",
    ]
    lines += network_lines(report, runtimes)
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
        latency_rows(lines, rows, results, runtimes, both)
        lines.append("")
        lines.append(f"while making/removing the {total} containers (information):")
        rows = [
            ("  create+start", ("many", "while_filling", "create+start")),
            ("  StopContainer (timeout 0)", ("many", "while_filling", "StopContainer (timeout 0)")),
            ("  RemoveContainer", ("many", "while_filling", "RemoveContainer")),
        ]
        latency_rows(lines, rows, results, runtimes, both)

        lines.append("")
        lines.append("memory, MB = 10^6 bytes, RSS / PSS (the containers' own processes are left out)")
        lines.append(f"  {'':46}" + "".join(f"{name:>24}" for name in runtimes) + (f"{'RSS ratio':>11}" if both else ""))

        def row(label: str, phase: str, key: str, ratio: bool = False, digits: int = 2) -> None:
            text = f"  {label:46}"
            rss_values = []
            for name in runtimes:
                rss = dig(results[name], phase, "memory", f"{key}_rss_bytes")
                pss = dig(results[name], phase, "memory", f"{key}_pss_bytes")
                rss_values.append(rss)
                cell = fmt_mb(rss, digits) + (f" / {fmt_mb(pss, digits)}" if pss is not None else "")
                text += f"{cell:>24}"
            if both and ratio:
                r = ratio_of(rss_values[0], rss_values[1])
                text += f"{(f'{r:.3f}x' if r is not None else '-'):>11}"
            lines.append(text)

        def procs(phase: str) -> str:
            out = ""
            for name in runtimes:
                roles = dig(results[name], phase, "memory", "after", "roles") or {}
                text = " + ".join(f"{roles[r]['count']} {r}" for r in ("conmon", "shim", "pause") if r in roles)
                out += f"{text or 'none':>24}"
            return out

        def daemon(label: str, phase: str, key: str) -> None:
            values = [dig(results[name], phase, "memory", key) for name in runtimes]
            lines.append(f"  {label:46}" + "".join(f"{fmt_mb(v, 3):>24}" for v in values))

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
            values = [dig(results[name], "many", "memory", key, "daemon_rss_kb") for name in runtimes]
            lines.append(f"  {label:46}" + "".join(f"{fmt_mb(v * KB if v is not None else None, 1):>24}" for v in values))

        rk = results.get("rktlet", {})
        server = {
            "create+start phase": dig(rk, "lifecycle", "server_side", "create_start"),
            "stop+remove phase": dig(rk, "lifecycle", "server_side", "stop_remove"),
            f"with {total} containers": dig(rk, "many", "server_side"),
        }
        if any(server.values()):
            lines.append("")
            lines.append("rktlet's own per-RPC times from its debug log (p50 / p95 ms, server side):")
            for phase, times in server.items():
                for method, s in sorted((times or {}).items()):
                    lines.append(f"  {phase:26}{method:22}{fmt_ms(s['p50_ms']):>10} / {fmt_ms(s['p95_ms'])}  (n={s['n']})")
    lines += footer_lines(report)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="CRI container benchmark: rktlet against containerd, in the same run.")
    parser.add_argument("--containers", type=int, default=20,
                        help="containers timed through create/start/stop/remove, one per pod (default 20)")
    parser.add_argument("--many-pods", type=int, default=100,
                        help="pods present for ListContainers/ContainerStatus and the memory figures (default 100)")
    parser.add_argument("--per-pod", type=int, default=2, help="running containers in each of those pods (default 2)")
    parser.add_argument("--list-calls", type=int, default=200, help="ListContainers calls timed (default 200)")
    parser.add_argument("--status-calls", type=int, default=200, help="ContainerStatus calls timed (default 200)")
    add_runtime_options(parser)
    args = parser.parse_args(argv)
    if args.containers < 1 or args.list_calls < 1 or args.status_calls < 1 or args.per_pod < 1:
        parser.error("--containers, --per-pod, --list-calls and --status-calls must be positive")
    if args.many_pods < 1 or args.many_pods > 240:
        parser.error("--many-pods: 1 to 240 (one /24 per runtime)")
    return run_comparison("bench/containers.py", chosen_runtimes(args), measure, args,
                          ("containers", "many_pods", "per_pod", "list_calls", "status_calls"), goals, format_table)


if __name__ == "__main__":
    sys.exit(main())
