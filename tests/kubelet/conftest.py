"""A real standalone kubelet (v1.37) driving a real rktlet.

No API server: the kubelet runs static pods from a manifest directory and is
reached through its own HTTPS API on 127.0.0.1 (self-signed certificate,
anonymous access, AlwaysAllow).  Everything it writes lives in a temporary
dir (root dir, cert dir, manifests, pod logs, volume plugin dir), except the
few host-wide things a kubelet always touches, which are put back at the end:
the kernel tunables it sets at start (``vm.overcommit_memory``,
``kernel.panic``...) and the ``/var/log/containers`` symlinks.

Images are pushed to a local registry and named ``registry.k8s.io/...`` in
the manifests; rktlet pulls them from that registry through
``--registry-mirror registry.k8s.io=http://127.0.0.1:PORT``. The registry,
rktlet, the kubelet and the pods run in a loopback-only network namespace
(:mod:`harness.netns`), so nothing can reach another machine.

One registry, one rktlet and one kubelet per test module.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.crictl import Crictl, find_crictl
from harness.daemon import Daemon, free_port
from harness.images import busybox_image, push_image, web_image
from harness.netns import private_network
from harness.network import TestNetwork
from harness.pods import remove_everything
from harness.processes import MONITOR_NAMES, read_log, reap_orphans, spawn_logged, stop_process
from harness.registry import LocalRegistry, registry_available

KUBELET_BINARY = os.environ.get("RKTLET_KUBELET") or os.path.join(
    os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools"), "kubelet-v1.37.2")
#: The registry host the manifests name; mirrored to the local registry.
UPSTREAM = "registry.k8s.io"
BUSYBOX = f"{UPSTREAM}/rktlet-test/busybox:1.0"
WEB = f"{UPSTREAM}/rktlet-test/web:1.0"
NODE_NAME = "rktlet-kubelet-test"
#: Maximum crash-loop back-off (kubelet ``crashLoopBackOff.maxContainerRestartPeriod``);
#: short, so restart tests do not wait 10 s, 20 s, 40 s...
MAX_BACKOFF = "3s"

#: Kernel tunables the kubelet sets at start (pkg/kubelet/cm setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
LEGACY_LOG_DIR = "/var/log/containers"
#: The node's address (TEST-NET-1), on ``lo`` of the tests' private network namespace.
NODE_IP = "192.0.2.10"

#: klog error lines (``E1203 13:45:01.123456  1234 file.go:12] msg``).
KLOG_ERROR = re.compile(r"^E\d{4} ")
RUNTIME_WORDS = re.compile(r"rpc error|runtime|CRI|rktlet|sandbox|container|PLEG|image", re.I)


#: A container that logs a line, then sleeps and exits at once on SIGTERM.
SLEEPER = ["sh", "-c", "echo started-$HOSTNAME; trap 'exit 0' TERM; while true; do sleep 1; done"]


def container(name: str, command=SLEEPER, image: str = BUSYBOX, **fields) -> dict:
    c = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", **fields}
    if command:
        c["command"] = list(command)
    return c


def kubelet_config(base: str, socket: str, port: int, healthz_port: int, manifests: str, logs: str) -> dict[str, Any]:
    """The complete KubeletConfiguration of the tests (written as JSON, which is YAML)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Runtime
        "containerRuntimeEndpoint": f"unix://{socket}",
        "imageServiceEndpoint": f"unix://{socket}",
        "runtimeRequestTimeout": "2m",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this host is cgroup v1 (hybrid)
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "featureGates": {"PodAndContainerStatsFromCRI": True},
        # Standalone: static pods only, fast relisting
        "staticPodPath": manifests,
        "fileCheckFrequency": "1s",
        "syncFrequency": "1s",
        "podLogsDir": logs,
        "volumePluginDir": os.path.join(base, "volume-plugins"),
        "registerNode": False,
        "crashLoopBackOff": {"maxContainerRestartPeriod": MAX_BACKOFF},
        # Server: loopback only, self-signed TLS in --cert-dir
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "enableServer": True,
        "enableDebuggingHandlers": True,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {},
        },
        "authorization": {"mode": "AlwaysAllow"},
        # Leave the host alone as far as a kubelet can
        "makeIPTablesUtilChains": False,
        "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE here: cannot go below 0
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,  # no image GC
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "mergeDefaultEvictionSettings": False,
        "localStorageCapacityIsolation": True,
        "containerLogMaxSize": "10Mi",
        "containerLogMaxFiles": 2,
        "maxPods": 110,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "hairpinMode": "none",
        "resolvConf": "/etc/resolv.conf",
        "nodeStatusMaxImages": 50,
    }


def _read_sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


class Kubelet:
    """One standalone kubelet process in its own temporary directory."""

    def __init__(self, daemon: Daemon, binary: str = KUBELET_BINARY,
                 feature_gates: dict[str, bool] | None = None) -> None:
        self.daemon = daemon
        self.binary = binary
        self.base = tempfile.mkdtemp(prefix="kubelet-", dir="/tmp")
        self.root_dir = os.path.join(self.base, "root")
        self.cert_dir = os.path.join(self.base, "pki")
        self.manifests = os.path.join(self.base, "manifests")
        self.pod_logs = os.path.join(self.base, "pods-logs")
        for d in (self.root_dir, self.cert_dir, self.manifests, self.pod_logs):
            os.makedirs(d)
        self.port = free_port()
        self.healthz_port = free_port()
        self.config = kubelet_config(self.base, daemon.socket, self.port, self.healthz_port, self.manifests, self.pod_logs)
        self.config["featureGates"].update(feature_gates or {})
        self.config_path = os.path.join(self.base, "kubelet-config.yaml")
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        self.log_path = os.path.join(self.base, "kubelet.log")
        self.process: subprocess.Popen | None = None
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE  # loopback only, its self-signed certificate
        self.sysctls_before = {name: _read_sysctl(name) for name in KERNEL_TUNABLES}
        self.legacy_log_dir_existed = os.path.isdir(LEGACY_LOG_DIR)

    @property
    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config={self.config_path}",
            f"--root-dir={self.root_dir}",
            f"--cert-dir={self.cert_dir}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=2",
        ]

    # -- lifecycle -------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "Kubelet":
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.process = spawn_logged(self.argv, self.log_path, env=env, cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kubelet exited with {self.process.returncode}:\n{self.log()[-6000:]}")
            if self.healthz() == "ok":
                try:
                    self.get_json("/pods")
                    return self
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"kubelet not healthy within {timeout}s:\n{self.log()[-6000:]}")

    def stop(self) -> int | None:
        proc, self.process = self.process, None
        if proc is None:
            return None
        return stop_process(proc, 20, signal.SIGTERM)

    def log(self) -> str:
        return read_log(self.log_path)

    def error_lines(self) -> list[str]:
        """klog error-level lines of its log."""
        return [line for line in self.log().splitlines() if KLOG_ERROR.match(line)]

    def runtime_error_lines(self) -> list[str]:
        """Error-level lines that mention the runtime (CRI, sandboxes, containers...)."""
        return [line for line in self.error_lines() if RUNTIME_WORDS.search(line)]

    def cleanup(self) -> None:
        """Stop it, unmount what it left mounted, put back the host tunables and
        the legacy log dir, remove its directory."""
        self.stop()
        unmount_under(self.base)
        for name, value in self.sysctls_before.items():
            if value is not None and _read_sysctl(name) != value:
                try:
                    with open(f"/proc/sys/{name}", "w") as f:
                        f.write(value)
                except OSError:
                    pass
        if os.path.isdir(LEGACY_LOG_DIR):
            for entry in os.listdir(LEGACY_LOG_DIR):
                path = os.path.join(LEGACY_LOG_DIR, entry)
                if os.path.islink(path) and os.readlink(path).startswith(self.pod_logs + "/"):
                    os.unlink(path)
            if not self.legacy_log_dir_existed:
                try:
                    os.rmdir(LEGACY_LOG_DIR)
                except OSError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)

    # -- its HTTPS API ---------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30, port: int | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", port or self.port, context=self._tls, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body[:500]!r}")
        return json.loads(body)

    def healthz(self, path: str = "/healthz") -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.healthz_port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode(errors="replace").strip()
        except OSError:
            return None
        finally:
            conn.close()

    def pods(self) -> list[dict]:
        return self.get_json("/pods").get("items") or []

    def pod(self, name: str, namespace: str = "default") -> dict | None:
        """The static pod from manifest *name* (named ``NAME-NODENAME``), with status."""
        full = f"{name}-{NODE_NAME}"
        for pod in self.pods():
            if pod["metadata"]["name"] == full and pod["metadata"].get("namespace", "default") == namespace:
                return pod
        return None

    def run(self, name: str, container: str, cmd: str, namespace: str = "default") -> tuple[int, bytes]:
        """POST /run/NS/POD/CONTAINER?cmd=... (the kubelet's own ExecSync path)."""
        query = urllib.parse.urlencode({"cmd": cmd})
        return self.request("POST", f"/run/{namespace}/{name}-{NODE_NAME}/{container}?{query}")

    # -- static pods -----------------------------------------------------

    def write_manifest(self, name: str, spec: dict, labels: dict | None = None) -> str:
        """Write a static pod manifest (atomically: temp file + rename)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 2, **spec},
        }
        path = os.path.join(self.manifests, f"{name}.json")
        tmp = os.path.join(self.base, f".{name}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(pod, f)
        os.rename(tmp, path)
        return path

    def remove_manifest(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.manifests, f"{name}.json"))
        except FileNotFoundError:
            pass

    def manifest_names(self) -> list[str]:
        return [n[: -len(".json")] for n in os.listdir(self.manifests) if n.endswith(".json")]


def unmount_under(base: str) -> None:
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f]
    for path in sorted((m for m in mounted if m.startswith(base.rstrip("/") + "/")), reverse=True):
        subprocess.run(["umount", "-l", path], capture_output=True)


def mounts_under(base: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(base.rstrip("/") + "/")]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll *predicate* until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (AssertionError, OSError, KeyError, ValueError) as e:
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


class Env:
    """The module's registry + rktlet + kubelet + crictl."""

    def __init__(self, registry, daemon: Daemon, network: TestNetwork, kubelet: Kubelet, crictl: Crictl | None) -> None:
        self.registry = registry
        self.daemon = daemon
        self.network = network
        self.kubelet = kubelet
        self.crictl = crictl

    def sandboxes(self, name: str | None = None) -> list[dict]:
        """rktlet's sandboxes (all, or those of static pod manifest *name*)."""
        from rktlet.cri.proto import pb

        items = self.daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        if name is None:
            return list(items)
        return [s for s in items if s.metadata.name == f"{name}-{NODE_NAME}"]

    def containers(self, pod_name: str | None = None, name: str | None = None) -> list:
        from rktlet.cri.proto import pb

        items = self.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=30).containers
        out = []
        for c in items:
            if pod_name is not None and c.labels.get("io.kubernetes.pod.name") != f"{pod_name}-{NODE_NAME}":
                continue
            if name is not None and c.metadata.name != name:
                continue
            out.append(c)
        return out

    def wait_running(self, name: str, timeout: float = 60, ready: bool = False) -> dict:
        def check():
            pod = self.kubelet.pod(name)
            if pod is None:
                return None
            status = pod.get("status") or {}
            if status.get("phase") != "Running":
                return None
            statuses = status.get("containerStatuses") or []
            if not statuses or not all("running" in (s.get("state") or {}) for s in statuses):
                return None
            if ready and not all(s.get("ready") for s in statuses):
                return None
            return pod

        try:
            return wait_for(check, timeout, f"pod {name} Running")
        except AssertionError as e:
            pod = self.kubelet.pod(name)
            raise AssertionError(f"{e}\nstatus: {json.dumps((pod or {}).get('status'), indent=1)[:3000]}") from None

    def delete_pod(self, name: str, timeout: float = 60) -> None:
        """Remove the manifest and wait until the kubelet and rktlet forgot the pod."""
        self.kubelet.remove_manifest(name)
        wait_for(lambda: self.kubelet.pod(name) is None and not self.sandboxes(name), timeout,
                 f"pod {name} removed by the kubelet")

    def delete_all(self, timeout: float = 90) -> None:
        """Remove every manifest; wait until the kubelet forgot the pods and
        stopped them, then remove what is stopped through CRI (the kubelet
        would only after its next container GC, up to a minute later)."""
        from rktlet.cri.proto import pb

        for name in self.kubelet.manifest_names():
            self.kubelet.remove_manifest(name)

        def stopped():
            if self.kubelet.pods():
                return False
            if any(s.state == pb.SANDBOX_READY for s in self.sandboxes()):
                return False
            return not any(c.state == pb.CONTAINER_RUNNING for c in self.containers())

        wait_for(stopped, timeout, "the kubelet to stop every pod")
        remove_everything(self.daemon.runtime())

    def container_info(self, container_id: str) -> dict:
        """rktlet's verbose ContainerStatus info (pid, bundle, runtimeSpec...)."""
        from rktlet.cri.proto import pb

        resp = self.daemon.runtime().ContainerStatus(pb.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=30)
        return json.loads(resp.info["info"])

    def sandbox_info(self, sandbox_id: str) -> dict:
        from rktlet.cri.proto import pb

        resp = self.daemon.runtime().PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=30)
        return json.loads(resp.info["info"])

    def container_id(self, pod: dict, name: str) -> str:
        """The running container's CRI id from the kubelet's pod status."""
        for s in pod["status"]["containerStatuses"]:
            if s["name"] == name:
                return s["containerID"].split("://", 1)[1]
        raise KeyError(name)

    def logs(self, name: str, container: str, query: str = "") -> str:
        status, body = self.kubelet.request("GET", f"/containerLogs/default/{name}-{NODE_NAME}/{container}{query}")
        assert status == 200, (status, body[:500])
        return body.decode(errors="replace")


@pytest.fixture(scope="module")
def kubelet_env() -> Iterator[Env]:
    yield from kubelet_environment()


def kubelet_environment(daemon_args: tuple[str, ...] = (),
                        feature_gates: dict[str, bool] | None = None) -> Iterator[Env]:
    """The registry, rktlet (with *daemon_args* too) and the kubelet (with
    *feature_gates* too), in a private network namespace; everything is
    removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.access(KUBELET_BINARY, os.X_OK):
        pytest.skip(f"no kubelet binary at {KUBELET_BINARY} (build it with: tests/tools/build-clients kubelet)")
    reason = registry_available()
    if reason is not None:
        pytest.skip(f"local registry unavailable: {reason}")
    # Everything (registry, rktlet, kubelet, pods) lives in a loopback-only
    # network namespace: no image name can reach a registry elsewhere.
    with private_network():
        # The node's address: the kubelet wants one that is not loopback and
        # would look for a default route otherwise (this namespace has none).
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"], check=True)
        registry = LocalRegistry()
        try:
            registry.start()
            yield from _kubelet_env(registry, daemon_args, feature_gates)
        finally:
            registry.stop()


def _kubelet_env(registry: LocalRegistry, daemon_args: tuple[str, ...] = (),
                 feature_gates: dict[str, bool] | None = None) -> Iterator[Env]:
    repo_busybox = "rktlet-test/busybox"
    push_image(registry, repo_busybox, "1.0", busybox_image("docker"))
    push_image(registry, "rktlet-test/web", "1.0", web_image("docker"))

    daemon = Daemon(extra_args=["--registry-mirror", f"{UPSTREAM}=http://{registry.host}", "--log-level",
                                os.environ.get("RKTLET_KUBELET_RKTLET_LOG_LEVEL", "info"), *daemon_args])
    network = TestNetwork(daemon.cni_conf_dir)
    network.write()
    kubelet: Kubelet | None = None
    try:
        daemon.start()
        binary = find_crictl()
        crictl = Crictl(binary, daemon.socket, os.path.join(daemon.base, "crictl.yaml")) if binary else None
        kubelet = Kubelet(daemon, feature_gates=feature_gates)
        kubelet.start()
        env = Env(registry, daemon, network, kubelet, crictl)
        yield env
    finally:
        if kubelet is not None:
            for name in kubelet.manifest_names():
                kubelet.remove_manifest(name)
            if kubelet.process is not None and daemon.process is not None:
                try:
                    wait_for(lambda: not kubelet.pods() and not Env(registry, daemon, network, kubelet, None).sandboxes(),
                             60, "the kubelet to remove every pod")
                except Exception:
                    pass
            kubelet.stop()
            report_errors(kubelet, daemon)
        leftovers: list[str] = []
        if daemon.process is not None:
            try:
                leftovers = [s.id for s in Env(registry, daemon, network, kubelet, None).sandboxes()]  # type: ignore[arg-type]
                remove_everything(daemon.runtime())
            except Exception:
                pass
        daemon.cleanup()
        if kubelet is not None:
            kubelet.cleanup()
        network.cleanup()
        reap_orphans(MONITOR_NAMES)
        if leftovers:
            print(f"\nsandboxes left behind by the kubelet (removed through CRI): {leftovers}")


#: Every runtime-related kubelet error line, by module; printed at the end.
COLLECTED_ERRORS: dict[str, list[str]] = {}


def report_errors(kubelet: Kubelet, daemon: Daemon | None = None) -> None:
    lines = kubelet.runtime_error_lines()
    keep = os.environ.get("RKTLET_KUBELET_LOGS")  # a dir to keep the logs in
    if keep:
        os.makedirs(keep, exist_ok=True)
        tag = os.path.basename(kubelet.base)
        shutil.copy(kubelet.log_path, os.path.join(keep, f"{tag}.kubelet.log"))
        if daemon is not None and os.path.exists(daemon.log_path):
            shutil.copy(daemon.log_path, os.path.join(keep, f"{tag}.rktlet.log"))
    out = os.environ.get("RKTLET_KUBELET_ERRORS")
    if out:
        with open(out, "a") as f:
            f.write(f"## {kubelet.base}\n")
            f.writelines(line + "\n" for line in lines)
    COLLECTED_ERRORS[kubelet.base] = lines


def pytest_terminal_summary(terminalreporter):
    for base, lines in COLLECTED_ERRORS.items():
        terminalreporter.section(f"kubelet error lines about the runtime ({len(lines)})")
        for line in lines:
            terminalreporter.write_line(line[:600])


@pytest.fixture
def env(kubelet_env: Env) -> Iterator[Env]:
    """The module's environment; every pod a test made is removed after it."""
    try:
        yield kubelet_env
    finally:
        if kubelet_env.kubelet.process is not None:
            try:
                kubelet_env.delete_all()
            except AssertionError:
                pass
