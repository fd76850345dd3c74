"""Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox and the
queries, with persistence and recovery.

A sandbox is made in steps — files, pinned namespaces, /dev/shm, cgroup,
CNI attachment, infra process — each with its undo. A failed step undoes the
ones before it. The record is persisted as CREATING before the first step and
as READY after the last, so a daemon killed in between finds the half-made
pod at start-up and undoes it (every undo is idempotent and works from what
the record says may exist).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool

from rktlet import debugpoints, logs
from rktlet.config import Config
from rktlet.deferutil import Shared
from rktlet.errors import AlreadyExists, FailedPrecondition, InvalidArgument, RktletError
from rktlet.fsutil import PRIVATE_DIR, make_dir, set_mode, write_atomic
from rktlet.network import dns
from rktlet.network.cni import Attachment, PortMapping
from rktlet.network.default_network import ensure_default_network
from rktlet.oci.handlers import Handlers
from rktlet.oci.infra import InfraProcess
from rktlet.pod import ids
from rktlet.pod.drivers import Host, Network
from rktlet.pod.records import Records
from rktlet.pod.sandbox import CREATING, MODE_NODE, MODE_POD, NOTREADY, READY, Sandbox
from rktlet.pod.spec import SandboxSpec
from rktlet.pod.store import PodStore

if TYPE_CHECKING:
    from rktlet.nri.runtime import NRI

log = logs.logger("rktlet.pod.sandboxes")

# Where pods without a cgroup_parent go (cgroupfs path).
DEFAULT_CGROUP_ROOT = "/rktlet"

# The files containers bind-mount as their /etc/resolv.conf, /etc/hosts and
# /etc/hostname: readable by any user inside the container (a non-root
# container user resolves names); host users cannot reach them (the pod dir
# is 0700).
POD_ETC_FILE_MODE = 0o644


class PodContainers(Protocol):
    """What stopping and removing a pod needs of its containers (the
    container manager, handed over by the coordinator: the engine)."""

    async def stop_pod_containers(self, sb: Sandbox) -> None:
        """Stop the pod's running containers (at once)."""

    async def remove_pod_containers(self, sb: Sandbox) -> None:
        """Remove the pod's containers."""


class SandboxManager:
    """Owns every sandbox record; used on the reactor thread only.

    :param reactor: the clock (creation times), thread handoff.
    :param threadpool: where blocking work (mounts, namespaces, files) runs.
    :param config: the daemon's configuration.
    :param store: durable sandbox records.
    :param network: the pod network (CNI).
    :param handlers: the configured runtime handlers.
    :param host: mounts, pinned namespaces, cgroups and infra processes
        (:class:`rktlet.oci.host.RealHost`).
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        config: Config,
        store: PodStore,
        network: Network,
        handlers: Handlers,
        host: Host,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._config = config
        self._store = store
        self._cni = network
        self.handlers = handlers
        self._host = host
        # The live records (reactor thread only), their keys and locks,
        # their published snapshots (any thread): rktlet.pod.records.
        self.records: Records[Sandbox] = Records("pod sandbox", store)
        self.sandboxes = self.records.live
        self.snapshots = self.records.snapshots
        self._creating: dict[str, Shared] = {}
        self._pods_dir = os.path.join(config.run_dir, "pods")
        # NRI: the plugin runtime, or None (no NRI).
        self.nri: NRI | None = None
        # Ids of sandboxes being removed: they accept no new container.
        self.removing: set[str] = set()
        #: ``handler → Awaitable[features]``: what the handler's runtime
        #: supports (``runc features``), once known; set by the engine.
        #: None: not checked (tests without runtimes).
        self.runtime_features: Callable[[str], Awaitable[Any]] | None = None

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def _now_ns(self) -> int:
        """Now, in ns since the epoch, by the reactor's clock (a test's Clock drives it)."""
        return int(self._reactor.seconds() * 1e9)

    # -- start-up ---------------------------------------------------------------

    def load(self) -> list[Sandbox]:
        """Read the records (blocking: at start-up). Pods whose namespaces
        or infra process are gone (a reboot) become NOTREADY.

        :returns: half-made sandboxes (CREATING) for :meth:`clean_up_half_made`.
        """
        make_dir(self._pods_dir, PRIVATE_DIR)  # 0700 whatever an older daemon made
        ensure_default_network(self._config.cni_conf_dir, self._config.default_network_subnet)
        half_made = []
        for sb in self._store.load():
            if sb.state == CREATING:
                half_made.append(sb)
                continue
            if sb.state == READY and not self._intact(sb):
                log.warn("pod sandbox {pod_id} lost its namespaces or infra process; now NOTREADY", pod_id=sb.id)
                sb.state = NOTREADY
                self._store.save(sb)  # at start-up, before serving: blocking is fine
            for d in (sb.dir, os.path.join(sb.dir, "ns")):
                set_mode(d, PRIVATE_DIR)  # a pod dir an older daemon made
            self._add(sb)
        return half_made

    def _intact(self, sb: Sandbox) -> bool:
        if any(not self._host.namespace_pinned(p) for p in sb.namespaces.values()):
            return False
        if sb.infra_pid and not self._host.infra_alive(InfraProcess(sb.infra_pid, sb.infra_start_time)):
            return False
        return True

    # -- CNI DELs that failed -----------------------------------------------------

    def pending_cni_deletes(self) -> list[str]:
        """Ids of removed pods whose CNI DEL failed and is to be retried
        (their cached ADD is still there: IPs and port mappings held)."""
        return [i for i in self._cni.cached_ids() if i not in self.sandboxes]

    async def retry_cni_deletes(self) -> None:
        """Try the failed CNI DELs again, with the configuration and
        attachment their ADD used (the pod's namespace is gone: plugins
        release what they hold outside it). One that fails stays pending."""
        cached = await self._in_thread(self._cni.cached_attachments)
        for sandbox_id, attachment in cached.items():
            if sandbox_id in self.sandboxes:
                continue  # attached, or its own RemovePodSandbox is under way
            try:
                await self._cni.delete(attachment)
            except RktletError as e:
                log.warn("CNI DEL for removed pod sandbox {pod_id} failed again: {error}", pod_id=sandbox_id,
                         error=str(e))
                continue
            log.info("CNI DEL for removed pod sandbox {pod_id} done on retry", pod_id=sandbox_id)

    def retry_cni_deletes_every(self, interval: float) -> Any:
        """Retry failed CNI DELs now and every *interval* seconds; returns
        the LoopingCall (stop it to stop)."""
        def run() -> Deferred:
            d = Deferred.fromCoroutine(self.retry_cni_deletes())
            d.addErrback(lambda f: log.failure("retrying CNI DELs failed", failure=f))
            return d

        loop = LoopingCall(run)
        loop.clock = self._reactor
        loop.start(interval, now=True)
        return loop

    async def clean_up_half_made(self, half_made: list[Sandbox]) -> None:
        """Undo sandboxes a crash left in CREATING."""
        for sb in half_made:
            log.warn("undoing pod sandbox {pod_id} ({key}) left half-made by a crash", pod_id=sb.id, key=sb.key)
            if not sb.created_cgroups and sb.cgroup_parent == f"{DEFAULT_CGROUP_ROOT}/{sb.id}":
                # The crash came before the cgroups made were recorded; a
                # cgroup under rktlet's own root is this pod's alone.
                sb.created_cgroups = self._host.existing_cgroups(sb.cgroup_parent)
            try:
                await self._teardown(sb, remove=True)
            except Exception as e:
                log.error("could not fully undo pod sandbox {pod_id}: {error}", pod_id=sb.id, error=str(e))
            self.records.forget(sb)  # never indexed: its record only

    def _add(self, sb: Sandbox) -> None:
        """Index *sb* and show it (by id: lists leave CREATING pods out)."""
        self.records.add(sb)
        self.snapshots.publish(sb)

    def _lock(self, sandbox_id: str) -> DeferredLock:
        return self.records.lock(sandbox_id)

    # -- lookups ----------------------------------------------------------------

    def find(self, id_or_prefix: str) -> Sandbox | None:
        """The live sandbox with this id or unique id prefix, if any (reactor)."""
        return self.records.find(id_or_prefix)

    def get(self, id_or_prefix: str) -> Sandbox:
        """Like :meth:`find`, but a missing sandbox is :class:`NotFound`."""
        return self.records.get(id_or_prefix)

    def list(self, id_prefix: str = "", state: str | None = None, labels: dict[str, str] | None = None) -> list[Sandbox]:
        """Snapshots of the sandboxes matching every filter given (pods
        being created are not listed); any thread."""
        if id_prefix:
            try:
                sb = self.snapshots.find(id_prefix)
            except InvalidArgument:
                return []
            candidates: list[Sandbox] | None = [sb] if sb else []
        else:
            candidates = None

        def keep(sb: Sandbox) -> bool:
            return (sb.state != CREATING and (state is None or sb.state == state)
                    and not (labels and any(sb.labels.get(k) != v for k, v in labels.items())))

        return self.snapshots.select(keep, candidates)

    def status(self, id_or_prefix: str) -> Sandbox:
        """The snapshot of one sandbox, for PodSandboxStatus; any thread.

        :raises NotFound: no such sandbox.
        """
        return self.snapshots.get(id_or_prefix)

    # -- RunPodSandbox ----------------------------------------------------------

    async def run(self, spec: SandboxSpec) -> Sandbox:
        """Create a sandbox, or return the one a retried request already made."""
        existing = self.records.by_key(spec.key)
        if existing is not None:
            if existing.fingerprint != spec.fingerprint:
                raise AlreadyExists(
                    f"pod sandbox name {spec.key} is reserved by sandbox {existing.id} with a different config"
                )
            if existing.state == CREATING:
                log.info("RunPodSandbox retried for {key}: waiting for the first attempt ({pod_id})", key=spec.key,
                         pod_id=existing.id)
                await self._creating[existing.id].wait()
                return self.get(existing.id)
            if existing.state == READY:
                return existing
            raise AlreadyExists(f"pod sandbox name {spec.key} is reserved by stopped sandbox {existing.id}; remove it first")
        handler = self.handlers.select(spec.handler, spec.annotations)
        if spec.userns is not None and self.runtime_features is not None:
            features = await self.runtime_features(handler)
            if features is not None and not features.user_namespaces:
                raise InvalidArgument(
                    f"config.linux.security_context.namespace_options.userns_options: runtime handler {handler!r} "
                    f"does not support user namespaces (its runc features report no idmapped mounts: runc 1.2 "
                    "or later is needed)")
            existing = self.records.by_key(spec.key)  # another attempt made it meanwhile
            if existing is not None:
                return await self.run(spec)
        sb = self._new_record(spec, handler)
        self._add(sb)
        operation = Deferred.fromCoroutine(self._create(sb, spec))
        self._creating[sb.id] = Shared(operation, cancel_when_abandoned=False)
        try:
            return await self._creating[sb.id].wait()
        finally:
            self._creating.pop(sb.id, None)

    def _new_record(self, spec: SandboxSpec, handler: str) -> Sandbox:
        sandbox_id = ids.new_id()
        directory = os.path.join(self._pods_dir, sandbox_id)
        ns_dir = os.path.join(directory, "ns")
        kinds = []
        if spec.network_mode != MODE_NODE:
            kinds += ["net", "uts"]  # a host-network pod keeps the host's hostname too
        if spec.ipc_mode != MODE_NODE:
            kinds.append("ipc")
        if spec.userns is not None:
            kinds.insert(0, "user")
        return Sandbox(
            id=sandbox_id,
            name=spec.name,
            namespace=spec.namespace,
            uid=spec.uid,
            attempt=spec.attempt,
            fingerprint=spec.fingerprint,
            created_at=self._now_ns(),
            handler=handler,
            # No hostname given: the node's, as containerd and CRI-O do (the kubelet
            # always sends one; other clients such as critest may not).
            hostname=spec.hostname or os.uname().nodename,
            log_directory=spec.log_directory,
            labels=dict(spec.labels),
            annotations=dict(spec.annotations),
            network_mode=spec.network_mode,
            pid_mode=spec.pid_mode,
            ipc_mode=spec.ipc_mode,
            dir=directory,
            namespaces={k: os.path.join(ns_dir, k) for k in kinds},
            shm=os.path.join(directory, "shm") if spec.ipc_mode != MODE_NODE else "",
            cgroup_parent=spec.cgroup_parent or f"{DEFAULT_CGROUP_ROOT}/{sandbox_id}",
            port_mappings=[vars(p) for p in spec.port_mappings],
            dns={"servers": list(spec.dns_servers), "searches": list(spec.dns_searches), "options": list(spec.dns_options)},
            sysctls=dict(spec.sysctls),
            userns=spec.userns.to_json() if spec.userns is not None else {},
        )

    async def _create(self, sb: Sandbox, spec: SandboxSpec) -> Sandbox:
        started = time.monotonic()
        try:
            self.records.commit(sb)  # CREATING: a crash from here on is undone at start-up
            userns = sb.user_namespace
            if userns is None:
                await self._in_thread(self._make_files_and_namespaces, sb, spec.shm_size)
            else:
                # Made by a child process inside the new user namespace
                # (rktlet.oci.userns), so that it owns the pod's others.
                await self._in_thread(self._make_files, sb)
                await self._host.create_pinned_namespaces_in_userns(
                    sb.namespaces, userns, hostname=sb.hostname if "uts" in sb.namespaces else None,
                    sysctls=sb.sysctls)
                await self._in_thread(self._finish_namespaces, sb, spec.shm_size)
            created = await self._in_thread(self._host.ensure_cgroup, sb.cgroup_parent)
            # Only the pod's own level is the pod's: ancestors made on the way
            # (e.g. /rktlet) are shared with other pods and stay.
            sb.created_cgroups = [d for d in created if d.endswith(sb.cgroup_parent.rstrip("/"))]
            if sb.netns:
                result = await self._cni.add(self._attachment(sb))
                await debugpoints.reached(debugpoints.POD_RUN_NETWORK_ATTACHED, self._reactor)
                sb.network_attached = True
                sb.network_name = result.network_name
                sb.ips = list(result.ips)
                await self._in_thread(self._write_hosts, sb)
            if sb.pid_mode == MODE_POD:
                process = await self._host.start_infra(sb.namespaces)
                sb.infra_pid, sb.infra_start_time = process.pid, process.start_time
                await self._in_thread(self._host.add_to_cgroup, sb.cgroup_parent, process.pid)
            if self.nri is not None:
                # NRI hook: plugins see the pod before anyone else; it becomes
                # READY (visible) only once they all agreed (an error undoes it).
                await self.nri.run_pod_sandbox(sb, commit=lambda: setattr(sb, "state", READY))
            sb.state = READY
            self.records.commit(sb)
        except BaseException as e:
            try:
                await self._teardown(sb, remove=True)
            except Exception as undo_error:
                log.warn("undo of pod sandbox {pod_id} incomplete: {error}", pod_id=sb.id, error=str(undo_error))
            self.records.forget(sb)
            if isinstance(e, Exception) and not isinstance(e, CancelledError):
                log.warn("pod sandbox {pod_id} ({key}) failed to run: {error}; undone", pod_id=sb.id, key=sb.key,
                         pod_name=sb.name, pod_namespace=sb.namespace, error=str(e))
                logs.mark_logged(e)
            raise
        log.info("pod sandbox {pod_id} ({key}) ready in {duration_ms:.0f}ms, IPs {ips}", pod_id=sb.id, key=sb.key,
                 pod_name=sb.name, pod_namespace=sb.namespace, duration_ms=(time.monotonic() - started) * 1000,
                 ips=",".join(sb.ips) or "host network")
        return sb

    def _attachment(self, sb: Sandbox) -> Attachment:
        return Attachment(
            container_id=sb.id,
            netns=sb.netns,
            pod_name=sb.name,
            pod_namespace=sb.namespace,
            pod_uid=sb.uid,
            port_mappings=tuple(
                PortMapping(p["host_port"], p["container_port"], p["protocol"], p["host_ip"])
                for p in sb.port_mappings
                if p["host_port"]
            ),
            dns={k: v for k, v in sb.dns.items() if v} or None,
        )

    def _make_files_and_namespaces(self, sb: Sandbox, shm_size: int) -> None:
        """Blocking part of creation: files, pinned namespaces, /dev/shm."""
        self._make_files(sb)
        hostname = sb.hostname if "uts" in sb.namespaces else None
        self._host.create_pinned_namespaces(sb.namespaces, hostname=hostname, sysctls=sb.sysctls)
        self._finish_namespaces(sb, shm_size)

    def _finish_namespaces(self, sb: Sandbox, shm_size: int) -> None:
        """Blocking, once the namespaces are pinned: ``lo`` up, /dev/shm;
        in a pod with its own user namespace, the pod's files and /dev/shm
        belong to its root (they appear root's inside, as on a host)."""
        if sb.netns:
            self._host.bring_up_loopback(sb.netns)
        userns = sb.user_namespace
        owner = (userns.root_uid, userns.root_gid) if userns is not None else None
        if sb.shm:
            self._host.mount_shm(sb.shm, shm_size, owner=owner)
        if owner is not None:
            self._host.give_to([os.path.join(sb.dir, n) for n in ("resolv.conf", "hosts", "hostname")], *owner)

    def _make_files(self, sb: Sandbox) -> None:
        """Blocking: the pod dir and its /etc files."""
        # The pod dir holds the pod's /dev/shm mount point (a 1777 tmpfs):
        # 0700, so no host user can reach it; only root (runc) mounts from it.
        make_dir(sb.dir, PRIVATE_DIR)
        make_dir(os.path.join(sb.dir, "ns"), PRIVATE_DIR)
        with open(dns.HOST_RESOLV_CONF) as f:
            host_resolv = f.read()
        write_atomic(os.path.join(sb.dir, "resolv.conf"),
                     dns.resolv_conf(sb.dns["servers"], sb.dns["searches"], sb.dns["options"], host_resolv).encode(),
                     POD_ETC_FILE_MODE)
        write_atomic(os.path.join(sb.dir, "hostname"), (sb.hostname + "\n").encode(), POD_ETC_FILE_MODE)
        self._write_hosts(sb)

    def _write_hosts(self, sb: Sandbox) -> None:
        path = os.path.join(sb.dir, "hosts")
        write_atomic(path, dns.hosts_file(sb.hostname, sb.ips).encode(), POD_ETC_FILE_MODE)
        userns = sb.user_namespace
        if userns is not None:
            self._host.give_to([path], userns.root_uid, userns.root_gid)  # a new file: the pod root's again

    # -- Stop / Remove ------------------------------------------------------------

    async def stop(self, id_or_prefix: str, containers: PodContainers | None = None) -> None:
        """StopPodSandbox: stop the containers (through *containers*, the
        coordinator's container manager), detach the network, end the infra
        process. Idempotent; an unknown id is fine (the CRI says so)."""

        async def stop(sb: Sandbox) -> None:
            if containers is not None:
                await containers.stop_pod_containers(sb)
            if self.nri is not None and sb.state == READY:
                await self.nri.stop_pod_sandbox(sb)  # NRI hook: once, containers stopped, pod still there
            await self._teardown(sb, remove=False)
            if sb.state != NOTREADY:
                sb.state = NOTREADY
                self.records.commit(sb)
                log.info("pod sandbox {pod_id} ({key}) stopped", pod_id=sb.id, key=sb.key, pod_name=sb.name,
                         pod_namespace=sb.namespace)

        await self._exclusively(id_or_prefix, stop, "stopping")

    async def remove(self, id_or_prefix: str, containers: PodContainers | None = None) -> None:
        """RemovePodSandbox: force-stop, then remove the containers (through
        *containers*), everything the sandbox made and its record. Idempotent."""

        async def remove(sb: Sandbox) -> None:
            self.removing.add(sb.id)  # no new container from now on
            try:
                await remove_now(sb)
            finally:
                self.removing.discard(sb.id)

        async def remove_now(sb: Sandbox) -> None:
            if containers is not None:
                await containers.stop_pod_containers(sb)
            if self.nri is not None and sb.state == READY:
                await self.nri.stop_pod_sandbox(sb)  # NRI hook: removed without a stop first
            if containers is not None:
                await containers.remove_pod_containers(sb)
            await self._teardown(sb, remove=True)
            await debugpoints.reached(debugpoints.POD_REMOVE_TORN_DOWN, self._reactor)
            if self.nri is not None:
                await self.nri.remove_pod_sandbox(sb)  # NRI hook
            self.records.forget(sb)
            log.info("pod sandbox {pod_id} ({key}) removed", pod_id=sb.id, key=sb.key, pod_name=sb.name,
                     pod_namespace=sb.namespace)

        await self._exclusively(id_or_prefix, remove, "removing")

    async def _exclusively(self, id_or_prefix: str, work: Callable[[Sandbox], Awaitable[None]], what: str) -> None:
        """Run *work* on the sandbox once it is made, one operation at a
        time per sandbox; nothing to do when it is unknown or gone meanwhile.
        A failure is logged once (*what*: ``stopping``...), with the pod's id."""
        sb = self.find(id_or_prefix)
        if sb is None:
            return
        await self._wait_created(sb)
        lock = self._lock(sb.id)
        await lock.acquire()
        try:
            if sb.id in self.sandboxes:
                await work(sb)
        except Exception as e:
            if not logs.was_logged(e) and not isinstance(e, CancelledError):
                log.warn("{what} pod sandbox {pod_id} ({key}) failed: {error}", what=what, pod_id=sb.id, key=sb.key,
                         error=str(e))
                logs.mark_logged(e)
            raise
        finally:
            lock.release()

    async def _wait_created(self, sb: Sandbox) -> None:
        creating = self._creating.get(sb.id)
        if creating is not None:
            try:
                await creating.wait()
            except Exception:
                pass  # it undid itself

    async def _teardown(self, sb: Sandbox, remove: bool) -> None:
        """Release what the sandbox holds: infra process, CNI attachment,
        network namespace — and with *remove*, everything else. Each part is
        idempotent; a CNI DEL that fails (config or plugin gone) is logged
        and does not keep the rest from being released."""
        if sb.infra_pid:
            await self._host.stop_infra(InfraProcess(sb.infra_pid, sb.infra_start_time))
        # A pod that never became ready (undone after a failure or a crash)
        # may be attached without knowing it: DEL is idempotent, so run it.
        if sb.network_attached or (sb.state == CREATING and sb.netns):
            try:
                await self._cni.delete(self._attachment(sb))
            except RktletError as e:
                log.warn("CNI DEL for pod sandbox {pod_id} failed: {error}; releasing the rest anyway, DEL is retried "
                         "(--cni-del-retry-interval)", pod_id=sb.id, error=str(e))
            sb.network_attached = False
        pinned = [sb.netns] if sb.netns else []
        if remove:
            pinned = list(sb.namespaces.values())
        await self._in_thread(self._release_files, sb, pinned, remove)
        if remove and sb.created_cgroups:
            heir = self._cgroup_heir(sb)
            if heir is not None:
                # Another pod lives in this cgroup (the same cgroup_parent) or
                # below it: removing it would kill that pod's processes. That
                # pod takes the cgroups over and removes them when it goes.
                heir.created_cgroups = sorted(set(heir.created_cgroups) | set(sb.created_cgroups))
                self.records.commit(heir)
                log.info("pod sandbox {pod_id} leaves its cgroup {cgroup} to pod sandbox {heir}, which lives in it",
                         pod_id=sb.id, cgroup=sb.cgroup_parent, heir=heir.id)
            else:
                await self._in_thread(self._host.remove_cgroups, sb.created_cgroups)
            sb.created_cgroups = []

    def _cgroup_heir(self, sb: Sandbox) -> Sandbox | None:
        """Another pod whose cgroup is *sb*'s or inside it, if any."""
        mine = sb.cgroup_parent.rstrip("/") + "/"
        for other in self.sandboxes.values():
            if other.id != sb.id and (other.cgroup_parent.rstrip("/") + "/").startswith(mine):
                return other
        return None

    def _release_files(self, sb: Sandbox, pinned: list[str], remove: bool) -> None:
        self._host.remove_pinned_namespaces(pinned)
        if remove:
            if sb.shm:
                self._host.unmount(sb.shm)
            shutil.rmtree(sb.dir, ignore_errors=True)

    async def update_resources(self, id_or_prefix: str, resources: dict[str, Any]) -> None:
        """UpdatePodSandboxResources: write pod-level limits (OCI
        ``linux.resources``) into the pod's cgroup."""
        sb = self.get(id_or_prefix)
        if sb.state != READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready (state {sb.state})")
        written = await self._in_thread(self._host.set_cgroup_resources, sb.cgroup_parent, resources)
        log.info("pod sandbox {pod_id}: resources set ({files})", pod_id=sb.id, files=", ".join(written) or "nothing to set")

    # -- reporting ------------------------------------------------------------------

    def verbose_info(self, sb: Sandbox) -> dict[str, Any]:
        """What PodSandboxStatus verbose shows about *sb*."""
        return {
            "pid": sb.infra_pid,
            "netns": sb.netns,
            "namespaces": sb.namespaces,
            "cgroupParent": sb.cgroup_parent,
            "runtimeHandler": sb.handler,
            "cniResult": (self._cni.cached(sb.id) or {}).get("result"),
            "files": {n: os.path.join(sb.dir, n) for n in ("resolv.conf", "hosts", "hostname")},
            "shm": sb.shm,
        }

