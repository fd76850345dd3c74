#!/usr/bin/env python3
"""Image pull benchmark: rktlet against containerd, measured in the same run.

A deterministic image of about 100 MB (gzip layers, ~10 of them, each with
several files: random bytes that do not compress, generated text that does,
and a directory of small files) is built, pushed to a local registry on
127.0.0.1, and pulled with the CRI ``PullImage`` call into an empty store,
alternately by rktlet and by containerd (Debian's containerd 1.6 with its CRI
plugin), each time by a freshly started daemon in new temporary directories.

For every pull it records:

* wall time of the ``PullImage`` call (containerd and rktlet both return only
  once the layers are unpacked);
* CPU time (user + system) of the daemon process during the call, from
  ``/proc/PID/stat``, children included (reaped ones through ``cutime`` and
  ``cstime``, live ones directly);
* the daemon's peak RSS during the call: ``VmRSS`` of ``/proc/PID/status``
  sampled about every 10 ms by a thread, and ``VmHWM`` after the call, the
  high-water mark having been reset (``/proc/PID/clear_refs``) just before it;
* the store's size on disk afterwards (a check that the image was unpacked).

It prints medians per runtime, the ratios rktlet/containerd and the project's
goals with PASS or MISS; ``--json`` prints all of it, every run included, as
JSON instead.  Progress goes to stderr.

Run it as root from the repository root with the test extras installed::

    sudo .venv/bin/python bench/pull_image.py [--runs 3] [--json]

It is never part of the test run (pytest only collects ``tests/``).
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import signal
import statistics
import sys
import threading
import time
from typing import Any, Callable, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

try:
    from common import (
        CLK_TCK,
        MB,
        RUNTIMES,
        chosen_runtimes,
        error_text,
        footer_lines,
        host_figures,
        print_report,
        progress,
        unwind_on_signal,
        versions_of,
    )
    from rktlet.cri.proto import pb, pb_grpc
    from harness.containerd import INSTALL_HINT, Containerd, containerd_binary
    from harness.daemon import Daemon
    from harness.images import BuiltImage, Dir, File, Layer, build_image, push_image
    from harness.registry import LocalRegistry, registry_available
except ImportError as _e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"bench/pull_image.py: cannot import what it needs ({_e}).\n"
        "Run it with the virtualenv that has rktlet and its test extras, e.g.\n"
        "    sudo .venv/bin/python bench/pull_image.py\n"
        "(create it with `sudo tests/run --co -q` or `python3 -m venv .venv && .venv/bin/pip install -e '.[test]'`).\n"
    )
    sys.exit(2)

#: The goals of the issue: rktlet's median pull time over containerd's, and rktlet's worst peak RSS.
TIME_RATIO_GOAL = 1.2
RSS_GOAL_MB = 150.0


# -- the image ------------------------------------------------------------------------


def _tokens(rng: random.Random, count: int = 1 << 16) -> list[str]:
    """``count`` (a power of two up to 65536) words with their separators, the
    alphabet of :func:`_text`: made-up words, numbers and punctuation."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(6000)})
    words += [str(n) for n in range(0, 100000, 37)] + ["=", "{", "}", "(", ")", "->", "#", "//", "0xffffffff"]
    separators = (" ",) * 9 + ("\n", ", ", ": ")
    return [rng.choice(words) + rng.choice(separators) for _ in range(count)]


def _text(rng: random.Random, tokens: list[str], size: int) -> bytes:
    """About ``size`` bytes of word salad in lines, like logs or docs (compresses ~2-3x)."""
    assert len(tokens) == 1 << 16
    out: list[str] = []
    total = 0
    while total < size:
        n = min(1 << 20, (size - total) // 4 + 16)
        picks = memoryview(rng.randbytes(2 * n)).cast("H")  # uniform over the 65536 tokens
        chunk = "".join(map(tokens.__getitem__, picks))
        out.append(chunk)
        total += len(chunk)
    return "".join(out).encode()[:size]


def _split(rng: random.Random, total: int, parts: int, spread: float = 0.5) -> list[int]:
    """``total`` split in ``parts`` unequal, positive pieces."""
    weights = [1.0 + rng.uniform(-spread, spread) for _ in range(parts)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


def bench_image(size_mb: float, layers: int, seed: int) -> tuple[BuiltImage, dict[str, Any]]:
    """A deterministic image of about ``size_mb`` MB of gzip layer blobs.

    Every layer has, under ``opt/layerNN/``: three or four files of random
    bytes (~65% of the layer's compressed size), two text files (~25%), and
    a directory of small files, random and text mixed (~10%).  Layer sizes
    vary by up to ±40% around the mean.
    """
    rng = random.Random(seed)
    tokens = _tokens(rng)
    sample = _text(random.Random(seed + 1), tokens, 1 << 20)
    text_ratio = len(sample) / len(gzip.compress(sample, compresslevel=6))
    budgets = _split(rng, int(size_mb * MB), layers, spread=0.4)
    built: list[Layer] = []
    files = 0
    for index, budget in enumerate(budgets):
        top = f"opt/layer{index:02d}"
        entries: list[Any] = [Dir(top), Dir(f"{top}/bin"), Dir(f"{top}/share"), Dir(f"{top}/small")]
        for k, size in enumerate(_split(rng, int(budget * 0.65), rng.choice((3, 4)))):
            entries.append(File(f"{top}/bin/blob{k}.bin", rng.randbytes(size), mode=0o755))
        for k, size in enumerate(_split(rng, int(budget * 0.25 * text_ratio), 2)):
            entries.append(File(f"{top}/share/doc{k}.txt", _text(rng, tokens, size)))
        small_budget = int(budget * 0.10)
        k = 0
        while small_budget > 0 and k < 400:
            size = rng.randint(1024, 48 * 1024)
            if k % 2:
                entries.append(File(f"{top}/small/f{k:03d}.dat", rng.randbytes(size)))
                small_budget -= size
            else:
                entries.append(File(f"{top}/small/f{k:03d}.txt", _text(rng, tokens, size)))
                small_budget -= int(size / text_ratio)
            k += 1
        files += sum(1 for e in entries if isinstance(e, File))
        built.append(Layer(entries, compression="gzip", created_by=f"ADD layer{index:02d} /opt/layer{index:02d}"))
    image = build_image(built, format="docker", cmd=["/bin/sh"])
    info = {
        "layers": len(built),
        "files": files,
        "compressed_bytes": sum(layer.size for layer in built),
        "uncompressed_bytes": sum(len(layer.tar) for layer in built),
        "layer_compressed_bytes": [layer.size for layer in built],
        "media_type": image.manifest_media_type,
        "layer_media_type": built[0].media_type if built else None,
        "image_id": image.image_id,
        "manifest_digest": image.manifest_digest,
        "seed": seed,
    }
    return image, info


# -- /proc measurements --------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode()
    return data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``, in seconds."""
    fields = _stat_fields(pid)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (through /proc/PID/task/TID/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (children included) of ``pid`` and each live descendant."""
    out = {pid: process_cpu(pid)}
    for child in descendants(pid):
        try:
            out[child] = process_cpu(child)
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two :func:`tree_cpu` snapshots.

    A child reaped in between is counted by its parent's cutime/cstime for its
    whole life, so what it had used at ``before`` is subtracted again.
    """
    total = 0.0
    for pid, cpu in after.items():
        total += cpu - before.get(pid, 0.0)
    for pid, cpu in before.items():
        if pid not in after:
            total -= cpu
    return total


def status_kb(pid: int, *keys: str) -> dict[str, int]:
    """Values in kB of ``keys`` (``VmRSS``, ``VmHWM``...) of /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the RSS high-water mark of ``pid`` (``clear_refs`` 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples ``VmRSS`` of a process every ``interval`` seconds.

    Also sums the RSS of its live descendants (list refreshed every tenth
    sample) into a process-tree peak.
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.tree_peak_kb = 0
        self.samples = 0
        self.children_seen: set[int] = set()
        self._stop_event = threading.Event()
        self._fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)

    def _rss_kb(self, fd: int) -> int:
        data = os.pread(fd, 16384, 0)
        start = data.index(b"VmRSS:") + 6
        return int(data[start : data.index(b"kB", start)])

    def run(self) -> None:
        kids: list[int] = []
        page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        try:
            while True:
                try:
                    rss = self._rss_kb(self._fd)
                except (OSError, ValueError):
                    break
                if self.samples % 10 == 0:
                    kids = descendants(self.pid)
                    self.children_seen.update(kids)
                tree = rss
                for kid in kids:
                    try:
                        with open(f"/proc/{kid}/statm") as f:
                            tree += int(f.read().split()[1]) * page_kb
                    except (OSError, ValueError, IndexError):
                        pass
                self.peak_kb = max(self.peak_kb, rss)
                self.tree_peak_kb = max(self.tree_peak_kb, tree)
                self.samples += 1
                if self._stop_event.wait(self.interval):
                    break
        finally:
            os.close(self._fd)

    def finish(self) -> None:
        self._stop_event.set()
        self.join()


def wait_idle(pid: int, quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait until ``pid`` has used no CPU for ``quiet`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    last = process_cpu(pid)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process_cpu(pid)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return


def disk_usage(path: str) -> int:
    """Bytes allocated under ``path`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


# -- the runtimes ---------------------------------------------------------------------------


class Server:
    """One started runtime: its PID, its store's directory, a CRI image client."""

    def __init__(self, name: str, pid: int, store: str, images: pb_grpc.ImageServiceStub, cleanup: Callable[[], None]):
        self.name = name
        self.pid = pid
        self.store = store
        self.images = images
        self.cleanup = cleanup


def start_rktlet(registry: LocalRegistry) -> Server:
    # info, not the test default debug: both daemons log at their usual level.
    daemon = Daemon(extra_args=["--log-level", "info"])
    try:
        daemon.start()
    except BaseException:
        daemon.cleanup()
        raise
    assert daemon.process is not None
    return Server("rktlet", daemon.process.pid, daemon.root, daemon.images(), daemon.cleanup)


def start_containerd(registry: LocalRegistry) -> Server:
    ctrd = Containerd(insecure_registries=[registry.host])
    ctrd.start()
    assert ctrd.pid is not None
    return Server("containerd", ctrd.pid, ctrd.root, ctrd.images(), ctrd.cleanup)


STARTERS: dict[str, Callable[[LocalRegistry], Server]] = {"rktlet": start_rktlet, "containerd": start_containerd}


def measure(runtime: str, registry: LocalRegistry, ref: str, image: BuiltImage, timeout: float) -> dict[str, Any]:
    """Start ``runtime`` afresh, pull ``ref`` once, measure, stop it."""
    server = STARTERS[runtime](registry)
    try:
        pid = server.pid
        wait_idle(pid)
        os.sync()
        time.sleep(0.2)
        rss_before_kb = status_kb(pid, "VmRSS")["VmRSS"]
        hwm_was_reset = reset_hwm(pid)
        sampler = RssSampler(pid)
        cpu_before = tree_cpu(pid)
        sampler.start()
        request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
        started = time.perf_counter()
        try:
            response = server.images.PullImage(request, timeout=timeout)
        finally:
            wall = time.perf_counter() - started
            cpu_after = tree_cpu(pid)
            sampler.finish()
        hwm_kb = status_kb(pid, "VmHWM")["VmHWM"]
        status = server.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=30)
        result = {
            "wall_s": wall,
            "cpu_s": cpu_delta(cpu_before, cpu_after),
            "rss_peak_sampled_mb": sampler.peak_kb * 1024 / MB,
            "vmhwm_mb": hwm_kb * 1024 / MB,
            "vmhwm_reset_before_pull": hwm_was_reset,
            "rss_peak_mb": max(sampler.peak_kb, hwm_kb if hwm_was_reset else 0) * 1024 / MB,
            "rss_before_mb": rss_before_kb * 1024 / MB,
            "tree_rss_peak_sampled_mb": sampler.tree_peak_kb * 1024 / MB,
            "children_seen": len(sampler.children_seen),
            "rss_samples": sampler.samples,
            "store_disk_mb": disk_usage(server.store) / MB,
            "image_ref": response.image_ref,
            "image_ref_matches": response.image_ref == image.image_id,
            "reported_size_mb": status.image.size / MB if status.HasField("image") else None,
        }
        return result
    finally:
        server.cleanup()


# -- report ---------------------------------------------------------------------------------

ROWS = (
    ("wall_s", "PullImage wall time (s)", "{:.3f}"),
    ("cpu_s", "daemon CPU time (s)", "{:.2f}"),
    ("rss_peak_mb", "daemon peak RSS (MB)", "{:.1f}"),
    ("rss_peak_sampled_mb", "  VmRSS sampled peak (MB)", "{:.1f}"),
    ("vmhwm_mb", "  VmHWM during pull (MB)", "{:.1f}"),
    ("rss_before_mb", "RSS before the pull (MB)", "{:.1f}"),
    ("tree_rss_peak_sampled_mb", "RSS incl. children (MB)", "{:.1f}"),
    ("store_disk_mb", "store on disk after (MB)", "{:.1f}"),
    ("children_seen", "child processes seen", "{:.0f}"),
)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, _, _ in ROWS:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = statistics.median(values)
    return out


def goals(med: dict[str, dict[str, float]], runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rk, cd = med.get("rktlet", {}), med.get("containerd", {})
    text = f"rktlet pull+unpack time at most {TIME_RATIO_GOAL}x containerd's"
    if "wall_s" in rk and cd.get("wall_s"):
        ratio = rk["wall_s"] / cd["wall_s"]
        out.append({"goal": text, "value": ratio, "limit": TIME_RATIO_GOAL, "shown": f"{ratio:.2f}x (medians)",
                    "status": "PASS" if ratio <= TIME_RATIO_GOAL else "MISS"})
    else:
        out.append({"goal": text, "value": None, "limit": TIME_RATIO_GOAL, "shown": "not measured", "status": "N/A"})
    text = f"daemon peak RSS below {RSS_GOAL_MB:.0f} MB during the pull"
    peaks = [r["rss_peak_mb"] for r in runs.get("rktlet", []) if "rss_peak_mb" in r]
    if peaks:
        worst = max(peaks)
        out.append({"goal": text, "value": worst, "limit": RSS_GOAL_MB, "shown": f"{worst:.1f} MB (rktlet, worst run)",
                    "status": "PASS" if worst < RSS_GOAL_MB else "MISS"})
    else:
        out.append({"goal": text, "value": None, "limit": RSS_GOAL_MB, "shown": "not measured", "status": "N/A"})
    return out


def format_table(report: dict[str, Any]) -> str:
    runtimes = report["runtimes"]
    med = report["medians"]
    info = report["image"]
    lines = [
        f"Image pull benchmark — {report['host']['cpus']} CPUs, kernel {report['host']['kernel']}, "
        f"load average {report['host']['loadavg_before']:.2f} before, {report['host']['loadavg_after']:.2f} after "
        "(other work on the machine skews the figures)",
        f"  containerd: {report['versions'].get('containerd', '-')}",
        f"  rktlet:     {report['versions'].get('rktlet', '-')} (Python {report['versions']['python']})",
        f"  image:      {report['ref']}: {info['layers']} gzip layers, {info['files']} files, "
        f"{info['compressed_bytes'] / MB:.1f} MB compressed, {info['uncompressed_bytes'] / MB:.1f} MB unpacked",
        f"  runs:       {report['runs_per_runtime']} per runtime, alternating, "
        "each a fresh daemon with an empty store; medians below",
        "",
    ]
    header = f"{'':28}" + "".join(f"{name:>14}" for name in runtimes)
    both = all(name in runtimes for name in RUNTIMES)
    if both:
        header += f"{'rktlet/containerd':>20}"
    lines.append(header)
    for key, label, fmt in ROWS:
        row = f"{label:28}"
        for name in runtimes:
            value = med.get(name, {}).get(key)
            row += f"{(fmt.format(value) if value is not None else '-'):>14}"
        if both:
            ratio = report["ratios"].get(key)
            row += f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>20}"
        lines.append(row)
    lines.append("")
    lines.append("Per run (wall s / CPU s / peak RSS MB):")
    for name in runtimes:
        cells = [
            f"{r['wall_s']:.3f} / {r['cpu_s']:.2f} / {r['rss_peak_mb']:.1f}" for r in report["runs"][name] if "wall_s" in r
        ]
        lines.append(f"  {name:11} " + ("; ".join(cells) if cells else "-"))
    for name in runtimes:
        for r in report["runs"][name]:
            if "wall_s" in r and not r["image_ref_matches"]:
                lines.append(f"  warning: {name} returned image_ref {r['image_ref']}, expected {info['image_id']}")
            if "wall_s" in r and not r["vmhwm_reset_before_pull"]:
                lines.append(f"  warning: {name}: could not reset VmHWM; it is the process's lifetime peak")
    lines += footer_lines(report)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="CRI PullImage benchmark: rktlet against containerd, in the same run.",
    )
    parser.add_argument("--runs", type=int, default=3, help="pulls per runtime (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (every run included)")
    parser.add_argument(
        "--size-mb", type=float, default=100.0, help="total size of the gzip layer blobs, MB (default 100)"
    )
    parser.add_argument("--layers", type=int, default=10, help="number of layers (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the image content (default 1)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="measure only this runtime (repeatable; default both)")
    parser.add_argument("--timeout", type=float, default=600.0, help="PullImage deadline in seconds (default 600)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.layers < 1 or args.size_mb <= 0:
        parser.error("--runs, --layers and --size-mb must be positive")
    runtimes = chosen_runtimes(args)

    if os.geteuid() != 0:
        progress("bench/pull_image.py: needs root (rktlet and containerd mount layers); run it with sudo")
        return 2
    if "containerd" in runtimes and containerd_binary() is None:
        progress(f"bench/pull_image.py: {INSTALL_HINT}")
        return 2
    why = registry_available()
    if why is not None:
        progress(f"bench/pull_image.py: cannot run the local registry: {why}")
        return 2

    # SIGTERM (e.g. from timeout(1)) unwinds through the cleanups like ^C.
    signal.signal(signal.SIGTERM, unwind_on_signal)

    versions = versions_of(runtimes)
    load_before = os.getloadavg()
    progress(f"building the image ({args.size_mb:g} MB, {args.layers} layers, seed {args.seed})...")
    built_at = time.monotonic()
    image, info = bench_image(args.size_mb, args.layers, args.seed)
    progress(
        f"  {info['compressed_bytes'] / MB:.1f} MB compressed, {info['uncompressed_bytes'] / MB:.1f} MB unpacked, "
        f"{info['files']} files, in {time.monotonic() - built_at:.1f}s"
    )

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
    errors: dict[str, list[str]] = {}
    with LocalRegistry() as registry:
        push_image(registry, "bench/pull", "latest", image)
        ref = registry.ref("bench/pull", "latest")
        progress(f"pushed {ref}")
        for i in range(args.runs):
            order = runtimes if i % 2 == 0 else list(reversed(runtimes))
            for name in order:
                progress(f"run {i + 1}/{args.runs}: {name}...")
                try:
                    result = measure(name, registry, ref, image, args.timeout)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    message = error_text(exc)
                    errors.setdefault(name, []).append(f"run {i + 1}: {message}")
                    progress(f"  {name} failed: {message}")
                    continue
                runs[name].append(result)
                progress(
                    f"  {result['wall_s']:.3f}s wall, {result['cpu_s']:.2f}s CPU,"
                    f" peak RSS {result['rss_peak_mb']:.1f} MB"
                    f" (sampled {result['rss_peak_sampled_mb']:.1f}, VmHWM {result['vmhwm_mb']:.1f}),"
                    f" store {result['store_disk_mb']:.1f} MB"
                )

    med = {name: medians(runs[name]) for name in runtimes if runs[name]}
    ratios: dict[str, float] = {}
    if "rktlet" in med and "containerd" in med:
        for key, _, _ in ROWS:
            a, b = med["rktlet"].get(key), med["containerd"].get(key)
            if a is not None and b:
                ratios[key] = a / b
    report = {
        "host": host_figures(load_before),
        "versions": versions,
        "ref": ref,
        "image": info,
        "runtimes": runtimes,
        "runs_per_runtime": args.runs,
        "runs": runs,
        "medians": med,
        "ratios": ratios,
        "goals": goals(med, runs),
        "errors": errors,
    }
    print_report(report, args.json, format_table)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
