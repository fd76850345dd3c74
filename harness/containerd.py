"""A throw-away containerd with its CRI plugin, for benchmarks that compare
rktlet with containerd in the same run: Debian's ``containerd`` 1.6 (found on
PATH, configuration ``version = 2``) by default, or a containerd 2.x program
given as ``binary`` (configuration ``version = 3``, see below).

:class:`Containerd` writes its own configuration file into a private
temporary directory and starts ``containerd --config FILE`` as a child
process: its own ``root``, ``state`` and ``temp`` directories, its own gRPC
socket (the CRI v1 services are served there too), the overlayfs snapshotter,
cgroupfs (``SystemdCgroup = false``), ``restrict_oom_score_adj = true``
(nothing here may lower ``oom_score_adj``), an empty CNI configuration
directory of its own, and a ``hosts.toml`` per plain-HTTP registry given in
``insecure_registries`` (``config_path`` registry configuration).

containerd puts some things under ``/run/containerd`` whatever its
configuration says (shim sockets, runc state). Image operations leave nothing
there; pod sandboxes do, while they exist: one ``containerd-shim-runc-v2``
per sandbox (started by containerd but reparented away from it, so found by
the ``-address`` of *this* instance's socket on its command line, see
:meth:`Containerd.shim_pids`; :meth:`Containerd.shim_tree` adds each shim's
pause and container processes), its socket under ``/run/containerd/s`` and the
runc state under ``/run/containerd/runc``. Sandboxes also pin their network
namespace under ``/run/netns`` (``cni-…``).

:meth:`Containerd.cleanup` therefore first stops and removes every pod
sandbox and container through the CRI (:meth:`Containerd.remove_all_pods`),
then stops containerd by its PID (SIGTERM, then SIGKILL), kills by PID any
shim of this instance still alive together with its descendants (the pause
processes), removes their sockets and runc state, unpins network namespaces
of sandboxes that could not be removed, unmounts anything still mounted under
its directory and removes the directory; finally it removes
``/run/containerd`` again when it did not exist before the start and is left
empty. The same happens with the context manager, and as a last resort at
interpreter exit.

A CNI network for the sandboxes is written into :attr:`Containerd.cni_conf_dir`
between :meth:`Containerd.prepare` (makes the directory and the configuration)
and :meth:`Containerd.start`: containerd's CRI plugin wants a network
configuration at start.

containerd 2.x (``binary=``, e.g. one built with ``go install``; the version
is read from ``BINARY --version``) gets the same settings in a ``version = 3``
file, where they live in other plugin tables:
``io.containerd.cri.v1.images`` (snapshotter, the sandbox image as
``pinned_images.sandbox``, ``registry.config_path``),
``io.containerd.cri.v1.runtime`` (``restrict_oom_score_adj``, the runc
runtime with cgroupfs, ``cni.bin_dirs``/``cni.conf_dir``, ``cdi_spec_dirs``
an empty directory of its own) and ``io.containerd.grpc.v1.cri`` (the
streaming server). Keys given in ``cri`` are put into the right one. NRI is
disabled (it would listen on ``/var/run/nri/nri.sock``), and so are the
snapshotters and differs that cannot work here. containerd looks its shim
(``containerd-shim-runc-v2``) up on ``PATH``: the directory of ``binary`` comes
first on the ``PATH`` it is started with, so a shim built beside it is the one
used. It also keeps its shim sockets and runc state under
``/run/containerd``, like 1.6. containerd 2.4 reads ``version = 3`` files
too (its own current version is 4; it logs that it migrated the file).

``mirrors`` (``{"registry.k8s.io": "http://127.0.0.1:5000", ...}``, both
versions) sends every pull of an image named ``HOST/...`` to the URL instead:
``certs.d/HOST/hosts.toml`` names the URL as ``server`` (not only as a
mirror), so containerd never falls back to ``HOST`` itself.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import grpc

from rktlet.cri.proto import pb
from harness.pods import remove_everything
from harness.processes import CriClients, spawn_logged, stop_process

__all__ = [
    "Containerd",
    "ContainerdError",
    "containerd_binary",
    "containerd_major",
    "containerd_version",
    "INSTALL_HINT",
]

INSTALL_HINT = "containerd is not installed; install it with: apt-get install -y containerd"

RUN_CONTAINERD = "/run/containerd"
#: The CRI plugin's containerd namespace.
CRI_NAMESPACE = "k8s.io"

_START_TIMEOUT = 30.0
_STOP_GRACE = 10.0
_MNT_DETACH = 2

#: Plugins of no use for image pulls on this kind of machine (they only log
#: errors at start, or probe things that do not exist here).
_DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)

#: Also disabled for containerd 2.x: NRI (a socket under /var/run/nri, plugin
#: dirs under /opt and /etc) and the snapshotters and differs of no use here.
_DISABLED_PLUGINS_V3 = _DISABLED_PLUGINS + (
    "io.containerd.nri.v1.nri",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
)

#: Keys of the 1.x CRI plugin table (``io.containerd.grpc.v1.cri``) that
#: belong to other tables in a ``version = 3`` configuration; the rest go to
#: ``io.containerd.cri.v1.runtime``.
_V3_IMAGE_KEYS = frozenset({
    "snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers", "max_concurrent_downloads",
    "image_pull_progress_timeout", "image_pull_with_sync_fs", "stats_collect_period", "use_local_image_pull",
})
_V3_SERVER_KEYS = frozenset({
    "disable_tcp_service", "stream_server_address", "stream_server_port", "stream_idle_timeout",
    "enable_tls_streaming",
})

_LIVE: "set[Containerd]" = set()


class ContainerdError(RuntimeError):
    """containerd could not be started or did not answer."""


def containerd_binary() -> Optional[str]:
    """Path of the ``containerd`` program, or ``None`` if it is not installed."""
    return shutil.which("containerd", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin")


def containerd_version(binary: Optional[str] = None) -> str:
    """``containerd --version`` (one line), e.g. ``containerd github.com/... 1.6.20~ds1 ...``."""
    binary = binary or containerd_binary()
    if binary is None:
        raise ContainerdError(INSTALL_HINT)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return (out.stdout or out.stderr).strip()


def containerd_major(binary: Optional[str] = None) -> int:
    """The major version of ``binary`` (1 for Debian's 1.6, 2 for 2.x),
    from ``--version`` (``containerd github.com/... 2.4.2+unknown ...``)."""
    words = containerd_version(binary).split()
    match = re.match(r"v?(\d+)\.", words[2] if len(words) > 2 else "")
    if match is None:
        raise ContainerdError(f"cannot tell the version of {binary or 'containerd'}: {' '.join(words)!r}")
    return int(match.group(1))


def _toml_value(value: Any) -> str:
    """A TOML value for ``str``/``bool``/``int``/``float``/lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_tables(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"table.name": {key: value}}`` as TOML text (top level under ``""``)."""
    lines: list[str] = []
    for name, values in tables.items():
        if name:
            lines.append("")
            lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` (deepest first), from /proc/mounts."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 2:
                    continue
                # /proc/mounts escapes space, tab, newline and backslash in octal.
                point = fields[1].encode().decode("unicode_escape")
                if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                    found.append(point)
    except OSError:
        pass
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(prefix: str) -> list[str]:
    """Unmount everything mounted at or below ``prefix``; return what was unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for _ in range(5):  # stacked mounts need more than one pass
        points = _mounts_under(prefix)
        if not points:
            break
        for point in points:
            if libc.umount2(point.encode(), 0) != 0:
                libc.umount2(point.encode(), _MNT_DETACH)
            done.append(point)
    return done


def _cmdline(pid: int) -> list[str]:
    """argv of process ``pid`` ([] if it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _parent_pids() -> dict[int, int]:
    """``{pid: ppid}`` of every process, from /proc/PID/stat."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain anything.
        fields = stat[stat.rfind(")") + 2 :].split()
        try:
            parents[int(name)] = int(fields[1])
        except (IndexError, ValueError):
            continue
    return parents


def descendants(pids: Iterable[int], parents: Optional[Mapping[int, int]] = None) -> set[int]:
    """Every live descendant of ``pids`` (not ``pids`` themselves)."""
    parents = _parent_pids() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z"


def _arg(argv: list[str], flag: str) -> Optional[str]:
    """The value after ``flag`` (``-flag value`` or ``-flag=value``) in ``argv``."""
    for i, word in enumerate(argv):
        if word in (flag, "-" + flag) and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in (flag + "=", "-" + flag + "="):
            if word.startswith(prefix):
                return word[len(prefix) :]
    return None


class Containerd(CriClients):
    """One containerd process in its own temporary directory, serving CRI v1.

    :param insecure_registries: ``HOST:PORT`` of registries reached over plain
        HTTP (each gets ``certs.d/HOST:PORT/hosts.toml``).
    :param log_level: containerd's log level (``info`` by default, as shipped).
    :param cri: more keys of the ``io.containerd.grpc.v1.cri`` plugin table
        (e.g. ``{"sandbox_image": ..., "max_concurrent_downloads": 3}``), as
        in a 1.x configuration; for 2.x they are moved to the tables where
        ``version = 3`` has them (``sandbox_image`` becomes
        ``pinned_images.sandbox``).
    :param binary: the containerd program (Debian's, found on PATH, by default).
    :param mirrors: ``{upstream host: URL}``: images named ``HOST/...`` are
        pulled from ``URL`` (e.g. ``http://127.0.0.1:5000``) and never from
        the upstream host.
    :param config_version: ``2`` or ``3``; by default 3 for containerd 2.x
        and 2 for 1.x (from ``binary --version``).
    :param metrics_address: ``HOST:PORT`` of containerd's Prometheus
        endpoint (``/v1/metrics``); none by default.
    """

    def __init__(
        self,
        insecure_registries: Iterable[str] = (),
        log_level: str = "info",
        cri: Optional[Mapping[str, Any]] = None,
        binary: Optional[str] = None,
        mirrors: Optional[Mapping[str, str]] = None,
        config_version: Optional[int] = None,
        metrics_address: str = "",
    ) -> None:
        self.binary = binary or containerd_binary()
        if self.binary is None:
            raise ContainerdError(INSTALL_HINT)
        if config_version is None:
            config_version = 3 if containerd_major(self.binary) >= 2 else 2
        if config_version not in (2, 3):
            raise ValueError(f"config_version must be 2 or 3, not {config_version!r}")
        self.config_version = config_version
        self.mirrors = dict(mirrors or {})
        self.insecure_registries = tuple(insecure_registries)
        self.log_level = log_level
        self.cri_options = dict(cri or {})
        self.metrics_address = metrics_address
        self.base: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self._channel: Optional[grpc.Channel] = None
        self._run_containerd_existed = os.path.exists(RUN_CONTAINERD)
        #: Network namespace files of sandboxes that could not be removed.
        self._leftover_netns: set[str] = set()
        self._netns_inodes: set[tuple[int, int]] = set()

    # -- paths --------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        if self.base is None:
            raise ContainerdError("containerd is not started")
        return os.path.join(self.base, *parts)

    @property
    def root(self) -> str:
        """containerd's persistent root (content store, snapshots, metadata)."""
        return self._path("root")

    @property
    def state(self) -> str:
        """containerd's state directory."""
        return self._path("state")

    @property
    def socket(self) -> str:
        """The gRPC socket (containerd API and CRI v1)."""
        return self._path("containerd.sock")

    @property
    def cni_conf_dir(self) -> str:
        """containerd's CNI configuration directory (empty unless written to;
        the plugins are Debian's, in /usr/lib/cni)."""
        return self._path("net.d")

    @property
    def config_path(self) -> str:
        """The generated configuration file."""
        return self._path("config.toml")

    @property
    def log_path(self) -> str:
        """File receiving containerd's stdout and stderr."""
        return self._path("containerd.log")

    @property
    def pid(self) -> Optional[int]:
        """PID of the containerd process, or ``None`` when not running."""
        return self.process.pid if self.process is not None else None

    # -- configuration ---------------------------------------------------------------

    def config_text(self) -> str:
        """The TOML configuration this instance runs with."""
        return self._config_v3() if self.config_version == 3 else self._config_v2()

    def _config_v2(self) -> str:
        """``version = 2`` (containerd 1.x)."""
        cri_table = 'plugins."io.containerd.grpc.v1.cri"'
        cri: dict[str, Any] = {
            "restrict_oom_score_adj": True,
            "disable_tcp_service": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "enable_selinux": False,
        }
        cri.update(self.cri_options)
        tables: dict[str, dict[str, Any]] = {
            "": {
                "version": 2,
                "root": self.root,
                "state": self.state,
                "temp": self._path("tmp"),
                "oom_score": 0,
                "disabled_plugins": list(_DISABLED_PLUGINS),
            },
            "grpc": {"address": self.socket},
            "ttrpc": {"address": self.socket + ".ttrpc"},
            "debug": {"address": "", "level": self.log_level},
            "metrics": {"address": self.metrics_address},
            cri_table: cri,
            f"{cri_table}.containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "discard_unpacked_layers": False,
            },
            f"{cri_table}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{cri_table}.containerd.runtimes.runc.options": {"SystemdCgroup": False},
            f"{cri_table}.cni": {"bin_dir": "/usr/lib/cni", "conf_dir": self._path("net.d")},
            f"{cri_table}.registry": {"config_path": self._path("certs.d")},
            'plugins."io.containerd.internal.v1.opt"': {"path": self._path("opt")},
        }
        return _toml_tables(tables)

    def _config_v3(self) -> str:
        """``version = 3`` (containerd 2.x): the same settings as
        :meth:`_config_v2`, in the tables where 2.x has them."""
        images_table = 'plugins."io.containerd.cri.v1.images"'
        runtime_table = 'plugins."io.containerd.cri.v1.runtime"'
        server_table = 'plugins."io.containerd.grpc.v1.cri"'
        images: dict[str, Any] = {"snapshotter": "overlayfs", "discard_unpacked_layers": False}
        pinned: dict[str, Any] = {}
        runtime: dict[str, Any] = {
            "restrict_oom_score_adj": True,
            "enable_selinux": False,
            "cdi_spec_dirs": [self._path("cdi")],
        }
        server: dict[str, Any] = {
            "disable_tcp_service": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
        }
        for key, value in self.cri_options.items():
            if key == "sandbox_image":
                pinned["sandbox"] = value
            elif key in _V3_IMAGE_KEYS:
                images[key] = value
            elif key in _V3_SERVER_KEYS:
                server[key] = value
            else:
                runtime[key] = value
        tables: dict[str, dict[str, Any]] = {
            "": {
                "version": 3,
                "root": self.root,
                "state": self.state,
                "temp": self._path("tmp"),
                "oom_score": 0,
                "disabled_plugins": list(_DISABLED_PLUGINS_V3),
            },
            "grpc": {"address": self.socket},
            "ttrpc": {"address": self.socket + ".ttrpc"},
            "debug": {"address": "", "level": self.log_level},
            "metrics": {"address": self.metrics_address},
            images_table: images,
            f"{images_table}.pinned_images": pinned,
            f"{images_table}.registry": {"config_path": self._path("certs.d")},
            runtime_table: runtime,
            f"{runtime_table}.containerd": {"default_runtime_name": "runc"},
            f"{runtime_table}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{runtime_table}.containerd.runtimes.runc.options": {"SystemdCgroup": False},
            f"{runtime_table}.cni": {"bin_dirs": ["/usr/lib/cni"], "conf_dir": self._path("net.d")},
            server_table: server,
            'plugins."io.containerd.internal.v1.opt"': {"path": self._path("opt")},
        }
        if not pinned:
            del tables[f"{images_table}.pinned_images"]
        return _toml_tables(tables)

    def _write_hosts(self, host: str, url: str) -> None:
        """``certs.d/HOST/hosts.toml``: pulls of ``HOST/...`` go to ``url``
        (plain HTTP when it says ``http://``), which is also the ``server``:
        no fallback to ``HOST`` itself."""
        hdir = self._path("certs.d", host)
        os.makedirs(hdir, exist_ok=True)
        with open(os.path.join(hdir, "hosts.toml"), "w") as f:
            f.write(
                f"server = {_toml_value(url)}\n\n"
                f"[host.{_toml_value(url)}]\n"
                '  capabilities = ["pull", "resolve"]\n'
            )

    def _write_files(self) -> None:
        for sub in ("root", "state", "tmp", "net.d", "certs.d", "opt", "cdi"):
            os.makedirs(self._path(sub), exist_ok=True)
        for host in self.insecure_registries:
            self._write_hosts(host, "http://" + host)
        for host, url in self.mirrors.items():
            self._write_hosts(host, url)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    # -- lifecycle ---------------------------------------------------------------------

    def prepare(self) -> "Containerd":
        """Make the temporary directory and write the configuration, without
        starting containerd (:meth:`start` does this itself when needed).
        Write a CNI network into :attr:`cni_conf_dir` in between."""
        if self.base is None:
            # Short path: unix socket paths must fit in 108 bytes.
            self.base = tempfile.mkdtemp(prefix="ctrd-", dir="/tmp")
            _LIVE.add(self)
            try:
                self._write_files()
            except BaseException:
                self.cleanup()
                raise
        return self

    def start(self, timeout: float = _START_TIMEOUT) -> "Containerd":
        """Start containerd and wait until its CRI ``Version`` answers."""
        if self.process is not None:
            return self
        self.prepare()
        try:
            path = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            here = os.path.dirname(os.path.abspath(self.binary))
            if here not in path:
                path.insert(0, here)  # its shim (containerd-shim-runc-v2) first
            env = {"PATH": ":".join(path), "HOME": self.base}
            self.process = spawn_logged([self.binary, "--config", self.config_path], self.log_path, env=env,
                                        cwd=self.base)
            _LIVE.add(self)
            deadline = time.monotonic() + timeout
            last = ""
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ContainerdError(f"containerd exited with {self.process.returncode}:\n{self.log()}")
                if os.path.exists(self.socket):
                    try:
                        self.runtime().Version(pb.VersionRequest(), timeout=2)
                        return self
                    except grpc.RpcError as e:
                        last = f"{e.code()}: {e.details()}"
                time.sleep(0.05)
            raise ContainerdError(f"containerd's CRI did not answer within {timeout:.0f}s ({last}):\n{self.log()}")
        except BaseException:
            self.cleanup()
            raise

    def log(self, tail: int = 8000) -> str:
        """The last ``tail`` characters containerd wrote."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except (OSError, ContainerdError):
            return "(no containerd output)"

    # -- pod sandboxes and their shims ---------------------------------------------------

    def shim_pids(self) -> list[int]:
        """PIDs of the live ``containerd-shim-runc-v2`` processes of *this*
        instance: those whose ``-address`` is its socket (a shim is started
        by containerd but leaves it, so it is not found among its children)."""
        if self.base is None:
            return []
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid():
                argv = _cmdline(int(name))
                if _arg(argv, "-address") == self.socket and _alive(int(name)):
                    found.append(int(name))
        return sorted(found)

    def shim_tree(self) -> dict[int, set[int]]:
        """``{shim pid: pids of its live descendants}`` for every shim of
        this instance: a sandbox's pause process and its containers'
        processes are the children of the sandbox's shim (containerd's runc
        v2 shim serves every container of one sandbox)."""
        shims = self.shim_pids()
        if not shims:
            return {}
        parents = _parent_pids()
        return {shim: {p for p in descendants([shim], parents) if _alive(p)} for shim in shims}

    def remove_all_pods(self, timeout: float = 30.0) -> list[str]:
        """Stop and remove every container and pod sandbox through the CRI.

        Returns the errors (as text); the network namespaces of sandboxes
        that could not be removed are remembered for :meth:`cleanup`.
        """
        if self.process is None or self.process.poll() is not None:
            return []
        return remove_everything(self.runtime(), timeout, pod_failed=self._remember_netns)

    def _remember_netns(self, sandbox_id: str) -> None:
        """Note the network namespace file of a sandbox (from its verbose status)."""
        try:
            status = self.runtime().PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10
            )
            info = json.loads(status.info.get("info", "{}"))
        except (grpc.RpcError, ValueError):
            return
        spec = info.get("runtimeSpec") or {}
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network" and ns.get("path"):
                self._leftover_netns.add(ns["path"])

    def kill_shims(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL, by PID, every shim of this instance still alive and its
        descendants (the sandbox and container processes, which a dying shim
        leaves behind); then remove their sockets and runc state under
        ``/run/containerd``. Returns the PIDs killed."""
        shims = self.shim_pids()
        if not shims:
            return []
        targets = {pid: _cmdline(pid) for pid in shims}
        victims = descendants(shims) | set(shims)
        # The sandboxes' network namespaces, pinned under /run/netns: found
        # by the inode of their processes' namespace (containerd, which knows
        # their names, may be gone).
        for pid in victims:
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if st.st_ino != os.stat("/proc/self/ns/net").st_ino:
                self._netns_inodes.add((st.st_dev, st.st_ino))
        # Descendants first: once its shim is gone a process is harder to tell apart.
        for pid in sorted(victims - set(shims)) + shims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.05)
        for argv in targets.values():
            sandbox_id = _arg(argv, "-id")
            namespace = _arg(argv, "-namespace") or CRI_NAMESPACE
            if not sandbox_id:
                continue
            digest = hashlib.sha256(os.path.join(self.socket, namespace, sandbox_id).encode()).hexdigest()
            for path in (os.path.join(RUN_CONTAINERD, "s", digest),):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            state = os.path.join(RUN_CONTAINERD, "runc", namespace, sandbox_id)
            if os.path.isdir(state):
                shutil.rmtree(state, ignore_errors=True)
        return sorted(victims)

    def _unpin_leftover_netns(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if self._netns_inodes and os.path.isdir("/run/netns"):
            for name in os.listdir("/run/netns"):
                path = os.path.join("/run/netns", name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in self._netns_inodes:
                    self._leftover_netns.add(path)
        self._netns_inodes.clear()
        for path in sorted(self._leftover_netns):
            real = os.path.realpath(path)
            if os.path.dirname(real) != "/run/netns" or not os.path.basename(real).startswith("cni-"):
                continue  # only what containerd's CRI plugin pins
            if libc.umount2(real.encode(), 0) != 0:
                libc.umount2(real.encode(), _MNT_DETACH)
            try:
                os.unlink(real)
            except OSError:
                pass
        self._leftover_netns.clear()

    def stop(self) -> Optional[int]:
        """SIGTERM containerd by its PID, SIGKILL if it lingers; return its status."""
        self.close_channel()
        proc, self.process = self.process, None
        if proc is None:
            return None
        return stop_process(proc, _STOP_GRACE)

    def cleanup(self) -> None:
        """Remove the pods, stop containerd, kill leftover shims, unmount what
        is left under its directory, remove it."""
        try:
            try:
                self.remove_all_pods()
            except Exception:
                pass  # containerd is stopped and its shims killed below anyway
            self.stop()
        finally:
            _LIVE.discard(self)
            if self.base is not None:
                self.kill_shims()
                self._unpin_leftover_netns()
                unmount_under(self.base)
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
            if not self._run_containerd_existed and os.path.isdir(RUN_CONTAINERD):
                # Only empty directories: anything else belongs to someone else.
                for dirpath, _dirs, _files in sorted(os.walk(RUN_CONTAINERD), key=lambda w: -w[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass

    def __enter__(self) -> "Containerd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<Containerd {self.base or '-'} pid={self.pid}>"


@atexit.register
def _stop_leftovers() -> None:
    for instance in list(_LIVE):
        instance.cleanup()
