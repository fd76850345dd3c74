"""Run cri-tools' critest against a real rktlet, fully offline.

``python -m tests.conformance.critest_run --summary OUT.json [options]``

In one process, as root:

1. enters a new, empty network namespace (loopback only) — nothing this run
   starts can reach another machine, whatever a component tries (rktlet falls
   back from a failing mirror to the upstream registry, and its pods' CNI
   network, the port mappings and host-network pods all live in this
   namespace, which disappears with the process);
2. starts a local registry (``docker-registry``) and pushes every image
   critest pulls (:mod:`harness.critest_images`) under its upstream
   path;
3. starts rktlet (:class:`harness.daemon.Daemon`) with a CNI bridge
   network and ``--registry-mirror HOST=http://127.0.0.1:PORT`` for every
   upstream host, and NRI on a socket in the work directory;
4. runs critest with a Ginkgo JSON report (``-nri-socket``: the NRI specs
   run too), then (full runs only) the
   Streaming specs once more with ``-websocket-exec -websocket-attach
   -websocket-portforward``;
5. removes every pod, stops rktlet and the registry by PID, removes the
   temporary directories and the shared memory segments critest's HostIpc
   specs create on the host (``ipcmk``; critest never removes them);
6. writes a summary (counts, failed specs with message and location, run
   time, rktlet log tail) to ``--summary``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

CACHE_DIR = os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")
CRITEST_VERSION = "v1.37.0"
CRITEST = os.path.join(CACHE_DIR, f"critest-{CRITEST_VERSION}")
#: The Ginkgo CLI critest's ``-parallel`` runs (tests/tools/build-clients ginkgo).
GINKGO = os.path.join(CACHE_DIR, f"ginkgo-critest-{CRITEST_VERSION}")

#: Specs that cannot pass offline, as Ginkgo ``-skip`` regular expressions.
SKIPS: tuple[str, ...] = (
    # Pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…, an
    # upstream image pinned by its manifest digest: no locally built image can
    # have that digest, so it cannot be served offline.
    r"public image with digest should be pulled and removed",
)

#: The second pass: the streaming specs again, over WebSocket instead of SPDY.
WEBSOCKET_FLAGS = ("-websocket-exec", "-websocket-attach", "-websocket-portforward")

def shm_ids() -> set[str]:
    """IDs of the System V shared memory segments of this IPC namespace."""
    try:
        with open("/proc/sysvipc/shm") as f:
            return {line.split()[1] for line in list(f)[1:] if line.strip()}
    except OSError:
        return set()


def remove_new_critest_segments(before: set[str]) -> None:
    """Remove the 1 MiB segments critest's ``ipcmk -M 1048576`` made (and
    only segments that appeared during the run, nobody attached)."""
    try:
        with open("/proc/sysvipc/shm") as f:
            rows = [line.split() for line in list(f)[1:] if line.strip()]
    except OSError:
        return
    for row in rows:
        shmid, size, nattch = row[1], row[3], row[6]
        if shmid not in before and size == "1048576" and nattch == "0":
            subprocess.run(["ipcrm", "-m", shmid], capture_output=True)


def critest_command(critest: str, socket: str, json_report: str, parallel: int = 1,
                    focus: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    """The critest command line for a rktlet serving on *socket*."""
    argv = [
        critest,
        f"--runtime-endpoint=unix://{socket}",
        f"--image-endpoint=unix://{socket}",
        f"-ginkgo.json-report={json_report}",
        "-ginkgo.no-color",
        "-ginkgo.timeout=30m",
    ]
    argv += [f"-ginkgo.skip={s}" for s in SKIPS]
    argv += [f"-ginkgo.focus={f}" for f in focus]
    if parallel > 1:
        argv.append(f"-parallel={parallel}")
    return argv + list(extra)


def _failure(spec: dict[str, Any]) -> dict[str, str]:
    failure = spec.get("Failure") or {}
    loc = failure.get("Location") or {}
    node_loc = (failure.get("FailureNodeLocation") or {})
    return {
        "message": (failure.get("Message") or "").strip(),
        "location": f"{loc.get('FileName', '?')}:{loc.get('LineNumber', '?')}",
        "node": f"{failure.get('FailureNodeType', '')} {node_loc.get('FileName', '')}:{node_loc.get('LineNumber', '')}".strip(),
    }


def spec_name(spec: dict[str, Any]) -> str:
    texts = [t for t in spec.get("ContainerHierarchyTexts") or [] if t]
    if spec.get("LeafNodeText"):
        texts.append(spec["LeafNodeText"])
    return " ".join(texts) or spec.get("LeafNodeType", "?")


def parse_report(path: str) -> dict[str, Any]:
    """Counts and failures from a Ginkgo JSON report."""
    with open(path) as f:
        suites = json.load(f)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "pending": 0, "other": 0}
    failures, skips = [], []
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            state = spec.get("State", "")
            if spec.get("LeafNodeType") != "It":
                # BeforeSuite/AfterSuite and the like: only count their failures.
                if state not in ("passed", "skipped"):
                    counts["failed"] += 1
                    failures.append({"spec": f"[{spec.get('LeafNodeType')}]", "state": state, **_failure(spec)})
                continue
            if state == "passed":
                counts["passed"] += 1
            elif state == "skipped":
                counts["skipped"] += 1
                msg = ((spec.get("Failure") or {}).get("Message") or "").strip()
                if msg:  # skipped by the spec itself, with a reason (not by -skip)
                    skips.append({"spec": spec_name(spec), "reason": msg})
            elif state == "pending":
                counts["pending"] += 1
            elif state in ("failed", "panicked", "interrupted", "aborted", "timedout"):
                counts["failed"] += 1
                failures.append({"spec": spec_name(spec), "state": state,
                                 "runtime_s": round((spec.get("RunTime") or 0) / 1e9, 1), **_failure(spec)})
            else:
                counts["other"] += 1
    return {"counts": counts, "failures": failures, "skips_with_reason": skips}


def run_pass(critest: str, socket: str, work: str, name: str, parallel: int,
             focus: Sequence[str], extra: Sequence[str]) -> dict[str, Any]:
    """One critest run against *socket*; its parsed report (plus timing)."""
    report = os.path.join(work, f"report-{name}.json")
    log_path = os.path.join(work, f"critest-{name}.log")
    argv = critest_command(critest, socket, report, parallel, focus, extra)
    result: dict[str, Any] = {"name": name, "command": argv}
    env = dict(os.environ)
    if parallel > 1 and os.access(GINKGO, os.X_OK):
        # -parallel runs `ginkgo` from PATH: the cached one, under that name.
        bin_dir = os.path.join(work, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        if not os.path.lexists(os.path.join(bin_dir, "ginkgo")):
            os.symlink(GINKGO, os.path.join(bin_dir, "ginkgo"))
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
        try:
            result["exit"] = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    result["critest_s"] = round(time.monotonic() - t0, 1)
    with open(log_path, errors="replace") as f:
        result["log_tail"] = f.read()[-6000:]
    if os.path.exists(report):
        result.update(parse_report(report))
    else:
        result["error"] = "critest wrote no report"
    return result


def run(summary_path: str, parallel: int = 1, focus: Sequence[str] = (), extra: Sequence[str] = (),
        isolate: bool = True, keep: bool = False, critest: str = CRITEST, websocket: bool = True,
        handler: str = "") -> int:
    """One critest run; *handler* (``NAME=RUNTIME``): rktlet gets that
    runtime handler and critest runs every pod with it (``-runtime-handler``)."""
    # Imported here: the tests package must be importable from the repo root.
    from rktlet.oci.procwatch import become_subreaper
    from harness.critest_images import UPSTREAM_HOSTS, push_critest_images
    from harness.daemon import Daemon
    from harness.network import TestNetwork
    from harness.pods import remove_all_pods
    from harness.processes import reap_orphans
    from harness.netns import enter_private_network
    from harness.registry import LocalRegistry

    def on_term(signum, frame):  # run the finally clauses on SIGTERM too
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    become_subreaper()
    if isolate:
        enter_private_network()
    summary: dict[str, Any] = {"critest": critest, "isolated_network": isolate, "parallel": parallel,
                               "skips": list(SKIPS), "focus": list(focus)}
    segments_before = shm_ids()
    work = tempfile.mkdtemp(prefix="critest-", dir="/tmp")
    registry = LocalRegistry()
    daemon = network = None
    rc = 1
    try:
        t0 = time.monotonic()
        registry.start()
        images = push_critest_images(registry)
        summary["images"] = sorted({i.reference for i in images})
        summary["setup_s"] = round(time.monotonic() - t0, 1)

        mirrors: list[str] = []
        for host in UPSTREAM_HOSTS:
            mirrors += ["--registry-mirror", f"{host}={registry.url}"]
        # NRI: rktlet serves plugins here and critest's NRI specs connect to it.
        nri_socket = os.path.join(work, "nri", "nri.sock")
        handler_args = ["--runtime-handler", handler] if handler else []
        daemon = Daemon(extra_args=mirrors + ["--nri-socket", nri_socket] + handler_args)
        if handler:
            extra = [*extra, f"-runtime-handler={handler.partition('=')[0]}"]
            summary["runtime_handler"] = handler
        network = TestNetwork(daemon.cni_conf_dir, name=f"critest-{os.getpid()}")
        network.write()
        daemon.start()

        # critest reads a crictl config (/etc/crictl.yaml by default): give it
        # its own, naming the same endpoints as the flags.
        config = os.path.join(work, "crictl.yaml")
        with open(config, "w") as f:
            f.write(f"runtime-endpoint: unix://{daemon.socket}\nimage-endpoint: unix://{daemon.socket}\n")
        passes = [("", parallel, list(focus), [f"--config={config}", f"-nri-socket={nri_socket}", *extra])]
        if websocket and not focus and not extra:
            passes.append(("websocket", 1, ["Streaming"], [f"--config={config}", *WEBSOCKET_FLAGS]))
        summary.update({"passes": [], "counts": {}, "failures": [], "skips_with_reason": []})
        for name, nodes, pass_focus, pass_extra in passes:
            result = run_pass(critest, daemon.socket, work, name or "main", nodes, pass_focus, pass_extra)
            summary["passes"].append(result)
            prefix = f"[{name}] " if name else ""
            for key, value in result.get("counts", {}).items():
                summary["counts"][key] = summary["counts"].get(key, 0) + value
            summary["failures"] += [{**f, "spec": prefix + f["spec"]} for f in result.get("failures", [])]
            if not name:
                summary["skips_with_reason"] = result.get("skips_with_reason", [])
            if "error" in result:
                summary["error"] = f"{name or 'main'} pass: {result['error']}"
        summary["critest_s"] = round(sum(p["critest_s"] for p in summary["passes"]), 1)
        summary["critest_log_tail"] = summary["passes"][0].get("log_tail", "")
        rc = 1 if "error" in summary else 0
        log_text = daemon.log()
        summary["mirror_fallbacks"] = [line for line in log_text.splitlines() if "trying the next source" in line]
        summary["daemon_tracebacks"] = log_text.count("Traceback (most recent call last)")
    except BaseException as exc:  # noqa: BLE001 — reported in the summary
        summary["error"] = f"{type(exc).__name__}: {exc}"
        rc = 2
    finally:
        if daemon is not None:
            try:
                remove_all_pods(daemon)
            except Exception as exc:  # noqa: BLE001
                summary["cleanup_error"] = f"removing pods: {exc}"
            summary["daemon_log_tail"] = daemon.log()[-4000:]
            if keep:
                shutil.copy(daemon.log_path, os.path.join(work, "daemon.log"))
            daemon.cleanup()
        if network is not None:
            network.cleanup()
        registry.stop()
        reap_orphans()
        remove_new_critest_segments(segments_before)
        if keep:
            summary["work_dir"] = work
        else:
            shutil.rmtree(work, ignore_errors=True)
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", required=True, help="where to write the JSON summary")
    parser.add_argument("--parallel", type=int, default=1,
                        help=f"critest -parallel=N (runs ginkgo: {GINKGO} or from PATH)")
    parser.add_argument("--focus", action="append", default=[], help="-ginkgo.focus regexp (repeatable)")
    parser.add_argument("--no-isolate", action="store_true", help="stay in this network namespace")
    parser.add_argument("--keep", action="store_true", help="keep critest's log, report and the daemon log")
    parser.add_argument("--no-websocket", action="store_true",
                        help="skip the second pass (the Streaming specs over WebSocket)")
    parser.add_argument("--critest", default=CRITEST)
    parser.add_argument("--runtime-handler", default="", metavar="NAME=RUNTIME",
                        help="give rktlet this runtime handler and run critest's pods with it "
                             "(e.g. runc-idmap=/var/cache/rktlet-test-tools/runc-v1.5.3 for the UserNamespaces specs)")
    parser.add_argument("extra", nargs="*", help="more critest arguments (after --)")
    args = parser.parse_args(argv)
    return run(args.summary, args.parallel, args.focus, args.extra, not args.no_isolate, args.keep, args.critest,
               not args.no_websocket, args.runtime_handler)


if __name__ == "__main__":
    sys.exit(main())
