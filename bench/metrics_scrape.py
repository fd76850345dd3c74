#!/usr/bin/env python3
"""What a Prometheus scrape costs: rktlet's ``/metrics`` against
containerd 2.4.2's ``/v1/metrics``, with 100 pods on each, in one run.

For each runtime, freshly started with its metrics endpoint on 127.0.0.1
(rktlet: ``--metrics-address``; containerd: ``[metrics] address``) and the
benchmark's CNI network (bridge + host-local + portmap, as
``bench/sandboxes.py``):

1. ``--pods`` pods (default 100) are made with RunPodSandbox, as the kubelet
   makes them (``bench/common.py``: cgroup parent, labels, DNS); no
   containers (containerd runs a shim and a pause process per pod);
2. 5 untimed scrapes, then ``--scrapes`` (default 200) scrapes one after the
   other on one kept-alive HTTP connection, as Prometheus does, each timed
   from the request to the last byte of the body: p50, p95, the body's size
   and sample count, and the daemon's CPU time per scrape (utime+stime from
   ``/proc/PID/stat`` over the whole series);
3. the effect on a concurrent read: ``--reads`` (default 200) ListPodSandbox
   calls are timed with nothing else going on, then again while another
   thread scrapes back to back: p50 and p95 of each, and the slowdown;
4. the pods are stopped and removed, the daemon stopped.

containerd 2.4.2 is the build in the tools cache (``--containerd``; its
runc shim beside it), its sandbox image a tiny pause-like image pushed to a
local registry on 127.0.0.1. Run it as root from the repository root with
the test extras installed::

    sudo .venv/bin/python bench/metrics_scrape.py [--pods 100] [--scrapes 200] [--json]

Progress goes to stderr; about two minutes. Everything it made is removed
and checked afterwards (pods, daemons and shims by PID, bridges, IPAM
state, cgroups, temporary directories). Never part of the test run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    from common import (
        CLK_TCK,
        OUR_DIRS,
        PAUSE_ARGV,
        PAUSE_REPO,
        PAUSE_TAG,
        RUNTIMES,
        SIGNALS,
        STARTERS,
        BenchCgroups,
        Driver,
        HostForwarding,
        SharedNatChains,
        check_requirements,
        chosen_runtimes,
        cpu_ticks,
        error_text,
        fmt_ms,
        fmt_ratio,
        host_figures,
        host_state,
        leftovers,
        pick_subnets,
        progress,
        ratio_of,
        summary,
        unwind_on_signal,
        versions_of,
    )
    from prometheus_client.parser import text_string_to_metric_families
    from rktlet.cri.proto import pb
    from harness.containerd import containerd_major, unmount_under
    from harness.daemon import free_port
    from harness.images import build_image, busybox_layer, push_image
    from harness.registry import LocalRegistry
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/metrics_scrape.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/metrics_scrape.py\n"
    )
    sys.exit(2)

CACHE_DIR = os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")
CONTAINERD = os.path.join(CACHE_DIR, "containerd-v2.4.2", "containerd")
#: Where each runtime serves its metrics.
PATHS = {"rktlet": "/metrics", "containerd": "/v1/metrics"}
WARM_UP = 5


class Scraper:
    """Scrapes one endpoint over one kept-alive connection, as Prometheus does."""

    def __init__(self, port: int, path: str) -> None:
        self.path = path
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def scrape(self) -> tuple[float, bytes]:
        """(milliseconds from the request to the body's last byte, the body)."""
        started = time.perf_counter()
        self.conn.request("GET", self.path, headers={"Accept": "text/plain;version=0.0.4"})
        response = self.conn.getresponse()
        body = response.read()
        ms = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {self.path}: {response.status} {body[:200]!r}")
        return ms, body

    def close(self) -> None:
        self.conn.close()


def sample_count(body: bytes) -> int:
    return sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))


def time_reads(driver: Driver, n: int) -> list[float]:
    return [driver.timed("ListPodSandbox", pb.ListPodSandboxRequest())[1] for _ in range(n)]


def measure(name: str, args: argparse.Namespace, cg: BenchCgroups, subnet: str, tag: str,
            registry: LocalRegistry, pause_ref: str) -> dict[str, Any]:
    port = free_port()
    runtime = STARTERS[name](args, subnet, tag, registry=registry, pause_ref=pause_ref, containerd=args.containerd,
                             metrics_address=f"127.0.0.1:{port}",
                             rktlet_args=("--metrics-address", f"127.0.0.1:{port}"))
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    log_root = os.path.join(runtime.base, "pod-logs")
    os.makedirs(log_root, exist_ok=True)
    driver = Driver(runtime, cg, "", log_root, args.timeout)
    pods = []
    scraper = Scraper(port, PATHS[name])
    try:
        started = time.monotonic()
        for i in range(args.pods):
            pods.append(driver.new_pod("scrape"))
            if (i + 1) % 25 == 0:
                progress(f"  {i + 1} pods ({time.monotonic() - started:.0f} s)")
        runtime.idle()
        for _ in range(WARM_UP):
            _, body = scraper.scrape()
        result["body_bytes"] = len(body)
        result["samples"] = sample_count(body)
        cpu_before = cpu_ticks(runtime.pid)
        times = [scraper.scrape()[0] for _ in range(args.scrapes)]
        cpu_after = cpu_ticks(runtime.pid)
        result["scrape"] = summary(times)
        result["cpu_ms_per_scrape"] = (cpu_after - cpu_before) * 1000 / CLK_TCK / args.scrapes
        progress(f"  scrape p50 {fmt_ms(result['scrape']['p50_ms'])} ms, {result['body_bytes']} bytes, "
                 f"{result['samples']} samples")

        runtime.idle()
        time_reads(driver, 5)
        result["reads_alone"] = summary(time_reads(driver, args.reads))
        stop = threading.Event()
        scrapes_during = [0]
        background = Scraper(port, PATHS[name])

        def scrape_loop() -> None:
            while not stop.is_set():
                background.scrape()
                scrapes_during[0] += 1

        thread = threading.Thread(target=scrape_loop, daemon=True)
        thread.start()
        try:
            result["reads_while_scraping"] = summary(time_reads(driver, args.reads))
        finally:
            stop.set()
            thread.join(30)
            background.close()
        result["scrapes_during_reads"] = scrapes_during[0]
        progress(f"  ListPodSandbox p50 {fmt_ms(result['reads_alone']['p50_ms'])} ms alone, "
                 f"{fmt_ms(result['reads_while_scraping']['p50_ms'])} ms while scraping")
        for pod in pods:
            driver.remove_pod(pod)
        pods = []
    finally:
        scraper.close()
        runtime.cleanup()
    return result


def format_table(report: dict[str, Any]) -> str:
    results, runtimes = report["results"], report["runtimes"]
    both = all(name in results for name in RUNTIMES)
    host = report["host"]
    lines = [
        f"Metrics scrape, {report['pods']} pods — {host['cpus']} CPUs, kernel {host['kernel']}, load average "
        f"{host['loadavg_before']:.2f} before, {host['loadavg_after']:.2f} after",
        f"  containerd: {report['versions'].get('containerd', '-')}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']})",
        "",
        f"{'':34}" + "".join(f"{name:>14}" for name in runtimes if name in results)
        + (f"{'ratio':>10}" if both else ""),
    ]

    def row(label: str, key: str, fmt: Any, *path: str) -> None:
        values = {}
        for name in runtimes:
            if name in results:
                value: Any = results[name]
                for part in (key, *path):
                    value = (value or {}).get(part) if isinstance(value, dict) else None
                values[name] = value
        text = f"{label:34}" + "".join(f"{fmt(v):>14}" for v in values.values())
        if both:
            text += f"{fmt_ratio(ratio_of(values['rktlet'], values['containerd'])):>10}"
        lines.append(text)

    def count(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}"

    row("scrape p50, ms", "scrape", fmt_ms, "p50_ms")
    row("scrape p95, ms", "scrape", fmt_ms, "p95_ms")
    row("daemon CPU per scrape, ms", "cpu_ms_per_scrape", fmt_ms)
    row("body, bytes", "body_bytes", count)
    row("samples", "samples", count)
    row("ListPodSandbox alone p50, ms", "reads_alone", fmt_ms, "p50_ms")
    row("ListPodSandbox alone p95, ms", "reads_alone", fmt_ms, "p95_ms")
    row("ListPodSandbox scraping p50, ms", "reads_while_scraping", fmt_ms, "p50_ms")
    row("ListPodSandbox scraping p95, ms", "reads_while_scraping", fmt_ms, "p95_ms")
    row("scrapes during those reads", "scrapes_during_reads", count)
    for name in runtimes:
        if name in results:
            r = results[name]
            slow = ratio_of(r["reads_while_scraping"]["p50_ms"], r["reads_alone"]["p50_ms"])
            lines.append(f"  {name}: ListPodSandbox p50 while scraping back to back is {fmt_ratio(slow)} "
                         "of its p50 alone")
    if report["errors"]:
        lines += ["", "Errors:"] + [f"  {n}: {m}" for n, ms in report["errors"].items() for m in ms]
    lines.append("")
    lines.append("Cleanup check: " + ("nothing left behind" if not report["leftovers"] else "LEFT BEHIND:"))
    lines += [f"  {item}" for item in report["leftovers"]]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100, help="pods made on each runtime (default 100)")
    parser.add_argument("--scrapes", type=int, default=200, help="timed scrapes per runtime (default 200)")
    parser.add_argument("--reads", type=int, default=200,
                        help="ListPodSandbox calls timed alone and while scraping (default 200 each)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both, rktlet first)")
    parser.add_argument("--containerd", default=CONTAINERD, help="containerd 2.x (default: %(default)s)")
    parser.add_argument("--rktlet-log-level", default="info", choices=("debug", "info", "warn", "error"))
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of every CRI call, s (default 60)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    runtimes = chosen_runtimes(args)
    why = check_requirements("bench/metrics_scrape.py", runtimes,
                             containerd=args.containerd if "containerd" in runtimes else None)
    if why is None and "containerd" in runtimes and containerd_major(args.containerd) < 2:
        why = f"bench/metrics_scrape.py: {args.containerd} is not containerd 2.x"
    if why is not None:
        progress(why)
        return 2

    for sig in SIGNALS:
        signal.signal(sig, unwind_on_signal)
    versions = versions_of(runtimes, containerd=args.containerd)
    state_before = host_state()
    forwarding, nat, cg = HostForwarding(), SharedNatChains(), BenchCgroups()
    load_before = os.getloadavg()
    tag = "%04x" % random.randrange(0x10000)
    bridges = [f"bnchrk{tag}", f"bnchcd{tag}"]
    subnets = dict(zip(RUNTIMES, pick_subnets(2)))
    results: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    registry: Optional[LocalRegistry] = None
    interrupted = False
    try:
        registry = LocalRegistry()
        registry.start()
        if registry.tmpdir:
            OUR_DIRS.append(registry.tmpdir)
        push_image(registry, PAUSE_REPO, PAUSE_TAG, build_image([busybox_layer()], entrypoint=PAUSE_ARGV, cmd=None))
        pause_ref = registry.ref(PAUSE_REPO, PAUSE_TAG)
        for name in runtimes:
            progress(f"{name}...")
            try:
                results[name] = measure(name, args, cg, subnets[name], tag, registry, pause_ref)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                errors.setdefault(name, []).append(error_text(exc))
                progress(f"  {name} failed: {error_text(exc)}")
    except KeyboardInterrupt as exc:
        interrupted = True
        progress(f"interrupted ({exc or 'SIGINT'}); cleaning up")
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if registry is not None:
            registry.stop()
        cg.cleanup()
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        forwarding.restore()
        nat.restore()
        for d in OUR_DIRS:
            if os.path.exists(d):
                unmount_under(d)
                shutil.rmtree(d, ignore_errors=True)
    left = leftovers(state_before, bridges, cg)
    if interrupted:
        return 130
    report = {"host": host_figures(load_before), "versions": versions, "pods": args.pods, "scrapes": args.scrapes,
              "runtimes": runtimes, "results": results, "errors": errors, "leftovers": left}
    if args.json:
        import json

        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
