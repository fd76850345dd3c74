#!/usr/bin/env python3
"""Image volumes (``Mount.image``): what one costs, rktlet against containerd 2.x, in one run.

For each runtime, started afresh (as in ``bench/containers.py``: same
network, cgroups, pod and container configs; the busybox workload image
pushed to a local registry and pulled before anything is timed), ``--pods``
pods (default 20), each with two containers running
``sh -c 'trap "exit 0" TERM; while true; do sleep 0.1; done'``: one plain,
one with the workload image also mounted read-only at ``/mnt/image`` (what
the kubelet sends for an ``image`` volume: the image id from PullImage,
``readonly``, no host path). Which of the two is made first alternates from
pod to pod. Timed on the client: CreateContainer, StartContainer and
RemoveContainer (after StopContainer) of each, so the cost of the volume is
the difference between the two rows of a runtime. In the first pod the
volume is checked from inside (a file of the image is there, a write fails).

Where the runtimes differ: rktlet mounts one read-only overlay of the
image's layers per container and unmounts it in RemoveContainer (after
the answer, with the rest of the container's files); containerd mounts one
per pod and image, on the first container's create, and unmounts it with
the pod (RemovePodSandbox, not timed here).

containerd 2.x is needed (1.x ignores image volumes): the 2.4.2 build the
tests use is found through ``PATH``. As root, from the repository root::

    sudo PATH=/var/cache/rktlet-test-tools/containerd-v2.4.2:$PATH \\
        .venv/bin/python bench/image_volumes.py [--pods 20] [--runtime rktlet] [--json]

Cleanup is that of ``bench/containers.py`` (``bench/common.py``).
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
        RUNTIMES,
        STARTERS,
        TRAP_COMMAND,
        BenchCgroups,
        add_runtime_options,
        chosen_runtimes,
        container_config,
        dig,
        footer_lines,
        header_lines,
        latency_rows,
        network_lines,
        prepare,
        progress,
        run_comparison,
        summary,
    )
    from rktlet.cri.proto import pb
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/image_volumes.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/image_volumes.py\n"
    )
    sys.exit(2)

#: Where the volume is mounted in the container.
VOLUME_PATH = "/mnt/image"
KINDS = ("plain", "volume")
STEPS = ("CreateContainer", "StartContainer", "create+start", "RemoveContainer")


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, image_ref: str, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, time the containers with and without a volume, stop it; always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    try:
        driver = prepare(runtime, cg, image_ref, opts.timeout, result)  # pull, warm-up (not counted)
        image_id = runtime.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image_ref)),
                                            timeout=opts.timeout).image_ref
        samples: dict[str, dict[str, list[float]]] = {k: {s: [] for s in STEPS} for k in KINDS}
        progress(f"  {opts.pods} pods with a plain container and one with an image volume...")
        for i in range(opts.pods):
            pod = driver.new_pod("vol")
            made: dict[str, str] = {}
            for kind in (KINDS if i % 2 == 0 else tuple(reversed(KINDS))):
                config = container_config(pod, kind, image_ref, TRAP_COMMAND)
                if kind == "volume":
                    config.mounts.append(pb.Mount(container_path=VOLUME_PATH, readonly=True,
                                                  image=pb.ImageSpec(image=image_id, user_specified_image=image_ref)))
                os.makedirs(os.path.join(pod.config.log_directory, kind), exist_ok=True)  # the kubelet makes it
                request = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
                response, create_ms = driver.timed("CreateContainer", request)
                made[kind] = response.container_id
                start_ms = driver.start(made[kind])
                samples[kind]["CreateContainer"].append(create_ms)
                samples[kind]["StartContainer"].append(start_ms)
                samples[kind]["create+start"].append(create_ms + start_ms)
            driver.wait_running(list(made.values()))
            if i == 0:
                check_volume(runtime, made["volume"], opts.timeout)
            for kind in KINDS:
                driver.stop(made[kind], 10)
                samples[kind]["RemoveContainer"].append(driver.remove(made[kind]))
            driver.remove_pod(pod)
        result["rpcs"] = {kind: {step: summary(v) for step, v in steps.items()} for kind, steps in samples.items()}
        result["samples_ms"] = samples
    finally:
        runtime.cleanup()
    return result


def check_volume(runtime: Any, container_id: str, timeout: float) -> None:
    """The image is there, read-only (else the figures compare nothing)."""
    def run(*cmd: str) -> Any:
        return runtime.stub.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=10),
                                     timeout=timeout)

    listed = run("ls", f"{VOLUME_PATH}/bin")
    if b"busybox" not in listed.stdout:
        raise RuntimeError(f"{runtime.name}: the image volume is not mounted at {VOLUME_PATH} "
                           f"(ls: {listed.stdout[:200]!r} {listed.stderr[:200]!r})")
    if run("touch", f"{VOLUME_PATH}/written").exit_code == 0:
        raise RuntimeError(f"{runtime.name}: the image volume at {VOLUME_PATH} is writable")


def added_cost(result: dict[str, Any], step: str = "create+start") -> Optional[float]:
    """What the volume adds to *step*, p50 with it minus p50 without, ms."""
    with_it = dig(result, "rpcs", "volume", step, "p50_ms")
    without = dig(result, "rpcs", "plain", step, "p50_ms")
    return with_it - without if with_it is not None and without is not None else None


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The volume's own cost, against containerd's: it adds no more to
    create+start (p50) than it adds to containerd's. (The plain rows are
    ``bench/containers.py``'s business.)"""
    text = "what an image volume adds to create+start (p50) is no more than what it adds to containerd's"
    ours, theirs = added_cost(results.get("rktlet", {})), added_cost(results.get("containerd", {}))
    if ours is None or theirs is None:
        return [{"goal": text, "value": None, "shown": "not measured (needs both runtimes)", "status": "N/A"}]
    return [{"goal": text, "value": ours - theirs, "shown": f"{ours:+.2f} ms against {theirs:+.2f} ms",
             "status": "PASS" if ours <= theirs else "MISS"}]


def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    both = all(r in results for r in RUNTIMES)
    lines = header_lines("Image volume benchmark", report) + [
        f"  pods:       {report['pods']}, each with a plain container and one with the image mounted at "
        f"{VOLUME_PATH} (read-only)",
    ]
    lines += network_lines(report, runtimes)
    lines.append("")
    if runtimes:
        rows = [(f"{step} ({kind})", ("rpcs", kind, step)) for step in STEPS for kind in KINDS]
        latency_rows(lines, rows, results, runtimes, both)
        lines.append("")
        lines.append("the volume's cost, p50 with it minus p50 without, ms:")
        for name in runtimes:
            costs = [(step, added_cost(results[name], step)) for step in STEPS]
            lines.append(f"  {name:12}" + ", ".join(f"{step} {cost:+.2f}" for step, cost in costs if cost is not None))
        lines.append("  (RemoveContainer: rktlet unmounts after answering; containerd only with the pod)")
    lines += footer_lines(report)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Image volume benchmark: rktlet against containerd 2.x, in the same run.")
    parser.add_argument("--pods", type=int, default=20,
                        help="pods, each with a plain container and one with an image volume (default 20)")
    add_runtime_options(parser)
    args = parser.parse_args(argv)
    if args.pods < 1:
        parser.error("--pods must be positive")
    return run_comparison("bench/image_volumes.py", chosen_runtimes(args), measure, args, ("pods",), goals,
                          format_table)


if __name__ == "__main__":
    sys.exit(main())
