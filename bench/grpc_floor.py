#!/usr/bin/env python3
"""The floor under rktlet's cheapest CRI calls: what the Python gRPC server
costs by itself, against rktlet and containerd 2.4.2, in one run.

A Go client (``bench/grpc_floor/``: the CRI's Go types and grpc-go, as the
kubelet and critest use them) times 2000 calls of ``ListImages`` (empty
store) and ``Version`` after 200 to warm up, against, in turn:

* **bare grpcio**: a Python grpcio server (the sync server with a thread
  pool, as rktlet runs it) whose ListImages answers an empty list and does
  nothing else — the floor any Python CRI server stands on;
* **bare grpc.aio**: the same handler on grpcio's asyncio server;
* **rktlet**, started as in the integration tests (``harness/daemon.py``);
* **containerd** 2.4.2 (``harness/containerd.py``; by default the build in
  the tools cache, see ``critest_benchmark.py``).

It prints p50/p95 per call and server, and the ratios to containerd. Run
it as root from the repository root (Go builds the client on first use,
from the module proxy or the module cache)::

    sudo .venv/bin/python bench/grpc_floor.py [--containerd PATH]

Everything runs in a network namespace with only ``lo``. Never part of the
test run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.containerd import Containerd  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.netns import enter_private_network  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE_DIR = os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")
CONTAINERD = os.path.join(CACHE_DIR, "containerd-v2.4.2", "containerd")
CALLS = ("ListImages", "Version")

# A bare server: ListImages answers an empty list; Version is left to the
# generated base class, which answers UNIMPLEMENTED (so it is not timed).
_BARE_SERVER = """
import asyncio, os, sys, time
from concurrent import futures
import grpc
from rktlet.cri.proto import pb, pb_grpc

class Images(pb_grpc.ImageServiceServicer):
    def ListImages(self, request, context):
        return pb.ListImagesResponse()

class AsyncImages(pb_grpc.ImageServiceServicer):
    async def ListImages(self, request, context):
        return pb.ListImagesResponse()

path, kind = sys.argv[1], sys.argv[2]
if kind == "sync":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    pb_grpc.add_ImageServiceServicer_to_server(Images(), server)
    server.add_insecure_port("unix:" + path)
    server.start()
    server.wait_for_termination()
else:
    async def main():
        server = grpc.aio.server()
        pb_grpc.add_ImageServiceServicer_to_server(AsyncImages(), server)
        server.add_insecure_port("unix:" + path)
        await server.start()
        await server.wait_for_termination()
    asyncio.run(main())
"""


def build_client(out_dir: str) -> str:
    """``go build`` of the Go client into *out_dir*; its path."""
    binary = os.path.join(out_dir, "grpc-floor")
    subprocess.run(["go", "build", "-o", binary, "."], cwd=os.path.join(HERE, "grpc_floor"), check=True,
                   env={**os.environ, "GOFLAGS": "-mod=mod"})
    return binary


def time_calls(client: str, socket: str, calls: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """``{call: (p50 ms, p95 ms)}`` from the Go client against *socket*."""
    out = subprocess.run([client, socket, *calls], capture_output=True, text=True, check=True, timeout=300).stdout
    figures = {}
    for line in out.splitlines():
        name, _, p50, _, _, p95, _ = line.split()
        figures[name] = (float(p50), float(p95))
    return figures


def bare(client: str, work: str, kind: str) -> dict[str, tuple[float, float]]:
    socket = os.path.join(work, f"bare-{kind}.sock")
    repo = os.path.dirname(HERE)
    server = subprocess.Popen([sys.executable, "-c", _BARE_SERVER, socket, kind], cwd=repo,
                              env={**os.environ, "PYTHONPATH": repo})
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(socket):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the bare {kind} server did not start")
            time.sleep(0.05)
        return time_calls(client, socket, ("ListImages",))
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containerd", default=CONTAINERD, help="the containerd 2.x program (default: %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/grpc_floor.py: run it as root (rktlet and containerd need it)", file=sys.stderr)
        return 2
    if not os.access(args.containerd, os.X_OK):
        print(f"bench/grpc_floor.py: {args.containerd} not found (see bench/README.md, critest_benchmark.py)",
              file=sys.stderr)
        return 2
    enter_private_network()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="grpc-floor-") as work:
        client = build_client(work)
        results["bare grpcio (sync)"] = bare(client, work, "sync")
        results["bare grpc.aio"] = bare(client, work, "aio")
        daemon = Daemon(extra_args=["--log-level", "info"])
        try:
            daemon.start()
            results["rktlet"] = time_calls(client, daemon.socket, CALLS)
        finally:
            daemon.cleanup()
        containerd = Containerd(binary=args.containerd)
        try:
            containerd.start()
            results["containerd 2.4.2"] = time_calls(client, containerd.socket, CALLS)
        finally:
            containerd.cleanup()
    reference = results["containerd 2.4.2"]
    print(f"{'server':22s} {'call':11s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50 ratio':>10s}")
    for server, figures in results.items():
        for call, (p50, p95) in figures.items():
            ratio = p50 / reference[call][0] if call in reference else float("nan")
            print(f"{server:22s} {call:11s} {p50:8.3f} {p95:8.3f} {ratio:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
