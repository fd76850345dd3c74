#!/usr/bin/env python3
"""Streaming benchmark (exec and port-forward): rktlet against containerd, in the same run.

Both runtimes get the same pod and container (``bench/common.py``: what the
kubelet sends for a BestEffort pod without ``shareProcessNamespace``, the
busybox-static image from a local registry, bridge + host-local + portmap
networks, one per runtime). The container runs busybox
``httpd -f -p 80 -h /``; at setup, an untimed ExecSync writes
``--size-mib`` MiB (default 100) from ``/dev/urandom`` to ``/big`` in it
with ``dd``. Then, for each runtime, freshly started:

1. **ExecSync latency**: ``--exec-sync-calls`` (default 50) CRI ``ExecSync``
   calls of ``true`` (timeout 10 s) through the gRPC API
   (``rktlet.cri.proto``), one after the other, after 5 untimed ones; each
   timed on the client around the blocking call. p50 and p95 with linear
   interpolation between ranks. Every call must return exit code 0.
2. **crictl exec fixed cost** (for information): ``--runs`` runs of
   ``crictl exec <ctr> true``, the crictl process's wall time (its own start,
   the ``Exec`` RPC, the streaming connection, runc, the exit status).
3. **exec throughput**: ``crictl --runtime-endpoint unix://SOCKET exec <ctr>
   cat /big`` with crictl's stdout sent to ``/dev/null``; the crictl
   process's wall time from spawn to exit; MB/s = bytes / 10^6 / seconds.
   One untimed run first reads crictl's stdout through a pipe and checks the
   byte count and the SHA-256 (compared with the port-forward's); the
   ``--runs`` timed runs (default 5) must exit 0. The median is the figure.
4. **port-forward throughput**: one ``crictl port-forward <pod> LOCAL:80``
   process (LOCAL a free port on 127.0.0.1); once it says "Forwarding from",
   an HTTP/1.0 ``GET /big`` through 127.0.0.1:LOCAL with a plain socket
   (``recv_into`` a 1 MiB buffer, the bytes discarded); the time from
   ``connect`` to the body's last byte (``Content-Length`` bytes; the time
   until the connection ends is recorded too: containerd 1.6 holds a
   forwarded stream open up to 1 s after the pod side closed, waiting for
   the client's side). One untimed download first (checks
   status 200, length and SHA-256), then ``--runs`` timed ones, each on a new
   connection (a new pair of streams in the same crictl session, as
   ``kubectl port-forward`` does). The median MB/s is the figure.

With each run the CPU used is recorded: the daemon process itself
(utime+stime of ``/proc/PID/stat``), and the runtime altogether — daemon and
monitors (rktlet's conmons; containerd's shims and pause processes), each
with the CPU of the children it reaped (``runc exec``, rktlet's exec reaper,
the ``cat`` itself) — and crictl's (``getrusage`` of the reaped child, or
``/proc`` for the long-lived port-forward). With ``--rktlet-log-level
debug``, rktlet's server-side time of each ``ExecSync`` is taken from its
log.

Goals (printed with PASS or MISS): rktlet's ExecSync p50 at most 1.2x
containerd's; exec throughput (median) at least 0.8x containerd's;
port-forward throughput (median) at least 0.8x containerd's.

Run it as root from the repository root with the test extras and the real
crictl installed::

    sudo .venv/bin/python bench/streaming.py [--runs 5] [--exec-sync-calls 50] [--size-mib 100] [--json]
    sudo .venv/bin/python bench/streaming.py --runtime rktlet --rktlet-log-level debug --rktlet-log /tmp/rktlet.log

Progress goes to stderr. Exit status 1 when a runtime failed (errors listed),
2 when something it needs is missing, 130 when interrupted, 0 otherwise
whether or not the goals are met. Cleanup is always done, as for the other
benchmarks (``bench/common.py``: containers and pods through the CRI,
daemons and left-over monitors by PID, bridges, IPAM state, cgroups, mounts,
temporary directories, ``ip_forward``, portmap's shared chains) and checked
afterwards; the crictl processes are killed by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
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
        CLK_TCK,
        MB,
        OUR_DIRS,
        REPO,
        RUNTIMES,
        STARTERS,
        BenchCgroups,
        Runtime,
        add_runtime_options,
        chosen_runtimes,
        dig,
        fmt_ms,
        fmt_ratio,
        footer_lines,
        header_lines,
        latency_rows,
        network_lines,
        percentile,
        prepare,
        progress,
        ratio_goal,
        ratio_of,
        run_comparison,
        server_samples,
        stat_fields,
        summary,
    )
    from rktlet.cri.proto import pb
    from harness.crictl import find_crictl
    from harness.daemon import free_port
    from harness.processes import stop_process
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/streaming.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/streaming.py\n"
    )
    sys.exit(2)

#: The goals.
EXEC_SYNC_RATIO_GOAL = 1.2
EXEC_THROUGHPUT_GOAL = 0.8
FORWARD_THROUGHPUT_GOAL = 0.8

#: The container: busybox httpd in the foreground serving the root
#: directory, so that /big is http://.../big.
WEB_COMMAND = ["httpd", "-f", "-p", "80", "-h", "/"]
BIG_PATH = "/big"
POD_PORT = 80
WARMUP_CALLS = 5
MIB = 1024 * 1024
RECV_BUFFER = 1 << 20


# -- CPU accounting --------------------------------------------------------------------------------------


def _ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) of ``pid`` in clock ticks; (0, 0) when gone."""
    fields = stat_fields(pid)
    try:
        return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return 0, 0


class CpuWindow:
    """CPU used by the runtime between :meth:`start` and :meth:`stop`: the
    daemon process alone, and daemon plus monitors with the children each
    reaped (monitors present at both ends)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.monitors = runtime.monitors()
        self.before = self._read()

    def _read(self) -> dict[int, tuple[int, int, Optional[int]]]:
        out = {}
        for pid in [self.runtime.pid, *self.monitors]:
            own, reaped = _ticks(pid)
            fields = stat_fields(pid)
            out[pid] = (own, reaped, int(fields[19]) if len(fields) > 19 else None)
        return out

    def stop(self) -> dict[str, float]:
        after = self._read()
        s = 1.0 / CLK_TCK
        daemon_own = (after[self.runtime.pid][0] - self.before[self.runtime.pid][0]) * s
        total = 0
        for pid, (own, reaped, started) in after.items():
            b = self.before[pid]
            if started is not None and started == b[2]:
                total += (own - b[0]) + (reaped - b[1])
        return {"daemon_cpu_s": daemon_own, "runtime_cpu_s": total * s}


def _sum(values: list[dict[str, float]], key: str) -> float:
    return sum(v[key] for v in values)


# -- crictl ------------------------------------------------------------------------------------------------


def socket_of(runtime: Runtime) -> str:
    """The CRI socket of a runtime started by ``common.STARTERS``."""
    path = getattr(runtime, "socket", None)
    if not path:
        path = {"rktlet": os.path.join(runtime.base, "run", "rktlet.sock"),
                "containerd": os.path.join(runtime.base, "containerd.sock")}[runtime.name]
    if not os.path.exists(path):
        raise RuntimeError(f"cannot find the {runtime.name} socket (looked for {path})")
    return path


class Crictl:
    """The real crictl against one runtime's socket, with an empty config
    file (so no ``/etc/crictl.yaml`` applies) and its stderr in a file."""

    def __init__(self, binary: str, runtime: Runtime, workdir: str, timeout: float, transport: str):
        self.binary = binary
        self.socket = socket_of(runtime)
        self.workdir = workdir
        self.timeout = timeout
        self.transport = transport
        self.config = os.path.join(workdir, "crictl.yaml")
        open(self.config, "w").close()

    def argv(self, *args: str) -> list[str]:
        endpoint = f"unix://{self.socket}"
        return [self.binary, "--config", self.config, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                "--timeout", f"{max(int(self.timeout), 1)}s", *args]

    def exec_argv(self, container_id: str, *cmd: str) -> list[str]:
        return self.argv("exec", "--transport", self.transport, container_id, *cmd)


def _kill(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM ``proc`` (by its PID), SIGKILL if it lingers, and reap it."""
    stop_process(proc, grace)


def _tail(path: str, limit: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-limit:].strip()
    except OSError:
        return ""


def crictl_exec(crictl: Crictl, runtime: Runtime, container_id: str, cmd: list[str], run_timeout: float,
                check: Optional[int] = None) -> dict[str, Any]:
    """One ``crictl exec``: its wall time, crictl's CPU, the runtime's CPU.
    With ``check`` (expected byte count), stdout comes through a pipe and its
    length and SHA-256 are returned; otherwise it goes to /dev/null."""
    err_path = os.path.join(crictl.workdir, "exec.err")
    digest = hashlib.sha256() if check is not None else None
    got = 0
    with open(err_path, "wb") as err:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = CpuWindow(runtime)
        started = time.perf_counter()
        proc = subprocess.Popen(crictl.exec_argv(container_id, *cmd), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if digest is not None else subprocess.DEVNULL, stderr=err)
        try:
            if digest is not None:
                assert proc.stdout is not None
                fd = proc.stdout.fileno()
                while True:
                    chunk = os.read(fd, RECV_BUFFER)
                    if not chunk:
                        break
                    got += len(chunk)
                    digest.update(chunk)
                proc.stdout.close()
            code = proc.wait(run_timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"crictl exec {' '.join(cmd)} did not end within {run_timeout:.0f}s")
        finally:
            _kill(proc)
        seconds = time.perf_counter() - started
        runtime_cpu = cpu.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"crictl exec {' '.join(cmd)} exited with {code}: {_tail(err_path)}")
    result = {"seconds": seconds,
              "crictl_cpu_s": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
              **runtime_cpu}
    if digest is not None:
        if got != check:
            raise RuntimeError(f"crictl exec {' '.join(cmd)}: {got} bytes on stdout, {check} expected "
                               f"({_tail(err_path)})")
        result["sha256"] = digest.hexdigest()
    return result


class PortForward:
    """A ``crictl port-forward POD LOCAL:80`` process, killed by PID at the end."""

    def __init__(self, crictl: Crictl, pod_id: str, port: int, timeout: float = 20.0):
        self.local = free_port()
        self.out_path = os.path.join(crictl.workdir, "port-forward.out")
        argv = crictl.argv("port-forward", "--transport", crictl.transport, pod_id, f"{self.local}:{port}")
        with open(self.out_path, "wb") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while "Forwarding from 127.0.0.1:" not in _tail(self.out_path, 100000):
                if self.process.poll() is not None:
                    raise RuntimeError(f"crictl port-forward exited with {self.process.returncode}: "
                                       f"{_tail(self.out_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"crictl port-forward did not listen within {timeout:.0f}s: "
                                       f"{_tail(self.out_path)}")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def cpu_s(self) -> float:
        own, _ = _ticks(self.process.pid)
        return own / CLK_TCK

    def close(self) -> None:
        _kill(self.process)


def http_get(port: int, path: str, expected: int, timeout: float, verify: bool) -> dict[str, Any]:
    """``GET path`` (HTTP/1.0) from 127.0.0.1:``port``; the body is counted
    (and hashed with ``verify``) and dropped.

    ``seconds``: from ``connect`` to the body's last byte (``Content-Length``
    bytes, as an HTTP client that has its body is done); ``eof_seconds``:
    until the connection ends (the server closes after the body; a runtime
    may hold the forwarded stream open a while after that)."""
    digest = hashlib.sha256() if verify else None
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    head = b""
    body = 0
    length: Optional[int] = None
    done_at: Optional[float] = None
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: rktlet-bench\r\n\r\n".encode())
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            if length is None:
                head += bytes(view[:n])
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    if len(head) > 65536:
                        raise RuntimeError("port-forward: no end of the HTTP header in 64 KiB")
                    continue
                rest = head[end + 4:]
                head = head[:end]
                status = head.split(b"\r\n", 1)[0].decode("latin-1")
                if len(status.split()) < 2 or status.split()[1] != "200":
                    raise RuntimeError(f"port-forward: GET {path} answered {status!r}")
                length = -1
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length != expected:
                    raise RuntimeError(f"port-forward: GET {path}: Content-Length {length}, {expected} expected")
                body += len(rest)
                if digest is not None:
                    digest.update(rest)
            else:
                body += n
                if digest is not None:
                    digest.update(view[:n])
            if done_at is None and body >= expected:
                done_at = time.perf_counter()
    eof = time.perf_counter()
    if length is None:
        raise RuntimeError(f"port-forward: GET {path}: connection closed after {len(head)} bytes of header")
    if body != expected or done_at is None:
        raise RuntimeError(f"port-forward: GET {path} gave {body} bytes, {expected} expected")
    result: dict[str, Any] = {"seconds": done_at - started, "eof_seconds": eof - started}
    if digest is not None:
        result["sha256"] = digest.hexdigest()
    return result


def download(forward: PortForward, runtime: Runtime, expected: int, timeout: float,
             verify: bool) -> dict[str, Any]:
    """One download through the port-forward, with the CPU of the runtime
    and of crictl."""
    crictl_before = forward.cpu_s()
    cpu = CpuWindow(runtime)
    result = http_get(forward.local, BIG_PATH, expected, timeout, verify)
    result.update(cpu.stop())
    result["crictl_cpu_s"] = forward.cpu_s() - crictl_before
    if forward.process.poll() is not None:
        raise RuntimeError(f"crictl port-forward exited with {forward.process.returncode}: {_tail(forward.out_path)}")
    return result


def throughput(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """MB/s (10^6 bytes) per run, median/min/max, and the CPU per run (medians)."""
    rates = [size / MB / r["seconds"] for r in runs]
    out: dict[str, Any] = {
        "n": len(runs),
        "median_mb_s": percentile(rates, 50),
        "min_mb_s": min(rates) if rates else None,
        "max_mb_s": max(rates) if rates else None,
        "median_s": percentile([r["seconds"] for r in runs], 50),
        "rates_mb_s": rates,
    }
    for key in ("daemon_cpu_s", "runtime_cpu_s", "crictl_cpu_s"):
        out[key] = percentile([r[key] for r in runs], 50)
    if runs and "eof_seconds" in runs[0]:
        out["median_eof_s"] = percentile([r["eof_seconds"] for r in runs], 50)
        out["median_mb_s_to_eof"] = percentile([size / MB / r["eof_seconds"] for r in runs], 50)
    return out


# -- one runtime ---------------------------------------------------------------------------------------------


def measure(name: str, opts: argparse.Namespace, cg: BenchCgroups, image_ref: str, **start_args: Any) -> dict[str, Any]:
    """Start ``name`` afresh, make the pod, run the three series, remove it
    and stop the runtime; always cleaned up."""
    runtime = STARTERS[name](opts, **start_args)
    result: dict[str, Any] = {"network": {"bridge": runtime.network.bridge, "subnet": runtime.network.subnet}}
    workdir = tempfile.mkdtemp(prefix=f"rkcbench-stream-{name}-", dir="/tmp")
    OUR_DIRS.append(workdir)
    forward: Optional[PortForward] = None
    size = opts.size_mib * MIB
    try:
        crictl = Crictl(opts.crictl, runtime, workdir, opts.timeout, opts.transport)
        driver = prepare(runtime, cg, image_ref, opts.timeout, result)  # pull, warm-up (not counted)
        pod = driver.new_pod("stream")
        cid, _ = driver.create(pod, "web", WEB_COMMAND)
        driver.start(cid)
        driver.wait_running([cid])

        progress(f"  writing {opts.size_mib} MiB to {BIG_PATH} in the container (ExecSync dd)...")
        started = time.perf_counter()
        r = runtime.stub.ExecSync(pb.ExecSyncRequest(
            container_id=cid, cmd=["dd", "if=/dev/urandom", f"of={BIG_PATH}", f"bs={MIB}", f"count={opts.size_mib}"],
            timeout=600), timeout=max(opts.timeout, 660))
        if r.exit_code != 0:
            raise RuntimeError(f"dd in the container exited with {r.exit_code}: {r.stderr.decode(errors='replace')}")
        result["setup_dd_s"] = time.perf_counter() - started
        r = runtime.stub.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["stat", "-c", "%s", BIG_PATH], timeout=10),
                                  timeout=opts.timeout)
        if r.exit_code != 0 or r.stdout.strip() != str(size).encode():
            raise RuntimeError(f"{BIG_PATH} in the container: stat says {r.stdout!r} {r.stderr!r}, {size} expected")
        runtime.idle(quiet=0.5)

        # 1. ExecSync latency.
        progress(f"  {opts.exec_sync_calls} ExecSync true...")
        request = pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10)
        for _ in range(WARMUP_CALLS):
            runtime.stub.ExecSync(request, timeout=opts.timeout)
        runtime.idle(quiet=0.5)
        log_start = runtime.log_offset()
        samples: list[float] = []
        cpu = CpuWindow(runtime)
        for _ in range(opts.exec_sync_calls):
            t0 = time.perf_counter()
            r = runtime.stub.ExecSync(request, timeout=opts.timeout)
            samples.append((time.perf_counter() - t0) * 1000)
            if r.exit_code != 0:
                raise RuntimeError(f"ExecSync true exited with {r.exit_code}: {r.stderr.decode(errors='replace')}")
        used = cpu.stop()
        result["exec_sync"] = {
            "latency": summary(samples),
            "samples_ms": samples,
            "daemon_cpu_ms_per_call": used["daemon_cpu_s"] * 1000 / len(samples),
            "runtime_cpu_ms_per_call": used["runtime_cpu_s"] * 1000 / len(samples),
        }
        server = server_samples(runtime.read_log(log_start, runtime.log_offset())).get("ExecSync")
        if server:
            result["exec_sync"]["server_side"] = summary(server)
            result["exec_sync"]["server_samples_ms"] = server
        progress(f"    p50 {result['exec_sync']['latency']['p50_ms']:.2f} ms, "
                 f"p95 {result['exec_sync']['latency']['p95_ms']:.2f} ms")
        runtime.idle(quiet=0.5)

        # 2. crictl exec true: the fixed cost of one crictl exec.
        progress(f"  {opts.runs} x crictl exec true...")
        crictl_exec(crictl, runtime, cid, ["true"], opts.run_timeout)  # untimed
        runs = [crictl_exec(crictl, runtime, cid, ["true"], opts.run_timeout) for _ in range(opts.runs)]
        result["crictl_exec_true"] = {"latency": summary([r["seconds"] * 1000 for r in runs]), "runs": runs}
        runtime.idle(quiet=0.5)

        # 3. crictl exec cat /big.
        progress(f"  crictl exec cat {BIG_PATH}: 1 checked + {opts.runs} timed...")
        check = crictl_exec(crictl, runtime, cid, ["cat", BIG_PATH], opts.run_timeout, check=size)
        runs = []
        for _ in range(opts.runs):
            runtime.idle(quiet=0.3)
            runs.append(crictl_exec(crictl, runtime, cid, ["cat", BIG_PATH], opts.run_timeout))
        result["exec_cat"] = {**throughput(runs, size), "runs": runs, "checked_run": check}
        progress(f"    median {result['exec_cat']['median_mb_s']:.1f} MB/s "
                 f"({', '.join(f'{x:.0f}' for x in result['exec_cat']['rates_mb_s'])})")
        runtime.idle(quiet=0.5)

        # 4. port-forward.
        progress(f"  crictl port-forward, GET {BIG_PATH}: 1 checked + {opts.runs} timed...")
        forward = PortForward(crictl, pod.id, POD_PORT)
        pf_check = download(forward, runtime, size, opts.run_timeout, verify=True)
        runs = []
        for _ in range(opts.runs):
            runtime.idle(quiet=0.3)
            runs.append(download(forward, runtime, size, opts.run_timeout, verify=False))
        result["port_forward"] = {**throughput(runs, size), "runs": runs, "checked_run": pf_check,
                                  "local_port": forward.local}
        forward.close()
        forward = None
        progress(f"    median {result['port_forward']['median_mb_s']:.1f} MB/s "
                 f"({', '.join(f'{x:.0f}' for x in result['port_forward']['rates_mb_s'])})")
        if check["sha256"] != pf_check["sha256"]:
            result.setdefault("problems", []).append(
                f"{BIG_PATH}: crictl exec cat and port-forward gave different contents "
                f"({check['sha256'][:16]} / {pf_check['sha256'][:16]})")

        driver.stop(cid, 0)  # httpd as PID 1 ignores SIGTERM
        driver.remove(cid)
        driver.remove_pod(pod)
    finally:
        if forward is not None:
            forward.close()
        try:
            runtime.cleanup()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- report ------------------------------------------------------------------------------------------------


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rk, cd = results.get("rktlet", {}), results.get("containerd", {})
    out: list[dict[str, Any]] = []

    text = f"ExecSync p50 at most {EXEC_SYNC_RATIO_GOAL:.1f}x containerd's"
    a, b = dig(rk, "exec_sync", "latency", "p50_ms"), dig(cd, "exec_sync", "latency", "p50_ms")
    out.append(ratio_goal(text, a, b, lambda r: r <= EXEC_SYNC_RATIO_GOAL,
                          lambda r: f"{r:.2f}x ({a:.2f} ms / {b:.2f} ms)"))

    for key, what, goal in (("exec_cat", "exec throughput", EXEC_THROUGHPUT_GOAL),
                            ("port_forward", "port-forward throughput", FORWARD_THROUGHPUT_GOAL)):
        text = f"{what} at least {goal:.1f}x containerd's"
        a, b = dig(rk, key, "median_mb_s"), dig(cd, key, "median_mb_s")
        out.append(ratio_goal(text, a, b, lambda r, goal=goal: r >= goal,
                              lambda r, a=a, b=b: f"{r:.2f}x ({a:.1f} MB/s / {b:.1f} MB/s, medians)"))
    return out


def format_table(report: dict[str, Any]) -> str:
    runtimes = [r for r in report["runtimes"] if r in report["results"]]
    results = report["results"]
    both = all(r in results for r in RUNTIMES)
    mib = report["size_mib"]
    lines = header_lines("Streaming benchmark (exec, port-forward)", report) + [
        f"  container:  {' '.join(WEB_COMMAND)}; {BIG_PATH} = {mib} MiB from /dev/urandom (dd via ExecSync)",
        f"  crictl:     {report['crictl']}, transport {report['transport']}; {report['runs']} timed runs of each "
        f"transfer after 1 checked one; {report['exec_sync_calls']} ExecSync calls after {WARMUP_CALLS} untimed",
    ]
    lines += network_lines(report, runtimes)
    lines.append("")
    if runtimes:
        rows = [
            (f"ExecSync true ({report['exec_sync_calls']} calls)", ("exec_sync", "latency")),
            ("crictl exec true (process wall time)", ("crictl_exec_true", "latency")),
        ]
        latency_rows(lines, rows, results, runtimes, both)
        rk_server = dig(results.get("rktlet", {}), "exec_sync", "server_side")
        if rk_server:
            client = dig(results["rktlet"], "exec_sync", "latency", "p50_ms")
            lines.append(f"  rktlet ExecSync server side (debug log): p50 {fmt_ms(rk_server['p50_ms'])} / "
                         f"p95 {fmt_ms(rk_server['p95_ms'])} ms; client p50 - server p50 = "
                         f"{client - rk_server['p50_ms']:.2f} ms (gRPC)")

        lines.append("")
        width = 40
        header = f"{f'throughput, MB/s ({mib} MiB)':{width}}" + "".join(
            f"{name + ' median':>20}{'min-max':>14}" for name in runtimes)
        if both:
            header += f"{'ratio':>9}"
        lines.append(header)
        for label, key in ((f"crictl exec cat {BIG_PATH} > /dev/null", "exec_cat"),
                           (f"crictl port-forward, GET {BIG_PATH}", "port_forward")):
            row = f"{label:{width}}"
            for name in runtimes:
                t = results[name].get(key) or {}
                med = t.get("median_mb_s")
                spread = f"{t['min_mb_s']:.0f}-{t['max_mb_s']:.0f}" if med is not None else "-"
                row += f"{(f'{med:.1f}' if med is not None else '-'):>20}{spread:>14}"
            if both:
                r = ratio_of(dig(results["rktlet"], key, "median_mb_s"), dig(results["containerd"], key, "median_mb_s"))
                row += f"{fmt_ratio(r):>9}"
            lines.append(row)
        row = f"{'  (same, until the connection ends)':{width}}"
        for name in runtimes:
            v = dig(results[name], "port_forward", "median_mb_s_to_eof")
            eof = dig(results[name], "port_forward", "median_eof_s")
            row += f"{(f'{v:.1f}' if v is not None else '-'):>20}{(f'{eof:.2f} s' if eof is not None else ''):>14}"
        lines.append(row)
        lines.append("  (port-forward time: connect to the body's last byte, Content-Length; the line above waits "
                     "for the runtime to end the stream)")

        lines.append("")
        lines.append("CPU, ms (medians per run; runtime = daemon + monitors, each with the children it reaped)")
        lines.append(f"  {'':46}" + "".join(f"{name:>14}" for name in runtimes) + (f"{'ratio':>9}" if both else ""))

        def cpu_row(label: str, path: tuple[str, ...]) -> None:
            values = [dig(results[name], *path) for name in runtimes]
            scale = 1000.0 if path[-1].endswith("_s") else 1.0
            values = [v * scale if v is not None else None for v in values]
            row = f"  {label:46}" + "".join(f"{(f'{v:.1f}' if v is not None else '-'):>14}" for v in values)
            if both:
                row += f"{fmt_ratio(ratio_of(values[0], values[1])):>9}"
            lines.append(row)

        cpu_row("ExecSync true, per call: daemon process", ("exec_sync", "daemon_cpu_ms_per_call"))
        cpu_row("ExecSync true, per call: runtime", ("exec_sync", "runtime_cpu_ms_per_call"))
        for key, label in (("exec_cat", f"exec cat {mib} MiB"), ("port_forward", f"port-forward {mib} MiB")):
            cpu_row(f"{label}: daemon process", (key, "daemon_cpu_s"))
            cpu_row(f"{label}: runtime", (key, "runtime_cpu_s"))
            cpu_row(f"{label}: crictl", (key, "crictl_cpu_s"))
    lines += footer_lines(report)
    return "\n".join(lines)


def _default_crictl() -> Optional[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "crictl")
    if os.access(beside, os.X_OK):
        return beside
    venv = os.path.join(REPO, ".venv", "bin", "crictl")
    if os.access(venv, os.X_OK):
        return venv
    return find_crictl()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="CRI streaming benchmark (ExecSync, crictl exec, crictl port-forward): rktlet against "
                    "containerd, in the same run.")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed runs of crictl exec true, exec cat and the port-forward download (default 5)")
    parser.add_argument("--exec-sync-calls", type=int, default=50, help="ExecSync calls timed (default 50)")
    parser.add_argument("--size-mib", type=int, default=100, help="size of the file streamed, MiB (default 100)")
    parser.add_argument("--transport", choices=("spdy", "websocket"), default="spdy",
                        help="crictl's streaming transport (default spdy, crictl's default; containerd 1.6 "
                             "refuses crictl's websocket with 403)")
    parser.add_argument("--crictl", default=None,
                        help="the crictl program (default: beside the interpreter, .venv/bin, $CRICTL, PATH, ~/go/bin)")
    parser.add_argument("--run-timeout", type=float, default=300.0,
                        help="limit for one crictl exec or one download, s (default 300)")
    add_runtime_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.exec_sync_calls < 1 or args.size_mib < 1:
        parser.error("--runs, --exec-sync-calls and --size-mib must be positive")

    def crictl_present() -> Optional[str]:
        args.crictl = args.crictl or _default_crictl()
        if not args.crictl or not os.access(args.crictl, os.X_OK):
            return ("bench/streaming.py: the real crictl is missing (sudo tests/run installs it, or "
                    "go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0; or give --crictl PATH)")
        return None

    return run_comparison("bench/streaming.py", chosen_runtimes(args), measure, args,
                          ("size_mib", "runs", "exec_sync_calls", "transport", "crictl"), goals, format_table,
                          requirements=crictl_present)


if __name__ == "__main__":
    sys.exit(main())
