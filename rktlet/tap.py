"""``twistd rktlet``: the command-line options and the service tree.

``makeService`` composes; the logic lives in the engine, the servicers and
the drivers.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.python import usage

from rktlet import config as config_module
from rktlet import __version__, logs, sdnotify
from rktlet.config import OPTIONS, Config
from rktlet.cri.bridge import ReactorBridge
from rktlet.cri.dispatch import generic_handler
from rktlet.cri.image_service import ImageService
from rktlet.cri.proto import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from rktlet.cri.runtime_service import RuntimeService
from rktlet.cri.server import GrpcServerService
from rktlet.cri.socket_claim import claim_socket
from rktlet.errors import RktletError, StartupError
from rktlet.image.manager import ImageLimits, ImageManager
from rktlet.image.registry import RegistryClient
from rktlet.image.store import ImageStore
from rktlet.network.cni import CNI
from rktlet.nri.runtime import NRI
from rktlet.oci import cgroups
from rktlet.oci.handlers import Handlers
from rktlet.oci.host import RealHost
from rktlet.oci.conmon import Conmon
from rktlet.oci.exec import describe_reaper
from rktlet.oci.procwatch import become_subreaper
from rktlet.oci.runtime import OCIRuntime
from rktlet.pod.containers import ContainerManager
from rktlet.pod.engine import Engine
from rktlet.pod.sandboxes import SandboxManager
from rktlet.pod.stats import StatsCollector
from rktlet.pod.streaming import StreamingBackend
from rktlet.stream.server import StreamService
from rktlet.pod.store import ContainerStore, PodStore

log = logs.logger("rktlet.tap")


class Options(usage.Options):
    """Options of ``twistd rktlet`` and of the ``rktlet`` command; built from
    :data:`rktlet.config.OPTIONS` so both and the TOML file agree."""

    synopsis = "[options]"
    longdesc = "rktlet: a Kubernetes CRI v1 runtime (pods of apps on runc, conmon and CNI)."
    optParameters = [["config", "c", None, "TOML configuration file (keys as the long options)"]] + [
        [opt.key, None, None, f"{opt.help} [default: {opt.default_text}]"] for opt in OPTIONS if not opt.repeatable
    ]

    def __init__(self) -> None:
        super().__init__()
        for opt in OPTIONS:
            if opt.repeatable:
                self[opt.key] = []

    def opt_insecure_registry(self, value: str) -> None:
        """registry HOST[:PORT] reached over plain HTTP (repeatable; localhost
        and 127.0.0.1 always are)"""
        self["insecure-registry"].append(value)

    def opt_runtime_handler(self, value: str) -> None:
        """NAME=PATH: another runtime handler (rkt's stage1 flavor), e.g.
        crun=/usr/bin/crun (repeatable)"""
        self["runtime-handler"].append(value)

    def opt_registry_mirror(self, value: str) -> None:
        """HOST=URL: try the registry at URL before HOST for images named
        HOST/... (repeatable, in order)"""
        self["registry-mirror"].append(value)

    def postOptions(self) -> None:
        try:
            self.config = config_module.load({o.key: self.get(o.key) for o in OPTIONS}, self["config"])
        except RktletError as e:
            raise usage.UsageError(str(e)) from None


class _Lifecycle(Service):
    """Loads state before the other services start; tells systemd when the
    daemon is ready and when it stops."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def startService(self) -> None:
        Service.startService(self)
        sdnotify.notify("READY=1")
        log.info("rktlet ready")

    def stopService(self) -> Any:
        Service.stopService(self)
        sdnotify.notify("STOPPING=1")
        return self._engine.close()


def build_service(config: Config, reactor: Any = None, euid: int | None = None) -> MultiService:
    """The daemon's service tree for *config*.

    :param euid: the effective uid to check (default: this process's).
    :raises StartupError: the daemon must not start (message is one line).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise StartupError(
            f"rktlet must run as root (it creates namespaces, mounts and cgroups); running as uid {euid}"
        )
    logs.set_level(config.log_level)
    try:
        # conmon monitors daemonize (see rktlet.oci.conmon): as a subreaper
        # the daemon gets them as children, watches and reaps them.
        become_subreaper()
    except OSError as e:
        log.warn("{error}; container monitors will be PID 1's children", error=str(e))
    reaper = describe_reaper()
    if reaper.startswith("compiled"):
        log.info("exec reaper: {reaper}", reaper=reaper)
    else:
        log.warn("exec reaper: {reaper}; ExecSync is slower with it", reaper=reaper)
    claim = claim_socket(config.socket)
    try:
        # Long file-system work (unpacking, cgroup removal, disk-usage walks)
        # must leave threads for the quick reads Status and the stats need.
        reactor.suggestThreadPoolSize(config.blocking_threads)
        threadpool = reactor.getThreadPool()
        layout = cgroups.detect()
        host = RealHost(reactor, layout)
        images = ImageManager(
            reactor,
            ImageStore(config.root),
            RegistryClient(reactor, config.is_insecure_registry, config.mirrors,
                           max_manifest_size=config.max_manifest_size),
            threadpool,
            pull_progress_timeout=config.pull_progress_timeout,
            limits=ImageLimits(
                max_bytes=config.max_image_bytes,
                max_inodes=config.max_image_inodes,
                max_layers=config.max_image_layers,
                max_config_size=config.max_image_config_size,
                max_concurrent_downloads=config.max_concurrent_downloads,
            ),
        )
        sandboxes = SandboxManager(
            reactor,
            threadpool,
            config,
            PodStore(config.root),
            CNI(reactor, config.cni_conf_dir, config.cni_bin_dir, os.path.join(config.root, "cni")),
            Handlers(config.handlers),
            host,
        )
        runtimes = {
            name: OCIRuntime(reactor, binary, os.path.join(config.run_dir, "runtime", name))
            for name, binary in config.handlers.items()
        }
        conmons = {
            name: Conmon(reactor, runtime, exits_dir=os.path.join(config.run_dir, "exits"),
                         socket_dir=os.path.join(config.run_dir, "s"))
            for name, runtime in runtimes.items()
        }
        containers = ContainerManager(
            reactor, threadpool, config.run_dir, config.root, ContainerStore(config.root), sandboxes, images,
            runtimes, conmons, host,
        )
        nri = None
        if config.nri_socket:
            nri = NRI(reactor, config.nri_socket, lambda: (sandboxes.list(), containers.list()),
                      runtime_version=__version__, request_timeout=config.nri_request_timeout,
                      sync_timeout=config.nri_sync_timeout)
            sandboxes.nri = containers.nri = nri
        streams = StreamService(
            reactor,
            config.stream_address,
            StreamingBackend(reactor, threadpool, containers, sandboxes),
            tls_cert=config.stream_tls_cert or None,
            tls_key=config.stream_tls_key or None,
            idle_timeout=config.stream_idle_timeout,
        )
        engine = Engine(config, reactor, threadpool, images=images, sandboxes=sandboxes, containers=containers,
                        stats=StatsCollector(reactor, threadpool, layout, containers, sandboxes), streams=streams)
        engine.load()
    except BaseException:
        claim.release()
        raise
    bridge = ReactorBridge(reactor)
    top = MultiService()
    streams.setServiceParent(top)  # listening before the RPCs that hand out its URLs are served
    if nri is not None:
        nri.setServiceParent(top)  # plugins may connect (and synchronize) before the CRI is served
    grpc_service = GrpcServerService(
        claim,
        [
            generic_handler(RUNTIME_SERVICE, RuntimeService(engine, bridge), pb),
            generic_handler(IMAGE_SERVICE, ImageService(engine, bridge), pb),
        ],
        bridge,
        max_workers=config.grpc_workers,
    )
    grpc_service.setServiceParent(top)
    # Added last: started after, stopped before, the services above.
    _Lifecycle(engine).setServiceParent(top)
    return top


def makeService(options: Options) -> IService:
    """twistd's entry point. A start-up refusal is one line on stderr and
    exit status 1, not a traceback."""
    try:
        return build_service(options.config)
    except RktletError as e:
        sys.stderr.write(f"rktlet: {e}\n")
        raise SystemExit(1) from None
