#!/usr/bin/env python3
"""critest's benchmark mode (``critest -benchmark``): rktlet against containerd 2.x, in one run.

cri-tools' ``critest -benchmark`` (v1.37.0, built by ``tests/run`` into
/var/cache/rktlet-test-tools) runs the Ginkgo specs of its
``pkg/benchmark``, which time CRI calls from the client side:

* ``PodSandbox`` lifecycle: RunPodSandbox, PodSandboxStatus (verbose),
  StopPodSandbox, RemovePodSandbox of an empty pod, ``podsNumber`` times;
* ``Container`` lifecycle: in a new pod each time (not timed), "create"
  (an ImageStatus of the image, then CreateContainer), StartContainer,
  ContainerStatus (verbose), StopContainer (grace 60 s; busybox ``top``
  exits on SIGTERM), RemoveContainer, ``containersNumber`` times;
* ``Image`` lifecycle: PullImage, ImageStatus, RemoveImage of a busybox
  image, ``imagesNumber`` times; and ``imagesNumber`` ListImages calls;
* "start a container from scratch": one RunPodSandbox + CreateContainer +
  StartContainer + StopPodSandbox + RemovePodSandbox, timed as a whole
  once per critest run (after one untimed round).

Each lifecycle spec writes its samples to ``-benchmarking-output-dir``
(``pod_benchmark_data.json``, ``container_benchmark_data.json``,
``image_lifecycle_benchmark_data.json``, ``image_listing_benchmark_data.json``:
the operation names, the parallelism and, per sample, the duration of
every operation in ns); the last one is read from the Ginkgo JSON report.

This script runs critest with the same parameters file against rktlet and
against containerd 2.x (``--containerd``, by default the 2.4.2 build in the
tools cache; its runc shim beside it), each time freshly started in new
temporary directories, and prints p50/p95 per operation and runtime with
the ratio rktlet/containerd. Every image critest names (``registry.k8s.io``,
``gcr.io``, ``k8s.gcr.io`` and ``public.ecr.aws``) is rebuilt offline
(:mod:`harness.critest_images`) and pushed to a local
``docker-registry`` on 127.0.0.1, which both runtimes use as the only source
of those hosts (rktlet: ``--registry-mirror HOST=URL``; containerd: a
``hosts.toml`` per host whose ``server`` is the local registry). The whole
run happens in a network namespace of its own with only ``lo`` (unless
``--no-isolate``): nothing can leave the machine.

Run it as root from the repository root with the test extras installed::

    sudo .venv/bin/python bench/critest_benchmark.py [--runs 1] [--pass 20/1 --pass 40/8] [--json]

It is never part of the test run (pytest only collects ``tests/``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    from common import (
        OUR_DIRS,
        RUNTIMES,
        SIGNALS,
        STARTERS,
        BenchCgroups,
        HostForwarding,
        SharedNatChains,
        check_requirements,
        chosen_runtimes,
        error_text,
        host_figures,
        host_state,
        latency_rows,
        leftovers,
        pick_subnets,
        print_report,
        progress,
        summary,
        unwind_on_signal,
        versions_of,
    )
    from rktlet.cri.proto import pb
    from harness.containerd import containerd_major, unmount_under
    from harness.critest_images import UPSTREAM_HOSTS, build_critest_images, critest_images_available
    from harness.images import File, Layer, build_image, busybox_layer, push_image
    from harness.registry import LocalRegistry
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/critest_benchmark.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/critest_benchmark.py\n"
    )
    sys.exit(2)

CACHE_DIR = os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")
CRITEST = os.path.join(CACHE_DIR, "critest-v1.37.0")
CONTAINERD = os.path.join(CACHE_DIR, "containerd-v2.4.2", "containerd")

#: The image the Container specs run (``framework.DefaultLinuxContainerImage``),
#: pulled by both runtimes before critest starts (otherwise the first sample's
#: "CreateContainer" would include a pull).
CONTAINER_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
#: containerd's sandbox (pause) image, pulled at its start.
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
#: The Image specs' default list on amd64 (``defaultImageListingBenchmarkImagesAmd64``;
#: the first is the one pulled): each one busybox-static in a single layer of
#: its own (with a file naming it), so that, as upstream, it shares no layer
#: with the Container specs' image and a pull after a RemoveImage fetches
#: and unpacks it again (unless the runtime kept the content).
ECR_BUSYBOX = "public.ecr.aws/docker/library/busybox"
ECR_TAGS = ("1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl")
#: Every upstream host an image of the benchmark names.
MIRRORED_HOSTS = tuple(dict.fromkeys(UPSTREAM_HOSTS + ("public.ecr.aws",)))

#: (output file, spec, {critest's operation name: the CRI calls it times}).
SPECS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("pod_benchmark_data.json", "PodSandbox lifecycle", {
        "CreatePod": "RunPodSandbox",
        "StatusPod": "PodSandboxStatus (verbose)",
        "StopPod": "StopPodSandbox",
        "RemovePod": "RemovePodSandbox",
    }),
    ("container_benchmark_data.json", "Container lifecycle", {
        "CreateContainer": "CreateContainer (+ ImageStatus)",
        "StartContainer": "StartContainer",
        "StatusContainer": "ContainerStatus (verbose)",
        "StopContainer": "StopContainer",
        "RemoveContainer": "RemoveContainer",
    }),
    ("image_lifecycle_benchmark_data.json", "Image lifecycle", {
        "PullImage": "PullImage",
        "StatusImage": "ImageStatus",
        "RemoveImage": "RemoveImage",
    }),
    ("image_listing_benchmark_data.json", "Image listing", {"ListImages": "ListImages"}),
)
#: The Ginkgo report entry of "start a container from scratch".
SCRATCH_EXPERIMENT = "start-container-benchmark"
SCRATCH_MEASUREMENT = "create PodSandbox and container"
SCRATCH_KEY = "Pod+container from scratch/total"
#: The Image lifecycle spec (Ginkgo ``-skip`` regexp). With parallelism its
#: samples pull and remove the *same* image at once, so a pull can find its
#: image removed by another sample before it returns: containerd 2.4.2 then
#: fails the pull (NotFound), critest panics in the sampling goroutine and
#: writes no result at all. Skipped in parallel passes unless
#: ``--parallel-image-lifecycle``.
IMAGE_LIFECYCLE_SPEC = "benchmark about basic operations on Image"

CLONE_NEWNET = 0x40000000
#: A log line at level error or worse: rktlet's ``[system#error]``, containerd's ``level=error``.
ERROR_LINE = re.compile(r"#(error|critical)\]|level=(error|fatal|panic)")


# -- setup ---------------------------------------------------------------------------------------


def enter_private_network() -> None:
    """Move this process (and so every child it starts) into a new network
    namespace with only ``lo``, up: the registry, the daemons, their pods'
    bridges and critest all live there, and nothing can reach another machine."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def push_images(registry: LocalRegistry) -> list[str]:
    """Every critest image under its upstream path, plus the Image specs'
    ``public.ecr.aws`` busybox tags; the references."""
    refs = []
    for item in build_critest_images():
        push_image(registry, item.path, item.tag, item.image)
        refs.append(item.reference)
    assert CONTAINER_IMAGE in refs and PAUSE_IMAGE in refs, "harness.critest_images lacks an image"
    base = busybox_layer()
    for tag in ECR_TAGS:
        ref = f"{ECR_BUSYBOX}:{tag}"
        layer = Layer([*base.entries, File("etc/image-name", ref + "\n")], created_by=f"busybox-static as {ref}")
        push_image(registry, ECR_BUSYBOX.split("/", 1)[1], tag, build_image([layer], cmd=["sh"]))
        refs.append(ref)
    return sorted(set(refs))


def params_yaml(samples: int, parallel: int, timeout: int) -> str:
    """critest's ``-benchmarking-params-file``: the same numbers for pods,
    containers and images (``BenchmarkingParamsType`` of pkg/framework)."""
    return (
        f"containersNumber: {samples}\n"
        f"containersNumberParallel: {parallel}\n"
        f"containerBenchmarkTimeoutSeconds: {timeout}\n"
        f"podsNumber: {samples}\n"
        f"podsNumberParallel: {parallel}\n"
        f"podBenchmarkTimeoutSeconds: {timeout}\n"
        f"imagesNumber: {samples}\n"
        f"imagesNumberParallel: {parallel}\n"
        f"imageBenchmarkTimeoutSeconds: {timeout}\n"
        f"podContainerStartBenchmarkTimeoutSeconds: {timeout}\n"
    )


def cgroup_tops() -> set[str]:
    """Directories at the top of every mounted cgroup hierarchy."""
    found = set()
    for line in open("/proc/self/mountinfo").read().splitlines():
        fields = line.split()
        if " - cgroup" in line and len(fields) > 4 and os.path.isdir(fields[4]):
            found |= {os.path.join(fields[4], n) for n in os.listdir(fields[4])
                      if os.path.isdir(os.path.join(fields[4], n))}
    return found


def remove_new_cgroups(before: set[str]) -> list[str]:
    """Remove the empty cgroup trees made at the top of a hierarchy since
    ``before`` (pods without a cgroup parent: runc makes ``/k8s.io/<id>``
    for containerd and leaves ``/k8s.io``); the ones that cannot go."""
    stuck = []
    for top in sorted(cgroup_tops() - before):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
        if os.path.isdir(top):
            stuck.append(top)
    return stuck


# -- one critest run -------------------------------------------------------------------------------


def critest_argv(args: argparse.Namespace, socket: str, work: str, seed: int, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        args.critest,
        "-benchmark",
        f"-runtime-endpoint=unix://{socket}",
        f"-image-endpoint=unix://{socket}",
        f"-config={os.path.join(work, 'crictl.yaml')}",
        f"-benchmarking-params-file={os.path.join(work, 'params.yaml')}",
        f"-benchmarking-output-dir={os.path.join(work, 'out')}",
        f"-ginkgo.json-report={os.path.join(work, 'report.json')}",
        f"-ginkgo.seed={seed}",  # the same spec order for both runtimes
        "-ginkgo.no-color",
        f"-ginkgo.timeout={int(args.critest_timeout)}s",
    ] + [f"-ginkgo.skip={regexp}" for regexp in skip]


def read_results(work: str) -> tuple[dict[str, list[float]], list[dict[str, Any]], dict[str, int]]:
    """The samples (ms) per ``"spec/operation"`` from critest's output dir
    and report, the failed specs and the spec counts."""
    samples: dict[str, list[float]] = {}
    for filename, spec, _ in SPECS:
        path = os.path.join(work, "out", filename)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        names = data.get("operationsNames") or []
        for point in data.get("datapoints") or []:
            for name, ns in zip(names, point.get("operationsDurationsNs") or []):
                samples.setdefault(f"{spec}/{name}", []).append(ns / 1e6)
    failures: list[dict[str, Any]] = []
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    report = os.path.join(work, "report.json")
    if not os.path.exists(report):
        failures.append({"spec": "(critest)", "message": "critest wrote no Ginkgo report"})
        return samples, failures, counts
    with open(report) as f:
        suites = json.load(f)
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            state = spec.get("State", "")
            texts = [t for t in (spec.get("ContainerHierarchyTexts") or []) + [spec.get("LeafNodeText", "")] if t]
            name = " ".join(texts) or f"[{spec.get('LeafNodeType')}]"
            if spec.get("LeafNodeType") == "It":
                counts[state if state in counts else "failed"] += 1
            if state not in ("passed", "skipped"):
                failure = spec.get("Failure") or {}
                loc = failure.get("Location") or {}
                failures.append({"spec": name, "state": state,
                                 "message": (failure.get("Message") or "").strip()[:2000],
                                 "location": f"{loc.get('FileName', '?')}:{loc.get('LineNumber', '?')}"})
            for entry in spec.get("ReportEntries") or []:
                if entry.get("Name") != SCRATCH_EXPERIMENT:
                    continue
                try:
                    experiment = json.loads((entry.get("Value") or {}).get("AsJSON") or "{}")
                except ValueError:
                    continue
                for m in experiment.get("Measurements") or []:
                    if m.get("Name") == SCRATCH_MEASUREMENT:
                        samples.setdefault(SCRATCH_KEY, []).extend(d / 1e6 for d in m.get("Durations") or [])
    return samples, failures, counts


def one_run(name: str, args: argparse.Namespace, registry: LocalRegistry, samples: int, parallel: int,
            seed: int, subnet: str, tag: str) -> dict[str, Any]:
    """Start ``name`` afresh, pre-pull the container image, run critest
    -benchmark against it, stop and clean it up; the samples and failures."""
    work = tempfile.mkdtemp(prefix=f"critest-bench-{name}-", dir="/tmp")
    OUR_DIRS.append(work)
    os.makedirs(os.path.join(work, "out"))
    with open(os.path.join(work, "params.yaml"), "w") as f:
        f.write(params_yaml(samples, parallel, args.spec_timeout))
    mirrors = {host: registry.url for host in MIRRORED_HOSTS}
    rktlet_args: list[str] = []
    for host in MIRRORED_HOSTS:
        rktlet_args += ["--registry-mirror", f"{host}={registry.url}"]
    runtime = STARTERS[name](args, subnet, tag, registry=registry, pause_ref=PAUSE_IMAGE,
                             containerd=args.containerd, mirrors=mirrors, rktlet_args=tuple(rktlet_args))
    skip = (IMAGE_LIFECYCLE_SPEC,) if parallel > 1 and not args.parallel_image_lifecycle else ()
    result: dict[str, Any] = {"samples": samples, "parallel": parallel, "seed": seed, "skipped_specs": list(skip)}
    try:
        with open(os.path.join(work, "crictl.yaml"), "w") as f:
            f.write(f"runtime-endpoint: unix://{runtime.socket}\nimage-endpoint: unix://{runtime.socket}\n")
        runtime.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=CONTAINER_IMAGE)), timeout=120)
        argv = critest_argv(args, runtime.socket, work, seed, skip)
        log_path = os.path.join(work, "critest.log")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            try:
                result["exit"] = proc.wait(timeout=args.critest_timeout + 60)
            except BaseException:
                proc.terminate()  # by its PID
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        result["critest_s"] = round(time.monotonic() - started, 1)
        result["samples_ms"], result["failures"], result["counts"] = read_results(work)
        if result["exit"] != 0 and not result["failures"]:
            with open(log_path, errors="replace") as f:
                result["failures"].append({"spec": "(critest)", "message": f"exit {result['exit']}: "
                                           + f.read()[-3000:]})
        # rktlet's log (Runtime.log_path), or containerd's (in its directory).
        daemon_log = runtime.log_path or os.path.join(runtime.base, "containerd.log")
        if args.keep:
            keep = os.path.join(args.keep, f"{name}-{samples}x{parallel}-seed{seed}")
            shutil.copytree(work, keep, dirs_exist_ok=True)
            if os.path.exists(daemon_log):
                shutil.copy(daemon_log, os.path.join(keep, f"{name}.log"))
        try:
            with open(daemon_log, errors="replace") as f:
                log_text = f.read()
        except OSError:
            log_text = ""
        result["daemon_tracebacks"] = log_text.count("Traceback (most recent call last)")
        result["daemon_errors"] = [line for line in log_text.splitlines() if ERROR_LINE.search(line)][:20]
    finally:
        runtime.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return result


# -- report --------------------------------------------------------------------------------------------


def pass_key(samples: int, parallel: int) -> str:
    return f"{samples}x{parallel}"


def rows() -> list[tuple[str, str]]:
    """(label: the CRI calls timed, sample key) in the table's order."""
    out = [(calls, f"{spec}/{op}") for _, spec, ops in SPECS for op, calls in ops.items()]
    out.append(("pod + container from scratch (1 per run)", SCRATCH_KEY))
    return out


def format_table(report: dict[str, Any]) -> str:
    host = report["host"]
    runtimes = report["runtimes"]
    both = runtimes == list(RUNTIMES)
    lines = [
        f"critest -benchmark ({os.path.basename(report['critest'])}) — {host['cpus']} CPUs, kernel {host['kernel']}, "
        f"load average {host['loadavg_before']:.2f} before, {host['loadavg_after']:.2f} after",
        f"  containerd: {report['versions'].get('containerd', '-')}, sandbox image {PAUSE_IMAGE}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']}), "
        f"log level {report['rktlet_log_level']}",
        f"  images:     {len(report['images'])} references of {', '.join(MIRRORED_HOSTS)} from a local registry "
        f"({'private network namespace' if report['isolated'] else 'host network'})",
        f"  runs:       {report['runs']} per runtime and pass, fresh daemon each time, alternating which goes first",
    ]
    for p in report["passes"]:
        key = pass_key(p["samples"], p["parallel"])
        lines.append("")
        lines.append(f"Pass {key}: {p['samples']} samples per spec, parallelism {p['parallel']} "
                     f"(p50/p95 over {report['runs']} run(s))")
        skipped = sorted({s for name in runtimes for r in report["critest_runs"][name] if r.get("key") == key
                          for s in r.get("skipped_specs", [])})
        if skipped:
            lines.append(f"  skipped for both runtimes: {', '.join(skipped)} (see IMAGE_LIFECYCLE_SPEC)")
        results = {name: {"ops": {k: summary(v) for k, v in report["samples"][name].get(key, {}).items()}}
                   for name in runtimes}
        measured = {k for name in runtimes for k in results[name]["ops"]}
        table = [(label, ("ops", k)) for label, k in rows() if k in measured]
        latency_rows(lines, table, results, runtimes, both, width=42)
        for name in runtimes:
            secs = [r["critest_s"] for r in report["critest_runs"][name] if r.get("key") == key and "critest_s" in r]
            if secs:
                lines.append(f"  {name}: critest took {', '.join(f'{s:.0f}' for s in secs)} s")
    failures = [(name, f) for name in runtimes for r in report["critest_runs"][name] for f in r.get("failures", [])]
    if failures:
        lines.append("")
        lines.append("Failed specs:")
        for name, f in failures:
            lines.append(f"  {name}: {f['spec']} [{f.get('state', '')}] {f.get('location', '')}")
            for text in f["message"].splitlines()[:6]:
                lines.append(f"      {text}")
    if report["errors"]:
        lines.append("")
        lines.append("Errors:")
        for name, messages in report["errors"].items():
            for message in messages:
                lines.append(f"  {name}: {message}")
    for name in runtimes:
        tracebacks = sum(r.get("daemon_tracebacks", 0) for r in report["critest_runs"][name])
        logged = [line for r in report["critest_runs"][name] for line in r.get("daemon_errors", [])]
        if tracebacks or logged:
            lines.append(f"  {name}: {tracebacks} traceback(s) and {len(logged)} error line(s) in its log, e.g.:")
            lines += [f"      {line[:300]}" for line in logged[:3]]
    lines.append("")
    others = [item for item in report["leftovers"] if "not of this run" in item or "maybe another user" in item]
    ours = [item for item in report["leftovers"] if item not in others]
    lines.append("Cleanup check: " + ("nothing of this run left behind" if not ours else "LEFT BEHIND:"))
    lines += [f"  {item}" for item in ours]
    if others:
        lines.append(f"  ({len(others)} processes, mounts, links... new since the start but not of this run, "
                     "i.e. someone else's: listed with --json)")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------


def parse_pass(text: str) -> tuple[int, int]:
    try:
        samples, _, parallel = text.partition("/")
        out = (int(samples), int(parallel or "1"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SAMPLES/PARALLELISM, e.g. 20/1")
    if out[0] < 1 or out[1] < 1:
        raise argparse.ArgumentTypeError("samples and parallelism must be positive")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="critest -benchmark: rktlet against containerd 2.x, in the same run.")
    parser.add_argument("--runs", type=int, default=1, help="critest runs per runtime and pass (default 1)")
    parser.add_argument("--pass", dest="passes", action="append", type=parse_pass, metavar="SAMPLES/PARALLELISM",
                        help="samples per spec and their parallelism (repeatable; default 20/1)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both, rktlet first)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (every sample included)")
    parser.add_argument("--critest", default=CRITEST, help=f"the critest program (default {CRITEST})")
    parser.add_argument("--containerd", default=CONTAINERD,
                        help=f"containerd 2.x, its containerd-shim-runc-v2 beside it (default {CONTAINERD})")
    parser.add_argument("--rktlet-log-level", default="info", choices=("debug", "info", "warn", "error"),
                        help="rktlet's log level (default info, like containerd's)")
    parser.add_argument("--rktlet-log", metavar="FILE", help="copy rktlet's last log to FILE")
    parser.add_argument("--seed", type=int, default=1, help="Ginkgo's spec order seed of the first run (default 1)")
    parser.add_argument("--spec-timeout", type=int, default=60,
                        help="critest's benchmark timeouts (its *TimeoutSeconds parameters), s (default 60)")
    parser.add_argument("--critest-timeout", type=float, default=1800.0,
                        help="deadline of one critest run, s (default 1800)")
    parser.add_argument("--parallel-image-lifecycle", action="store_true",
                        help="run the Image lifecycle spec in parallel passes too (containerd fails it)")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy critest's output, report and log and the daemon's log to DIR")
    parser.add_argument("--no-isolate", action="store_true",
                        help="stay in the host's network namespace (the registry is still only on 127.0.0.1)")
    args = parser.parse_args(argv)
    args.passes = args.passes or [(20, 1)]
    if args.runs < 1:
        parser.error("--runs must be positive")
    runtimes = chosen_runtimes(args)

    why = check_requirements("bench/critest_benchmark.py", runtimes,
                             containerd=args.containerd if "containerd" in runtimes else None)
    if why is None and not os.access(args.critest, os.X_OK):
        why = f"bench/critest_benchmark.py: no critest at {args.critest} (sudo tests/run builds it)"
    if why is None:
        why = critest_images_available()
        why = f"bench/critest_benchmark.py: cannot build critest's images: {why}" if why else None
    if why is None and "containerd" in runtimes and containerd_major(args.containerd) < 2:
        why = f"bench/critest_benchmark.py: {args.containerd} is not containerd 2.x"
    if why is not None:
        progress(why)
        return 2

    for sig in SIGNALS:
        signal.signal(sig, unwind_on_signal)
    if not args.no_isolate:
        enter_private_network()
    versions = versions_of(runtimes, containerd=args.containerd)
    state_before = host_state()
    cgroups_before = cgroup_tops()
    forwarding = HostForwarding()
    nat = SharedNatChains()
    cg = BenchCgroups()  # only for the leftover check: critest's pods have no cgroup parent
    load_before = os.getloadavg()
    tag = "%04x" % random.randrange(0x10000)
    bridges = [f"bnchrk{tag}", f"bnchcd{tag}"]
    subnets = dict(zip(RUNTIMES, pick_subnets(2)))
    samples: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in runtimes}
    critest_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
    errors: dict[str, list[str]] = {}
    images: list[str] = []
    registry: Optional[LocalRegistry] = None
    interrupted = False
    stuck: list[str] = []
    try:
        registry = LocalRegistry()
        registry.start()
        if registry.tmpdir:
            OUR_DIRS.append(registry.tmpdir)
        started = time.monotonic()
        images = push_images(registry)
        progress(f"pushed {len(images)} images to {registry.url} in {time.monotonic() - started:.1f} s")
        for run in range(args.runs):
            for n, parallel in args.passes:
                key = pass_key(n, parallel)
                order = runtimes if run % 2 == 0 else list(reversed(runtimes))
                for name in order:
                    seed = args.seed + run
                    progress(f"run {run + 1}/{args.runs}, pass {key}: {name}...")
                    try:
                        result = one_run(name, args, registry, n, parallel, seed, subnets[name], tag)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        message = error_text(exc)
                        errors.setdefault(name, []).append(f"run {run + 1}, pass {key}: {message}")
                        progress(f"  {name} failed: {message}")
                        continue
                    result["key"] = key
                    critest_runs[name].append(result)
                    for op, values in result.pop("samples_ms").items():
                        samples[name].setdefault(key, {}).setdefault(op, []).extend(values)
                    result["samples_ms_count"] = {op: len(v) for op, v in samples[name][key].items()}
                    progress(f"  critest {result['critest_s']:.0f} s, exit {result['exit']}, specs {result['counts']}"
                             + (f", {len(result['failures'])} failed" if result["failures"] else ""))
                    for f in result["failures"]:
                        progress(f"    FAILED {f['spec']}: {f['message'].splitlines()[0] if f['message'] else ''}")
    except KeyboardInterrupt as exc:
        interrupted = True
        progress(f"interrupted ({exc or 'SIGINT'}); cleaning up")
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if registry is not None:
            registry.stop()
        for bridge in bridges:  # normally gone with each runtime's network
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        forwarding.restore()
        nat.restore()
        for d in OUR_DIRS:
            if os.path.exists(d):
                unmount_under(d)
                shutil.rmtree(d, ignore_errors=True)
        stuck = remove_new_cgroups(cgroups_before)
    left = leftovers(state_before, bridges, cg) + [f"cgroup still present: {d}" for d in stuck]
    if interrupted:
        for item in left:
            progress(f"  left behind: {item}")
        return 130
    report = {
        "host": host_figures(load_before),
        "versions": versions,
        "critest": args.critest,
        "containerd_binary": args.containerd,
        "rktlet_log_level": args.rktlet_log_level,
        "isolated": not args.no_isolate,
        "images": images,
        "runtimes": runtimes,
        "runs": args.runs,
        "passes": [{"samples": n, "parallel": p} for n, p in args.passes],
        "summaries": {name: {key: {op: summary(v) for op, v in ops.items()} for key, ops in by_pass.items()}
                      for name, by_pass in samples.items()},
        "samples": samples,
        "critest_runs": critest_runs,
        "errors": errors,
        "leftovers": left,
    }
    print_report(report, args.json, format_table)
    failed = errors or any(r.get("failures") for runs in critest_runs.values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
