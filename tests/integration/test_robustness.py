"""Robustness: thousands of random CRI requests against a real rktlet.

Every RPC of the RuntimeService and the ImageService gets requests built by
reflection over its request message's descriptor: hostile strings (empty,
``../../etc/passwd``, NUL, format directives, 4 KiB, unicode, newlines, real
ids of the test's pod, container and image and prefixes of them), extreme
and random integers, valid and unknown enum values (proto3 enums are open),
nested messages to depth 3, repeated fields of 0–3 items, maps of 0–2
entries.  Part of the requests start from a valid request (a real pod, a
running container, a pulled image) with a few fields mutated, so that the
engine is reached and not only the validation in front of it.

What must hold:

* no call ends with ``INTERNAL`` or ``UNKNOWN`` (an unexpected exception in
  rktlet becomes ``INTERNAL`` naming its type), nor ``UNAVAILABLE``;
* no call hangs: each has a deadline, and ``DEADLINE_EXCEEDED`` is only
  accepted where the request itself asks for a long wait (a stop's grace
  period, ExecSync's timeout) or on the streaming RPCs, which are read
  briefly and then cancelled;
* the daemon is alive at the end (``Version`` answers) and its log has no
  ``Traceback``;
* nothing new appears at the top of ``/``, ``/etc``, ``/var/lib`` or
  ``/run``, nor anywhere named with the test's escape marker.

Everything runs in a loopback-only network namespace (registry, rktlet, its
pods), so a random image name never reaches another machine.  Host paths
in requests (mounts, devices, log directories) are hostile strings or
paths under the test's temporary directory, and mounts of anything else are
read-only and private, so a random request cannot write to the host.

Size and seed come from the environment::

    RKTLET_FUZZ_REQUESTS=2000 (default)  RKTLET_FUZZ_SEED=1 (default)

A longer run, e.g. before a release (about 7 minutes on 2 cores; 3000 requests take about a minute)::

    RKTLET_FUZZ_REQUESTS=20000 RKTLET_FUZZ_SEED=$RANDOM \\
        .venv/bin/python -m pytest -q tests/integration/test_robustness.py

A failure lists the first distinct (rpc, message prefix) groups with an
abridged request, and the seed that reproduces it.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message

from rktlet.cri.proto import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from harness.containers import container_config
from harness.daemon import Daemon
from harness.images import busybox_image, push_image
from harness.netns import private_network
from harness.network import TestNetwork
from harness.pods import pod_config, remove_all_pods
from harness.processes import MONITOR_NAMES, reap_orphans
from harness.registry import LocalRegistry, registry_available

pytestmark = pytest.mark.root

REQUESTS = int(os.environ.get("RKTLET_FUZZ_REQUESTS", "2000"))
SEED = int(os.environ.get("RKTLET_FUZZ_SEED", "1"))

#: Part of hostile paths: whatever appears with it on the host escaped.
MARKER = "rktlet-fuzz-escape"

HOSTILE_STRINGS = [
    "", "../../etc/passwd", "/", "\x00", "a\x00b", "%s%n%x%d", "a" * 4096, "ünïcødé ☃ 𝄞", "line\nbreak", "\r\n",
    "a/b", "..", ".", " ", "-1", "0", "sha256:", "sha256:" + "0" * 64, "@", ":", "a:b@c", "*", "$(id)", "`id`",
    "\\", "'\"", "{}", "[", "null", f"../../{MARKER}", f"../../../../../../etc/{MARKER}", f"a/../../{MARKER}",
    "localhost/x", "127.0.0.1:1/x:y", "docker.io/library/busybox", "x" * 300 + ":y",
]  # fmt: skip

INT_EDGES = [0, 0, 1, -1, 2, 7, 99, -5, 1 << 31, -(1 << 31), (1 << 31) - 1, (1 << 32) - 1, (1 << 63) - 1, -(1 << 63)]
UINT_EDGES = [0, 0, 1, 2, 7, 99, (1 << 31) - 1, (1 << 32) - 1, (1 << 63) - 1, (1 << 64) - 1]
FLOAT_EDGES = [0.0, -1.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 0.5]

RANGES = {
    F.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), F.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    F.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), F.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),
    F.TYPE_INT64: (-(1 << 63), (1 << 63) - 1), F.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    F.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    F.TYPE_UINT32: (0, (1 << 32) - 1), F.TYPE_FIXED32: (0, (1 << 32) - 1),
    F.TYPE_UINT64: (0, (1 << 64) - 1), F.TYPE_FIXED64: (0, (1 << 64) - 1),
}  # fmt: skip

#: Calls whose request may legitimately ask for a wait longer than our deadline.
LONG_WAITS = {"StopContainer", "StopPodSandbox", "ExecSync", "RemovePodSandbox", "RemoveContainer"}
CALL_TIMEOUT = 10.0
SHORT_TIMEOUT = 3.0
STREAM_READ = 0.5
SENSITIVE_DIRS = ("/", "/etc", "/var/lib", "/run")


def _is_map(f) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _is_repeated(f) -> bool:
    return f.is_repeated


def _state_is(status_call, want: int) -> bool:
    """Whether the object a Status call asks about is in state *want* (a
    gone object is not)."""
    try:
        return status_call().status.state == want
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


@dataclass
class World:
    """The real objects of the test, which requests refer to."""

    tmp: str
    image: str
    image_id: str = ""
    pod_id: str = ""
    pod_config: pb.PodSandboxConfig | None = None
    container_id: str = ""
    pods: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [i for i in (self.pod_id, self.container_id, self.image_id) if i] + self.pods[-5:] + self.containers[-5:]


class Generator:
    """Random requests, by reflection over the descriptors."""

    def __init__(self, rnd: random.Random, world: World) -> None:
        self.rnd = rnd
        self.world = world

    # -- scalars ---------------------------------------------------------------

    def string(self, name: str) -> str:
        r, w = self.rnd, self.world
        if name.endswith("host_path") or name in ("log_directory",):
            return self.host_path()
        if name == "cgroup_parent":
            return r.choice(["", "/", "..", "../..", "a/b", f"{MARKER}.slice", "\x00", "%s%n", "/rktlet-fuzz", "x" * 300])
        if (name.endswith("_id") or name in ("id", "ref")) and r.random() < 0.6:
            return self.real_id(name)
        if name == "image" and r.random() < 0.6:
            return r.choice([w.image, w.image, w.image_id, w.image_id[:14], w.image.rsplit(":", 1)[0]])
        roll = r.random()
        if roll < 0.55:
            return r.choice(HOSTILE_STRINGS)
        if roll < 0.75:
            ids = w.ids()
            if ids:
                i = r.choice(ids)
                return r.choice([i, i[: r.randrange(1, len(i) + 1)], i.removeprefix("sha256:")[:12]])
        if roll < 0.9:
            return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789-._/:=") for _ in range(r.randrange(1, 20)))
        return "".join(chr(r.choice([r.randrange(1, 0xD800), r.randrange(0xE000, 0x110000)]))
                       for _ in range(r.randrange(1, 8)))

    def real_id(self, name: str) -> str:
        r, w = self.rnd, self.world
        if "image" in name:
            choices = [w.image_id, w.image]
        elif "sandbox" in name or name == "pod_sandbox_id":
            choices = [w.pod_id] + w.pods[-5:]
        elif "container" in name:
            choices = [w.container_id] + w.containers[-5:]
        else:
            choices = w.ids()
        choices = [c for c in choices if c] or [""]
        i = r.choice(choices)
        if r.random() < 0.2 and i:
            i = i[: r.randrange(1, len(i) + 1)]
        return i

    def host_path(self) -> str:
        r = self.rnd
        if r.random() < 0.5:
            return os.path.join(self.world.tmp, r.choice(["host", "host/file", "missing", "host/dir/../file", "logs/x"]))
        return r.choice(["", "../../etc/passwd", "\x00", "%s%n", "a" * 4096, "ünï", "a\nb", "a/b", "/", "/dev/null",
                         f"../../{MARKER}", "/proc/self/root", "/sys", "/dev/zero", "relative"])

    def scalar(self, f):
        r, t = self.rnd, f.type
        if t == F.TYPE_STRING:
            return self.string(f.name)
        if t == F.TYPE_BYTES:
            return r.choice([b"", b"\x00", b"\xff\xfe", r.randbytes(r.randrange(1, 64)), b"a" * 4096, b"ok\n"])
        if t == F.TYPE_BOOL:
            return r.random() < 0.5
        if t == F.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values]
            if r.random() < 0.75:
                return r.choice(values)
            return r.choice([99, -5, max(values) + 1, -1, 1 << 20])
        if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return r.choice(FLOAT_EDGES) if r.random() < 0.6 else r.uniform(-1e6, 1e6)
        lo, hi = RANGES[t]
        edges = UINT_EDGES if lo == 0 else INT_EDGES
        if r.random() < 0.6:
            return r.choice([e for e in edges if lo <= e <= hi])
        return r.randint(lo, hi) if r.random() < 0.3 else r.randint(max(lo, -100), 100)

    # -- messages --------------------------------------------------------------

    def fill(self, msg: Message, depth: int = 0, density: float = 0.5) -> Message:
        for f in msg.DESCRIPTOR.fields:
            if self.rnd.random() < density:
                self.set_field(msg, f, depth)
        return msg

    def set_field(self, msg: Message, f, depth: int) -> None:
        r = self.rnd
        msg.ClearField(f.name)
        if _is_map(f):
            key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            for _ in range(r.randrange(0, 3)):
                key = self.scalar(key_f)
                if value_f.message_type is not None:
                    if depth < 3:
                        self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_f)
        elif _is_repeated(f):
            target = getattr(msg, f.name)
            for _ in range(r.randrange(0, 4)):
                if f.message_type is not None:
                    if depth < 3:
                        self.fill(target.add(), depth + 1)
                else:
                    target.append(self.scalar(f))
        elif f.message_type is not None:
            if depth < 3:
                sub = getattr(msg, f.name)
                sub.SetInParent()
                self.fill(sub, depth + 1)
        else:
            setattr(msg, f.name, self.scalar(f))

    def mutate(self, msg: Message, depth: int = 0) -> None:
        """Change one field somewhere below *msg* (depth ≤ 3)."""
        fields = msg.DESCRIPTOR.fields
        if not fields:
            return
        f = self.rnd.choice(fields)
        if (f.message_type is not None and not _is_repeated(f) and depth < 3 and msg.HasField(f.name)
                and self.rnd.random() < 0.7):
            self.mutate(getattr(msg, f.name), depth + 1)
        else:
            self.set_field(msg, f, depth)

    # -- valid starting points ---------------------------------------------------

    def template(self, method: str) -> Message | None:
        r, w = self.rnd, self.world
        n = uuid.UUID(int=r.getrandbits(128)).hex[:8]
        if method == "RunPodSandbox":
            return pb.RunPodSandboxRequest(config=pod_config(
                name=f"fz{n}", uid=n, log_directory=os.path.join(w.tmp, "logs", n)))
        if method == "CreateContainer":
            pod = w.pod_config
            return pb.CreateContainerRequest(pod_sandbox_id=w.pod_id, sandbox_config=pod, config=container_config(
                f"c{n}", w.image, command=["sleep", "30"]))
        if method == "StartContainer" and w.containers:
            return pb.StartContainerRequest(container_id=r.choice(w.containers[-5:]))
        if method == "StopContainer" and w.containers:
            return pb.StopContainerRequest(container_id=r.choice(w.containers[-5:]), timeout=r.choice([0, 1]))
        if method == "ExecSync":
            return pb.ExecSyncRequest(container_id=w.container_id, cmd=r.choice([["true"], ["echo", "hi"], ["ls", "/"]]),
                                      timeout=2)
        if method in ("Exec", "Attach"):
            cls = getattr(pb, method + "Request")
            req = cls(container_id=w.container_id, stdout=True)
            if method == "Exec":
                req.cmd.append("true")
            return req
        if method == "PortForward":
            return pb.PortForwardRequest(pod_sandbox_id=w.pod_id, port=[80])
        if method == "UpdateContainerResources":
            return pb.UpdateContainerResourcesRequest(container_id=w.container_id, linux=pb.LinuxContainerResources(
                cpu_shares=512, memory_limit_in_bytes=256 << 20))
        if method == "UpdatePodSandboxResources":
            return pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=w.pod_id, resources=pb.LinuxContainerResources(
                cpu_shares=512))
        if method in ("ContainerStatus", "ContainerStats", "ReopenContainerLog"):
            return getattr(pb, method + "Request")(container_id=w.container_id)
        if method in ("PodSandboxStatus", "PodSandboxStats"):
            return getattr(pb, method + "Request")(pod_sandbox_id=w.pod_id)
        if method in ("PullImage", "ImageStatus"):
            return getattr(pb, method + "Request")(image=pb.ImageSpec(image=w.image))
        return None

    def request(self, method) -> tuple[Message, bool]:
        """A request for *method*; whether it is a mutated valid one."""
        cls = getattr(pb, method.input_type.name)
        if self.rnd.random() < 0.45:
            base = self.template(method.name)
            if base is not None:
                for _ in range(self.rnd.randrange(0, 3)):
                    self.mutate(base)
                return base, True
        return self.fill(cls(), density=self.rnd.choice([0.2, 0.5, 0.9])), False


def confine(msg: Message, tmp: str) -> None:
    """Make *msg* unable to write to the host outside *tmp*: host paths of
    mounts and devices that are not under *tmp* become read-only, private
    mounts; a log directory outside it is dropped."""
    name = msg.DESCRIPTOR.name
    under_tmp = lambda p: os.path.realpath(os.path.join("/", p)).startswith(tmp + "/")  # noqa: E731
    if name == "Mount" and msg.host_path and not (msg.host_path.startswith(tmp + "/") and under_tmp(msg.host_path)):
        msg.readonly = True
        msg.propagation = pb.PROPAGATION_PRIVATE
        msg.recursive_read_only = False
    if name == "Device" and msg.host_path and not msg.host_path.startswith("/dev/"):
        msg.permissions = "r"
    if name == "PodSandboxConfig" and msg.log_directory.startswith("/") and not (
            msg.log_directory.startswith(tmp + "/") and under_tmp(msg.log_directory)):
        msg.log_directory = os.path.join(tmp, "logs", "confined")
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is None:
            continue
        if _is_map(f):
            if f.message_type.fields_by_name["value"].message_type is not None:
                for v in getattr(msg, f.name).values():
                    confine(v, tmp)
        elif _is_repeated(f):
            for v in getattr(msg, f.name):
                confine(v, tmp)
        elif msg.HasField(f.name):
            confine(getattr(msg, f.name), tmp)


def protect(msg: Message, method: str, world: World) -> None:
    """Keep the test's own pod: a stop or removal naming it (or a prefix
    of its id) names another pod of the test instead."""
    if method in ("StopPodSandbox", "RemovePodSandbox"):
        i = msg.pod_sandbox_id
        if i and world.pod_id.startswith(i):
            msg.pod_sandbox_id = world.pods[-1] if world.pods else "f" * 64


def abridged(msg: Message, limit: int = 400) -> str:
    text = str(msg).replace("\n", " ")
    text = text.replace("a" * 64, "a…").replace("x" * 64, "x…")
    return text if len(text) <= limit else text[:limit] + "…"


def listing() -> dict[str, set[str]]:
    out = {}
    for d in SENSITIVE_DIRS:
        try:
            out[d] = set(os.listdir(d))
        except OSError:
            out[d] = set()
    return out


def escaped(paths=("/", "/etc", "/var/lib", "/run", "/tmp")) -> list[str]:
    """Entries named with the escape marker in the places an escape lands."""
    found = []
    for d in paths:
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if MARKER in n]
        except OSError:
            pass
    return found


# -- the run ---------------------------------------------------------------------


class Fuzz:
    def __init__(self, daemon: Daemon, world: World, rnd: random.Random) -> None:
        self.daemon = daemon
        self.world = world
        self.rnd = rnd
        self.gen = Generator(rnd, world)
        self.runtime = daemon.runtime()
        self.images = daemon.images()
        self.failures: list[tuple[str, str, str, str]] = []
        self.codes: dict[str, int] = {}
        self.generation = 0

    # The objects requests refer to, made again when a request removed them.

    def ensure(self) -> None:
        w = self.world
        try:
            status = self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=w.image)), timeout=10)
            if not status.image.id:
                self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=w.image)), timeout=60)
                status = self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=w.image)), timeout=10)
            w.image_id = status.image.id
            alive = bool(w.pod_id) and _state_is(
                lambda: self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=w.pod_id), timeout=10),
                pb.SANDBOX_READY)
            if not alive:
                self.generation += 1
                w.pod_config = pod_config(name=f"main{self.generation}", log_directory=os.path.join(w.tmp, "logs", "main"))
                w.pod_id = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=w.pod_config), timeout=60).pod_sandbox_id
                w.container_id = ""
            running = bool(w.container_id) and _state_is(
                lambda: self.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=w.container_id), timeout=10),
                pb.CONTAINER_RUNNING)
            if not running:
                self.generation += 1
                config = container_config(f"main{self.generation}", w.image, command=[
                    "sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"])
                w.container_id = self.runtime.CreateContainer(pb.CreateContainerRequest(
                    pod_sandbox_id=w.pod_id, config=config, sandbox_config=w.pod_config), timeout=60).container_id
                self.runtime.StartContainer(pb.StartContainerRequest(container_id=w.container_id), timeout=60)
        except grpc.RpcError as e:
            self.failures.append(("(setup)", e.code().name, e.details() or "", "recreating the test's objects"))

    def call(self, method, service: str, request: Message) -> None:
        stub = self.runtime if service == "RuntimeService" else self.images
        rpc = getattr(stub, method.name)
        name = method.name
        timeout = CALL_TIMEOUT
        if name in ("ExecSync",) and 0 < request.timeout < CALL_TIMEOUT:
            timeout = request.timeout + 5
        long_wait = name in LONG_WAITS and (
            getattr(request, "timeout", 0) >= timeout - 1 or getattr(request, "timeout", 0) < 0
            or name in ("ExecSync", "RemovePodSandbox", "RemoveContainer"))
        if name in ("StopContainer", "StopPodSandbox", "RemovePodSandbox", "RemoveContainer", "ExecSync"):
            timeout = min(timeout, SHORT_TIMEOUT) if long_wait else timeout
        try:
            if method.server_streaming:
                # Read briefly: a watch (GetContainerEvents) never ends by itself.
                call = rpc(request, timeout=CALL_TIMEOUT)
                timer = threading.Timer(STREAM_READ, call.cancel)
                timer.start()
                try:
                    for _ in call:
                        pass
                finally:
                    timer.cancel()
                    call.cancel()
            else:
                response = rpc(request, timeout=timeout)
                self.learn(name, response)
            self.codes["OK"] = self.codes.get("OK", 0) + 1
        except grpc.RpcError as e:
            code = e.code()
            self.codes[code.name] = self.codes.get(code.name, 0) + 1
            if code == grpc.StatusCode.CANCELLED and method.server_streaming:
                return
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and long_wait:
                return
            if (code == grpc.StatusCode.UNAVAILABLE and name == "PullImage"
                    and (e.details() or "").startswith(("request to ", "cannot reach "))):
                return  # a registry this loopback-only namespace cannot reach: the right answer
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self.failures.append((name, code.name, e.details() or "", abridged(request)))

    def learn(self, name: str, response: Message) -> None:
        if name == "RunPodSandbox" and response.pod_sandbox_id:
            self.world.pods.append(response.pod_sandbox_id)
        elif name == "CreateContainer" and response.container_id:
            self.world.containers.append(response.container_id)

    def run(self, n: int) -> None:
        methods = [(m, s.name) for s in (RUNTIME_SERVICE, IMAGE_SERVICE) for m in s.methods]
        self.ensure()
        for i in range(n):
            method, service = self.rnd.choice(methods)
            request, _ = self.gen.request(method)
            confine(request, self.world.tmp)
            protect(request, method.name, self.world)
            self.call(method, service, request)
            if method.name in ("StopContainer", "RemoveContainer", "RemoveImage", "StopPodSandbox",
                               "RemovePodSandbox", "UpdateContainerResources") or i % 100 == 99:
                self.ensure()
            # Keep the machine's load bounded: the test's extra pods and
            # containers go now and then.
            if len(self.world.pods) > 12:
                self.drop_extra()

    def drop_extra(self) -> None:
        w = self.world
        for pod_id in w.pods:
            for rpc, req in (("StopPodSandbox", pb.StopPodSandboxRequest), ("RemovePodSandbox", pb.RemovePodSandboxRequest)):
                try:
                    getattr(self.runtime, rpc)(req(pod_sandbox_id=pod_id), timeout=30)
                except grpc.RpcError as e:
                    if e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        self.failures.append((rpc, e.code().name, e.details() or "", f"(cleanup of {pod_id[:13]})"))
        w.pods.clear()
        w.containers = [c for c in w.containers[-5:]]


def report(failures: list[tuple[str, str, str, str]], seed: int) -> str:
    groups: OrderedDict[tuple[str, str], list] = OrderedDict()
    for rpc, code, message, request in failures:
        key = (rpc, f"{code}: {message[:80]}")
        groups.setdefault(key, []).append((message, request))
    lines = [f"{len(failures)} bad answers in {len(groups)} groups (RKTLET_FUZZ_SEED={seed}):"]
    for (rpc, prefix), requests in list(groups.items())[:10]:
        message, request = requests[0]
        lines.append(f"  {rpc} ×{len(requests)}: {prefix}\n      e.g. {message[:300]!r}\n      for {request}")
    return "\n".join(lines)


def test_random_requests_never_break_the_daemon():
    reason = registry_available()
    if reason is not None:
        pytest.skip(f"local registry unavailable: {reason}")
    rnd = random.Random(SEED)
    tmp = tempfile.mkdtemp(prefix="rktlet-fuzz-", dir="/tmp")
    os.makedirs(os.path.join(tmp, "host", "dir"))
    with open(os.path.join(tmp, "host", "file"), "w") as f:
        f.write("x\n")
    before = listing()
    started = time.monotonic()
    fuzz: Fuzz | None = None
    try:
        with private_network():
            registry = LocalRegistry()
            try:
                registry.start()
                push_image(registry, "busybox", "latest", busybox_image("docker"))
                daemon = Daemon()
                network = TestNetwork(daemon.cni_conf_dir)
                network.write()
                try:
                    daemon.start()
                    world = World(tmp=tmp, image=registry.ref("busybox"))
                    fuzz = Fuzz(daemon, world, rnd)
                    fuzz.run(REQUESTS)
                    version = daemon.runtime().Version(pb.VersionRequest(), timeout=10)
                    assert version.runtime_name
                    assert daemon.process is not None and daemon.process.poll() is None, "rktlet exited"
                    log = daemon.log()
                finally:
                    remove_all_pods(daemon)
                    daemon.cleanup()
                    reap_orphans(MONITOR_NAMES)
                    network.cleanup()
            finally:
                registry.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"{REQUESTS} requests in {elapsed:.1f}s; codes: {fuzz.codes if fuzz else {}}")
    after = listing()
    assert fuzz is not None
    assert not fuzz.failures, report(fuzz.failures, SEED)
    tracebacks = [i for i, line in enumerate(log.splitlines()) if "Traceback" in line]
    if tracebacks:
        lines = log.splitlines()
        first = tracebacks[0]
        pytest.fail(f"{len(tracebacks)} tracebacks in the daemon's log; the first:\n"
                    + "\n".join(lines[max(0, first - 3): first + 30]))
    new = {d: sorted(after[d] - before[d]) for d in SENSITIVE_DIRS if after[d] - before[d]}
    assert not new, f"new entries appeared outside the test's directories: {new}"
    assert not escaped(), f"files named after a hostile path appeared: {escaped()}"
