"""``twistd rktlet``: the command-line options and the service tree.

``makeService`` composes; the logic lives in the engine, the servicers and
the drivers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.python import usage

from rktlet import config as config_module
from rktlet import __version__, logs, preflight, sdnotify
from rktlet.config import OPTIONS, Config, Option
from rktlet.cri.bridge import ReactorBridge
from rktlet.cri.dispatch import generic_handler
from rktlet.cri.image_service import ImageService
from rktlet.cri.proto import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from rktlet.cri.runtime_service import RuntimeService
from rktlet.cri.server import GrpcServerService
from rktlet.cri.socket_claim import SocketClaim, claim_socket
from rktlet.errors import RktletError
from rktlet.image.manager import ImageLimits, ImageManager
from rktlet.image.registry import RegistryClient
from rktlet.image.settings import PullSettings
from rktlet.image.store import ImageStore
from rktlet.metrics import Metrics
from rktlet.metrics.server import MetricsService
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
from rktlet.reload import Reloader
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

    def opt_help(self) -> None:
        """print this help and exit"""
        print(self)
        sys.exit(0)

    def opt_version(self) -> None:
        """print rktlet's version and those of the runtimes, conmon and CNI plugins it finds, then exit"""
        try:
            config = self._load()
        except RktletError:
            config = Config()  # the options given so far are wrong: the defaults' programs
        print(preflight.version_text(config))
        sys.exit(0)

    def _load(self) -> Config:
        return config_module.load({o.key: self.get(o.key) for o in OPTIONS}, self.get("config"))

    def postOptions(self) -> None:
        try:
            self.config = self._load()
        except RktletError as e:
            raise usage.UsageError(str(e)) from None
        # Parsed before twistd's own options are settled: the log observer
        # twistd installs is ours, so the format can be JSON (and change).
        logs.install_for_twistd(getattr(self, "parent", None), self.config.log_format)


def _appender(opt: Option) -> Callable[[Options, str], None]:
    def append(self: Options, value: str) -> None:
        self[opt.key].append(value)

    # One line: twisted prints a handler's docstring as the option's help.
    append.__doc__ = opt.help
    return append


# A repeatable option is a handler that appends (a parameter keeps only the last value).
for _opt in OPTIONS:
    if _opt.repeatable:
        setattr(Options, f"opt_{_opt.attr}", _appender(_opt))


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


class Daemon(MultiService):
    """The daemon: its start-up work, then the services that serve.

    Building the tree only checks and constructs; what changes the host
    happens here, when twistd starts the service: the process becomes its
    monitors' subreaper, claims the CRI socket (so a second daemon stops
    before it touches any state), and loads and reconciles the persisted
    state; then the children start. The claim is released after every
    child has stopped.
    """

    def __init__(self, config: Config, engine: Engine) -> None:
        super().__init__()
        self._config = config
        self._engine = engine
        self.claim: SocketClaim | None = None

    def startService(self) -> None:
        try:
            self._start_up()
            try:
                MultiService.startService(self)  # the listeners: a port in use is refused here
            except BaseException:
                self.claim.release()
                raise
        except RktletError as e:
            # A refusal is one line on stderr and exit status 1, not a
            # traceback. twistd has replaced sys.stderr with its log by now.
            log.error("not starting: {error}", error=str(e))
            for line in str(e).splitlines():
                sys.__stderr__.write(f"rktlet: {line}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None

    def _start_up(self) -> None:
        try:
            # conmon monitors daemonize (see rktlet.oci.conmon): as a subreaper
            # the daemon gets them as children, watches and reaps them.
            become_subreaper()
        except OSError as e:
            log.warn("{error}; container monitors will be PID 1's children", error=str(e))
        self.claim = claim_socket(self._config.socket)
        try:
            self._engine.load()
        except BaseException:
            self.claim.release()
            raise

    def stopService(self) -> Deferred:
        d = MultiService.stopService(self)

        def release(result: Any) -> Any:
            if self.claim is not None:
                self.claim.release()
            return result

        return d.addBoth(release)


def build_service(config: Config, reactor: Any = None, euid: int | None = None,
                  host: preflight.Host | None = None) -> Daemon:
    """The daemon's service tree for *config*: checked and constructed, with
    nothing started (see :class:`Daemon`).

    :param euid: the effective uid to check (default: this process's).
    :param host: the machine the start-up checks look at (default: this one).
    :raises StartupError: the daemon must not start (one line per reason).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    logs.set_level(config.log_level)
    logs.set_format(config.log_format)
    # The same checks as `rktlet check`, refusing with the same lines.
    machine = host or preflight.Host(euid=os.geteuid() if euid is None else euid)
    report = preflight.run_checks(config, machine)
    for result in report.warnings:
        log.warn("{line}", line=result.line)
    if report.failures:
        raise preflight.PreflightFailed(report.failures)
    reaper = describe_reaper()
    if reaper.startswith("compiled"):
        log.info("exec reaper: {reaper}", reaper=reaper)
    else:
        log.warn("exec reaper: {reaper}; ExecSync is slower with it", reaper=reaper)
    # Long file-system work (unpacking, cgroup removal, disk-usage walks)
    # must leave threads for the quick reads Status and the stats need.
    reactor.suggestThreadPoolSize(config.blocking_threads)
    threadpool = reactor.getThreadPool()
    # Reading the cgroup layout is a check (it refuses a host it cannot
    # use) whose answer the drivers are built with.
    layout = cgroups.detect()
    real_host = RealHost(reactor, layout, threadpool)
    # Prometheus metrics (--metrics-address): handed to the layers that
    # report events; state is read from their snapshots at scrape time.
    metrics = Metrics(reactor) if config.metrics_address else None
    metrics_service = None
    if metrics is not None:
        metrics_service = MetricsService(reactor, config.metrics_address, metrics.registry,
                                         tls_cert=config.metrics_tls_cert or None,
                                         tls_key=config.metrics_tls_key or None,
                                         probes=(metrics.reactor_lag,))
    pull_settings = PullSettings.from_config(config)
    images = ImageManager(
        reactor,
        ImageStore(config.root),
        RegistryClient(reactor, pull_settings.is_insecure, pull_settings.mirror_map(),
                       max_manifest_size=config.max_manifest_size),
        threadpool,
        pull_progress_timeout=pull_settings.progress_timeout,
        settings=pull_settings,
        limits=ImageLimits(
            max_bytes=config.max_image_bytes,
            max_inodes=config.max_image_inodes,
            max_layers=config.max_image_layers,
            max_config_size=config.max_image_config_size,
            max_concurrent_downloads=config.max_concurrent_downloads,
        ),
    )
    cni = CNI(reactor, config.cni_conf_dir, config.cni_bin_dir, os.path.join(config.root, "cni"))
    sandboxes = SandboxManager(
        reactor,
        threadpool,
        config,
        PodStore(config.root),
        metrics.network.wrap(cni) if metrics is not None else cni,
        Handlers(config.handlers),
        real_host,
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
        runtimes, conmons, real_host,
    )
    if metrics is not None:
        images.metrics = metrics.images
        containers.metrics = metrics.containers
        metrics.watch_pods(sandboxes.snapshots, containers.snapshots)
        metrics.watch_image_store(images.store)
        metrics.watch_cni_deletes(cni, sandboxes.snapshots)
    nri = None
    if config.nri_socket:
        nri = NRI(reactor, config.nri_socket, lambda: (sandboxes.list(), containers.list()),
                  runtime_version=__version__, request_timeout=config.nri_request_timeout,
                  sync_timeout=config.nri_sync_timeout)
        sandboxes.nri = containers.nri = nri
    backend = StreamingBackend(reactor, threadpool, containers, sandboxes)
    streams = StreamService(
        reactor,
        config.stream_address,
        metrics.streams.wrap(backend) if metrics is not None else backend,
        tls_cert=config.stream_tls_cert or None,
        tls_key=config.stream_tls_key or None,
        idle_timeout=config.stream_idle_timeout,
    )
    engine = Engine(config, reactor, threadpool, images=images, sandboxes=sandboxes, containers=containers,
                    stats=StatsCollector(reactor, threadpool, layout, containers, sandboxes), streams=streams)
    bridge = ReactorBridge(reactor)
    rpc_metrics = metrics.rpc if metrics is not None else None
    top = Daemon(config, engine)
    if metrics_service is not None:
        metrics_service.setServiceParent(top)  # scrapable before the CRI is served, until after it stops
    streams.setServiceParent(top)  # listening before the RPCs that hand out its URLs are served
    if nri is not None:
        nri.setServiceParent(top)  # plugins may connect (and synchronize) before the CRI is served
    grpc_service = GrpcServerService(
        config.socket,
        [
            generic_handler(RUNTIME_SERVICE, RuntimeService(engine, bridge), pb, rpc_metrics),
            generic_handler(IMAGE_SERVICE, ImageService(engine, bridge), pb, rpc_metrics),
        ],
        bridge,
        max_workers=config.grpc_workers,
    )
    grpc_service.setServiceParent(top)
    # Added last: started after, stopped before, the services above.
    _Lifecycle(engine).setServiceParent(top)
    Reloader(reactor, threadpool, config, lambda new: _apply_reloaded(engine, images, new)).setServiceParent(top)
    return top


def _apply_reloaded(engine: Engine, images: ImageManager, config: Config) -> None:
    """Make the reloadable part of *config* current (see rktlet.reload)."""
    logs.set_level(config.log_level)
    logs.set_format(config.log_format)
    images.configure(PullSettings.from_config(config))
    engine.config = config  # what Status reports


def makeService(options: Options) -> IService:
    """twistd's entry point. A start-up refusal, here or when the service
    starts (:class:`Daemon`), is one line on stderr and exit status 1, not a
    traceback."""
    try:
        return build_service(options.config)
    except RktletError as e:
        for line in str(e).splitlines():
            sys.stderr.write(f"rktlet: {line}\n")
        raise SystemExit(1) from None
