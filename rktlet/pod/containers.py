"""Containers in pods: rkt's ``app add / start / stop / rm``.

CreateContainer prepares everything without starting a process: the root
filesystem (an overlay of the image's unpacked layers and a writable layer of
the container's own), the OCI bundle with its runtime spec, the record.
StartContainer hands the bundle to conmon (it forks its monitor, which the
daemon, a child subreaper, adopts as its child), which runs ``runc create``;
once runc reports the container created, ``runc start`` runs the app. Exits
are learnt from conmon — also after a daemon restart, from its exit file —
and an exited container is deleted from runc at once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool

from rktlet import debugpoints, logs
from rktlet.deferutil import Shared
from rktlet.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, RktletError, RuntimeFailure
from rktlet.fsutil import PRIVATE_DIR, PRIVATE_FILE, make_dir, set_mode, write_json_atomic
from rktlet.image.store import ImageRecord
from rktlet.oci import image_volumes, users
from rktlet.oci.container_config import ContainerConfig, ImageDefaults, Mount, PodContext, Resources
from rktlet.oci.exec import RUNC_EXEC_FAILED
from rktlet.oci.spec import HostInfo, build_spec, linux_resources
from rktlet.oci.userns import IDMappedRoot
from rktlet.pod import ids, recovery
from rktlet.pod import events as event_kinds
from rktlet.pod.container import CREATED, EXITED, RUNNING, Container
from rktlet.pod.drivers import ContainerReports, Host, ImageLookup, Monitor, MonitorDriver, Runtime
from rktlet.pod.events import EventHub
from rktlet.pod.records import Records
from rktlet.pod.sandbox import MODE_NODE, READY, Sandbox
from rktlet.pod.store import RecordStore

if TYPE_CHECKING:
    from rktlet.nri.runtime import NRI
    from rktlet.pod.sandboxes import SandboxManager

log = logs.logger("rktlet.pod.containers")


# ReopenContainerLog waits for conmon's new log file: 400 polls of 5 ms.
_REOPEN_POLLS = 400
_REOPEN_POLL_INTERVAL = 0.005


def _inode(path: str) -> int | None:
    """The inode at *path*, or ``None`` when nothing is there."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _own_oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read().strip())


#: The bundle dir of a container in a pod with its own user namespace (see
#: ContainerManager._prepare_bundle); the dir of all bundles is the same.
USERNS_BUNDLE_MODE = 0o711

#: runc update's words when the kernel refused a value of the request.
_REFUSED_VALUE = ("unable to set memory limit", ": invalid argument", ": device or resource busy")


def _chains_of(c: Container) -> list[str]:
    """The image layers *c* uses: its root file system's, its image volumes'."""
    return list(c.chain_ids) + [chain for m in c.mounts for chain in m.get("image_chain_ids", ())]


def _mount_record(m: Mount, volume: ImageRecord | None) -> dict[str, Any]:
    """A config mount as the record keeps it; an image volume's with its
    image (id, layers), its sub path, and (once mounted) its mount point as
    host path."""
    out: dict[str, Any] = {"container_path": m.container_path, "host_path": m.host_path, "readonly": m.readonly,
                           "propagation": m.propagation, "recursive_read_only": m.recursive_read_only}
    if m.uid_mappings:
        out.update(uid_mappings=[r.to_json() for r in m.uid_mappings],
                   gid_mappings=[r.to_json() for r in m.gid_mappings])
    if volume is not None:
        out.update(image=m.image, image_ref=volume.id, user_specified_image=m.user_specified_image,
                   image_sub_path=m.image_sub_path, image_chain_ids=list(volume.chain_ids))
    return out


class ContainerManager:
    """Owns every container record; used on the reactor thread only.

    :param reactor: the clock (timers, times of records and events),
        thread handoff.
    :param threadpool: where mounts and file work run.
    :param run_dir: the daemon's ``--run-dir`` (bundles live there).
    :param root: the daemon's ``--root`` (writable layers live there).
    :param store: durable container records.
    :param sandboxes: the sandbox manager (pods are looked up there).
    :param images: the images and their layers.
    :param runtimes: handler name → OCI runtime.
    :param monitors: handler name → container monitor driver (conmon).
    :param host: mounts and cgroups (:class:`rktlet.oci.host.RealHost`).
    :param events: where lifecycle events are published.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        run_dir: str,
        root: str,
        store: RecordStore[Container],
        sandboxes: SandboxManager,
        images: ImageLookup,
        runtimes: dict[str, Runtime],
        monitors: dict[str, MonitorDriver],
        host: Host,
        events: EventHub | None = None,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._bundles = os.path.join(run_dir, "containers")
        self._layers = os.path.join(root, "containers")
        self._store = store
        self._sandboxes = sandboxes
        self._images = images
        self._runtimes = runtimes
        self._conmons = monitors
        self._host = host
        self.events = events or EventHub()
        # The live records (reactor thread only), their keys and locks,
        # their published snapshots (any thread): rktlet.pod.records.
        # Containers whose NRI CreateContainer is in progress are hidden.
        self._nri_hidden: set[str] = set()
        self.records: Records[Container] = Records("container", store, hidden=lambda c: c.id in self._nri_hidden)
        self.containers = self.records.live
        self.snapshots = self.records.snapshots
        # ContainerStatus verbose, per snapshot: id → (snapshot, JSON).
        self._verbose: dict[str, tuple[Container, str]] = {}
        self._monitors: dict[str, Monitor] = {}
        # Exited containers already deleted from the runtime (see _release).
        self._released: set[str] = set()
        self._daemon_oom = _own_oom_score_adj()
        self._host_info = HostInfo.probe()  # what the spec builder needs to know of this host, read once
        # NRI: the plugin runtime, or None (no NRI).
        self.nri: NRI | None = None
        # Where exits and re-adoptions are reported
        # (rktlet.metrics.pods.ContainerMetrics), or None (no metrics).
        self.metrics: ContainerReports | None = None
        # Start-up recovery (rktlet.pod.recovery): CREATED records to check
        # against the runtime, ids that have files but no record.
        self._unreconciled: list[Container] = []
        self._orphans: set[str] = set()
        # Removed containers whose files are being removed: id → image layers.
        self._removing: dict[str, list[str]] = {}
        # Exited containers being deleted from the runtime (see _release).
        self._releasing: dict[str, Shared] = {}

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def _now_ns(self) -> int:
        """Now, in ns since the epoch, by the reactor's clock (a test's Clock drives it)."""
        return int(self._reactor.seconds() * 1e9)

    def _commit(self, c: Container) -> None:
        """Persist *c* as it is now, then publish its snapshot (before the
        RPC that changed it answers)."""
        self.records.commit(c)

    def _drop(self, c: Container) -> None:
        """Forget *c*: indexes, snapshot, cached status and record."""
        self._verbose.pop(c.id, None)
        self.records.forget(c)

    def _lock(self, container_id: str) -> DeferredLock:
        return self.records.lock(container_id)

    # -- start-up --------------------------------------------------------------

    def load(self) -> None:
        """Read the records and re-adopt running containers (blocking, at
        start-up): a container that exited while the daemon was down gets its
        real exit code and time from conmon's exit file."""
        # 0700 whatever an older daemon made: no host user may reach a
        # container's root filesystem, bundle or writable layer.
        # The bundles' dir is 0711: runc reaches a user-namespaced container's
        # root through it as an unprivileged host uid (see _prepare_bundle).
        make_dir(self._bundles, USERNS_BUNDLE_MODE)
        make_dir(self._layers, PRIVATE_DIR)
        for runtime in self._runtimes.values():
            make_dir(os.path.dirname(runtime.state_root), PRIVATE_DIR)
            make_dir(runtime.state_root, PRIVATE_DIR)
        for conmon in self._conmons.values():
            make_dir(conmon.exits_dir, PRIVATE_DIR)
            make_dir(conmon.socket_dir, PRIVATE_DIR)
        for c in self._store.load():
            self._narrow_modes(c)
            self.records.add(c)
            if c.state == CREATED:
                # Rule 5 of rktlet.pod.recovery, once the reactor runs; locked
                # until then, so that no StartContainer comes first.
                self._lock(c.id).acquire()
                self._unreconciled.append(c)
            if c.state != RUNNING:
                continue
            sb = self._sandboxes.find(c.sandbox_id)
            conmon = self._conmons[sb.handler if sb else "runc"]
            ended = conmon.read_exit(c.id, c.bundle)
            if ended is not None:
                self._record_exit(c, *ended)
                self._release_soon(c)
                continue
            if conmon.leftover_pid(c.id, c.bundle) is None:
                if self.metrics is not None:
                    self.metrics.monitor_lost()
                self._record_exit(c, 255, self._now_ns(), False, message="conmon vanished while rktlet was down")
                self._release_soon(c)
                continue
            monitor = conmon.adopt(c.id, c.bundle, c.conmon_pid, c.container_pid)
            self._watch(c, monitor)
            if self.metrics is not None:
                self.metrics.monitor_readopted()
            log.info("re-adopted running container {container_id} (conmon pid {pid})", container_id=c.id,
                     pod_id=c.sandbox_id, pid=c.conmon_pid)
        for c in self.containers.values():
            self.snapshots.publish(c)
        conmon = next(iter(self._conmons.values()), None)
        places = [self._bundles, self._layers] + ([conmon.exits_dir, conmon.socket_dir] if conmon else [])
        self._orphans = recovery.orphan_ids(places, set(self.containers))

    async def reconcile(self) -> None:
        """Start-up, once the reactor runs: the rules of
        :mod:`rktlet.pod.recovery` that need the runtime — containers left
        without a record are removed (rule 7), CREATED records are checked
        against the runtime (rule 5)."""
        try:
            in_runtime: dict[str, list[Runtime]] = {}
            for runtime in {id(r): r for r in self._runtimes.values()}.values():
                try:
                    for container_id in await runtime.list_ids():
                        in_runtime.setdefault(container_id, []).append(runtime)
                except RktletError as e:
                    log.error("start-up: cannot list the runtime's containers: {error}", error=e)
            orphans = self._orphans | {i for i in in_runtime if i not in self.containers}
            for container_id in sorted(orphans):
                try:
                    await self._remove_orphan(container_id, in_runtime.get(container_id, []))
                except Exception as e:
                    log.error("start-up: could not remove container {container_id}, left without a record: {error}",
                              container_id=container_id, error=e)
        finally:
            pending, self._unreconciled = self._unreconciled, []
            for c in pending:
                try:
                    await self._reconcile_created(c)
                except Exception as e:
                    log.error("start-up: could not check container {container_id} against the runtime: {error}",
                              container_id=c.id, error=e)
                finally:
                    self._lock(c.id).release()

    async def _remove_orphan(self, container_id: str, runtimes: list[Runtime]) -> None:
        """Rule 7: everything of a container that has no record."""
        bundle = os.path.join(self._bundles, container_id)
        conmon = next(iter(self._conmons.values()))
        await self._in_thread(conmon.kill_leftover, container_id, bundle)
        for runtime in runtimes:
            await runtime.delete(container_id, force=True)
        conmon.cleanup(conmon.paths(container_id, bundle))
        await self._in_thread(self._remove_files, bundle, os.path.join(self._layers, container_id))
        log.warn("removed container {container_id}, which a crash left without a record", container_id=container_id)

    async def _reconcile_created(self, c: Container) -> None:
        """Rule 5: a container recorded CREATED, against the runtime."""
        if self.containers.get(c.id) is not c:
            return
        runtime, conmon = self.runtime_of(c), self.conmon_of(c)
        state = await runtime.state(c.id)
        status = state.get("status") if state else None
        conmon_pid = await self._in_thread(conmon.leftover_pid, c.id, c.bundle) or 0
        whole = await self._in_thread(recovery.bundle_whole, c.bundle, self._host.is_mounted)
        outcome = recovery.created_outcome(status, conmon_pid > 0, whole)
        if outcome == recovery.KEEP:
            return
        if outcome in (recovery.ADOPT, recovery.EXITED) and state is not None:
            c.started_at = recovery.runc_created_ns(state) or self._now_ns()
        if outcome == recovery.ADOPT:
            c.conmon_pid, c.container_pid = conmon_pid, int(state.get("pid") or 0)
            c.state = RUNNING
            self._commit(c)
            self._watch(c, conmon.adopt(c.id, c.bundle, c.conmon_pid, c.container_pid))
            if self.metrics is not None:
                self.metrics.monitor_readopted()
            log.warn("container {container_id} was started when a crash cut StartContainer short: now RUNNING, conmon pid "
                     "{pid} re-adopted", container_id=c.id, pid=conmon_pid)
            self._publish(event_kinds.STARTED, c)
            return
        if outcome == recovery.LOST:
            self._record_exit(c, 255, self._now_ns(), False,
                              message="its bundle was lost while rktlet was down (a reboot?)")
            return
        ended = conmon.read_exit(c.id, c.bundle) if outcome == recovery.EXITED else None
        await self._in_thread(conmon.kill_leftover, c.id, c.bundle)
        await runtime.delete(c.id, force=True)
        conmon.cleanup(conmon.paths(c.id, c.bundle))
        if outcome == recovery.UNDO_START:
            log.warn("container {container_id} was being started when a crash cut StartContainer short: undone, it is "
                     "CREATED again", container_id=c.id)
            return
        if ended is not None:
            self._record_exit(c, *ended)
        else:
            self._record_exit(c, 255, self._now_ns(), False,
                              message="started when a crash cut StartContainer short; its exit was not recorded")
        self._released.add(c.id)

    def layers_in_use(self) -> list[str]:
        """The image layers containers use, as their root file systems and
        image volumes (kept by image garbage collection)."""
        in_use = [chain for c in self.containers.values() for chain in _chains_of(c)]
        return in_use + [chain for chains in self._removing.values() for chain in chains]

    def _publish(self, kind: str, c: Container) -> None:
        """A lifecycle event, with the snapshots of the container, its pod
        and the pod's containers (taken only when someone listens)."""
        if not self.events.listening:
            return
        snap = c.snapshot()  # as it is now: its commit may still be on its way
        pod_containers = [snap if x.id == c.id else x
                          for x in self.snapshots.select(lambda x: x.sandbox_id == c.sandbox_id)]
        self.events.publish(kind, snap, self._sandboxes.snapshots.current(c.sandbox_id), pod_containers,
                            self._now_ns())

    # -- lookups -----------------------------------------------------------------

    def find(self, id_or_prefix: str) -> Container | None:
        """The live container with this id or unique prefix, if any (reactor)."""
        return self.records.find(id_or_prefix)

    def get(self, id_or_prefix: str) -> Container:
        """Like :meth:`find`; a missing container is :class:`NotFound`."""
        return self.records.get(id_or_prefix)

    def list(self, id_prefix: str = "", sandbox_prefix: str = "", state: str | None = None,
             labels: dict[str, str] | None = None) -> list[Container]:
        """Snapshots of the containers matching every filter given; any
        thread (no lookup here blocks or hops to the reactor)."""
        if id_prefix:
            try:
                one = self.snapshots.find(id_prefix)
            except InvalidArgument:
                return []
            candidates: list[Container] | None = [one] if one else []
        else:
            candidates = None
        sandbox_id = ""
        if sandbox_prefix:
            try:
                sb = self._sandboxes.snapshots.find(sandbox_prefix)
            except InvalidArgument:
                return []
            if sb is None:
                return []
            sandbox_id = sb.id

        def keep(c: Container) -> bool:
            return ((not sandbox_id or c.sandbox_id == sandbox_id) and (state is None or c.state == state)
                    and not (labels and any(c.labels.get(k) != v for k, v in labels.items())))

        return self.snapshots.select(keep, candidates)

    def status(self, id_or_prefix: str) -> Container:
        """The snapshot of one container, for ContainerStatus; any thread.

        :raises NotFound: no such container (or not agreed by NRI yet).
        """
        return self.snapshots.get(id_or_prefix)

    # -- CreateContainer -------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig, image: str, attempt: int, fingerprint: str,
                     labels: dict[str, str], annotations: dict[str, str], log_path: str,
                     stop_signal: str = "", user_specified_image: str = "") -> Container:
        """Prepare a container in a pod; returns its record (CREATED).
        *log_path* is relative to the pod's log directory ('' for none)."""
        sb = self._sandboxes.get(sandbox_id)
        self._check_pod_accepts_containers(sb)
        full_log_path = ""
        if log_path:
            # The kubelet's log path is relative to the pod's log directory,
            # the one RunPodSandbox recorded.
            if not os.path.isabs(sb.log_directory):
                raise InvalidArgument(f"config.log_path {log_path!r}: pod sandbox {sb.id} has no log directory")
            full_log_path = os.path.join(sb.log_directory, log_path)
        key = f"{sb.id}/{config.name}/{attempt}"
        existing = self.records.by_key(key)
        if existing is not None:
            if existing.fingerprint == fingerprint:
                # A retry: the first create's result, once it is done (it
                # holds the container's lock while it works).
                first = self._lock(existing.id)
                await first.acquire()
                first.release()
                if self.containers.get(existing.id) is existing:
                    return existing
                return await self.create(sandbox_id, config, image, attempt, fingerprint, labels, annotations,
                                         log_path, stop_signal, user_specified_image)  # the first one failed
            raise AlreadyExists(f"container name {config.name!r} (attempt {attempt}) in pod {sb.id} is reserved by "
                                f"container {existing.id} with a different config")
        if any(m.recursive_read_only for m in config.mounts) and \
                not self._runtimes[sb.handler].features.recursive_read_only_mounts:
            raise InvalidArgument(f"recursive read-only mounts are not supported by runtime handler {sb.handler!r} "
                                  f"({self._runtimes[sb.handler].binary}: `runc features` lists no rro)")
        self._check_user_namespace(sb, config)
        record = self._images.find(image)
        if record is None:
            raise NotFound(f"image {image!r} not found: pull it first")
        volumes = self._find_image_volumes(config)
        image_config = self._images.config(record)
        image_defaults = ImageDefaults(
            entrypoint=image_config.entrypoint, cmd=image_config.cmd, env=image_config.env,
            working_dir=image_config.working_dir, user=image_config.user,
        )
        container_id = ids.new_id()
        c = Container(
            id=container_id, sandbox_id=sb.id, name=config.name, attempt=attempt, fingerprint=fingerprint,
            created_at=self._now_ns(), image=image, image_ref=record.id,
            image_name=(record.repo_tags or record.repo_digests or [record.id])[0],
            image_digest_ref=(record.repo_digests or [""])[0], user_specified_image=user_specified_image,
            labels=dict(labels), annotations=dict(annotations),
            # conmon needs a log; without one from the kubelet it goes beside the writable layer.
            log_path=full_log_path or os.path.join(self._layers, container_id, "container.log"),
            mounts=[_mount_record(m, volumes.get(i)) for i, m in enumerate(config.mounts)],
            bundle=os.path.join(self._bundles, container_id), layer_dir=os.path.join(self._layers, container_id),
            chain_ids=list(record.chain_ids), tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once,
            stop_signal=stop_signal or image_config.stop_signal or "SIGTERM",
        )
        # Held until the container is made (or undone): RemoveContainer, and
        # RemovePodSandbox through it, wait for it instead of racing it.
        lock = self._lock(container_id)
        await lock.acquire()
        if self.nri is not None:
            self._nri_hidden.add(container_id)
        self.records.add(c)
        lowers = self._lowers(record)
        try:
            volume_lowers = {i: self._lowers(v) for i, v in volumes.items()}
            spec, notes, user, sources = await self._in_thread(
                self._prepare_bundle, c, lowers, config, image_defaults, self._pod_context(sb), volume_lowers
            )
            for i, source in sources.items():
                c.mounts[i]["host_path"] = source
            for note in notes:
                log.info("container {name} in pod {pod_id}: {note}", name=config.name, pod_id=sb.id, note=note)
            c.user = {"uid": user.uid, "gid": user.gid, "additional_gids": list(user.additional_gids),
                      "username": user.username}
            c.resources = spec.get("linux", {}).get("resources", {})
            await debugpoints.reached(debugpoints.CONTAINER_CREATE_BUNDLE_MADE, self._reactor)
            self._check_pod_accepts_containers(sb)  # not removed while the bundle was made
            self._commit(c)
            await debugpoints.reached(debugpoints.CONTAINER_CREATE_SAVED, self._reactor)
            if self.nri is not None:
                # NRI hook: the container becomes visible once every plugin agreed.
                await self.nri.create_container(sb, c, spec, commit=lambda: self._nri_agreed(c))
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, CancelledError):
                log.warn("creating container {name} ({container_id}) in pod {pod_id} failed: {error}",
                         name=config.name, container_id=container_id, pod_id=sb.id, error=str(e))
                logs.mark_logged(e)
            self._nri_hidden.discard(container_id)
            try:
                self._drop(c)
                await self._in_thread(self._remove_files, c.bundle, c.layer_dir)
            finally:
                lock.release()
            raise
        lock.release()
        log.info("container {container_id} ({name}) created in pod {pod_id}", container_id=container_id,
                 name=config.name, pod_id=sb.id, image=c.image_ref)
        self._publish(event_kinds.CREATED, c)
        if self.nri is not None:
            self.nri.notify(self.nri.post_create_container(sb, c))  # NRI hook
        return c

    def _lowers(self, record: ImageRecord) -> list[str]:
        """An image's layer dirs as overlay lower dirs (top first)."""
        return [self._images.store.layer_diff_dir(chain) for chain in reversed(record.chain_ids)]

    def _find_image_volumes(self, config: ContainerConfig) -> dict[int, ImageRecord]:
        """The images of the config's image volumes, by mount index; the
        kubelet pulls them first (PullImage), as it does the container's.

        :raises NotFound: an image that is not here, naming the mount.
        """
        found = {}
        for i, m in enumerate(config.mounts):
            if not m.image:
                continue
            record = self._images.find(m.image)
            if record is None:
                raise NotFound(f"config.mounts[{i}].image: image {m.image!r} of the image volume at "
                               f"{m.container_path} not found: pull it first")
            found[i] = record
        return found

    def _nri_agreed(self, c: Container) -> None:
        """NRI plugins agreed to *c*: it becomes visible."""
        self._nri_hidden.discard(c.id)
        self.snapshots.publish(c)

    def _check_user_namespace(self, sb: Sandbox, config: ContainerConfig) -> None:
        """A container joins its pod's user namespace: it may name it (or
        the host's, for a pod without one), and idmapped volumes need a
        runtime that makes them."""
        userns = sb.user_namespace
        where = "config.linux.security_context.namespace_options.userns_options"
        if config.userns_mode == "pod" and userns is None:
            raise InvalidArgument(f"{where}: mode POD, but pod sandbox {sb.id} has no user namespace of its own")
        if config.userns_mode == "node" and userns is not None:
            raise InvalidArgument(f"{where}: mode NODE, but pod sandbox {sb.id} has a user namespace of its own, "
                                  "which its containers join")
        if any(m.uid_mappings for m in config.mounts) and not self._runtimes[sb.handler].features.idmap_mounts:
            raise InvalidArgument(f"config.mounts: idmapped mounts (uidMappings, gidMappings) are not supported by "
                                  f"runtime handler {sb.handler!r} ({self._runtimes[sb.handler].binary}: `runc "
                                  "features` reports no idmap mount extension; runc 1.2 or later is needed)")

    def _check_pod_accepts_containers(self, sb: Sandbox) -> None:
        if sb.id in self._sandboxes.removing or self._sandboxes.find(sb.id) is not sb:
            raise FailedPrecondition(f"pod sandbox {sb.id} is being removed: it accepts no new container")
        if sb.state != READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready (state {sb.state})")

    def _narrow_modes(self, c: Container) -> None:
        """At start-up: the modes :meth:`_prepare_bundle` gives, for the
        files of a container an older daemon made."""
        sb = self._sandboxes.find(c.sandbox_id)
        userns = sb is not None and sb.user_namespace is not None
        set_mode(c.bundle, USERNS_BUNDLE_MODE if userns else PRIVATE_DIR)
        set_mode(c.layer_dir, PRIVATE_DIR)
        set_mode(os.path.join(c.bundle, "config.json"), PRIVATE_FILE)

    def _prepare_bundle(self, c: Container, lowers: list[str], config: ContainerConfig, image: ImageDefaults,
                        pod: PodContext, volume_lowers: dict[int, list[str]] | None = None,
                        ) -> tuple[dict[str, Any], list[str], users.ResolvedUser, dict[int, str]]:
        """Blocking (a worker thread): the writable layer, the overlay root,
        the image volumes (*volume_lowers*: mount index → the image's layer
        dirs), the user, the runtime spec written as the bundle's config.json.
        Returns the spec, notes on it, the user and each image volume's
        host path (mount index → the mounted image or its sub path)."""
        upper, work = os.path.join(c.layer_dir, "upper"), os.path.join(c.layer_dir, "work")
        rootfs = os.path.join(c.bundle, "rootfs")
        make_dir(c.layer_dir, PRIVATE_DIR)
        # 0711 for a user-namespaced pod's container: runc sets its root up
        # from inside the pod's user namespace, as the pod's root (a host
        # uid of no privilege), which must traverse the bundle to reach it.
        # Nobody may list it; config.json in it stays 0600.
        make_dir(c.bundle, USERNS_BUNDLE_MODE if pod.userns is not None else PRIVATE_DIR)
        # upper/ is 0755: the overlay's root directory takes its mode, and it
        # is the container's "/", which a non-root container user traverses
        # (host users cannot: the layer dir above is 0700).
        make_dir(upper, 0o755)
        make_dir(work, PRIVATE_DIR)  # overlayfs's own scratch space
        # The mount point; the overlay's root (upper's mode) covers it (and
        # must never be narrowed itself: it is the container's "/").
        if not self._host.is_mounted(rootfs):
            make_dir(rootfs, PRIVATE_DIR)
        idmap = None
        if pod.userns is not None:
            # Lower layers idmapped through the pod's user namespace, upper
            # layer its root's: files appear with the image's owners inside.
            idmap = IDMappedRoot(pod.namespaces["user"], pod.userns.root_uid, pod.userns.root_gid,
                                 os.path.join(c.layer_dir, "idmap"))
        self._host.mount_overlay(rootfs, lowers, upper, work, idmap)
        # The user is resolved from the mounted root filesystem: its
        # /etc/passwd and /etc/group as the container sees them (the lowers
        # merged, upper on top). A host that only records mounts (the tests'
        # in-memory one) leaves the mount point empty: there, no file names
        # a user and only root or numeric users resolve, which is what an
        # image without those files gives on the real host too.
        sources: dict[int, str] = {}
        if volume_lowers:
            config, sources = self._mount_image_volumes(c.bundle, config, volume_lowers)
        user = users.resolve_user(rootfs, image.user, config.security)
        spec, notes = build_spec(c.id, config, image, pod, rootfs, user, self._daemon_oom, self._host_info)
        # The spec holds the container's environment (secrets): root only.
        write_json_atomic(os.path.join(c.bundle, "config.json"), spec, mode=PRIVATE_FILE)
        return spec, notes, user, sources

    def _mount_image_volumes(self, bundle: str, config: ContainerConfig, volume_lowers: dict[int, list[str]],
                             ) -> tuple[ContainerConfig, dict[int, str]]:
        """Blocking: mount each image volume of the bundle (a read-only
        overlay of the image's layers, over an empty dir: see
        :mod:`rktlet.oci.image_volumes`) and resolve its sub path in it;
        returns *config* with each volume's mount bound from there, and
        those host paths by mount index. What is mounted stays on failure:
        :meth:`_remove_files` unmounts it."""
        empty = os.path.join(image_volumes.volumes_dir(bundle), image_volumes.EMPTY_LOWER)
        make_dir(image_volumes.volumes_dir(bundle), PRIVATE_DIR)
        make_dir(empty, PRIVATE_DIR)
        mounts = list(config.mounts)
        sources = {}
        for i, lowers in sorted(volume_lowers.items()):
            m = mounts[i]
            target = image_volumes.mount_point(bundle, i)
            if not self._host.is_mounted(target):
                make_dir(target, PRIVATE_DIR)  # covered by the overlay's root, the image's own
                self._host.mount_readonly_overlay(target, lowers + [empty])
            source = image_volumes.resolve_sub_path(target, m.image_sub_path, f"config.mounts[{i}].image_sub_path")
            mounts[i] = replace(m, host_path=source, readonly=True)
            sources[i] = source
        return replace(config, mounts=tuple(mounts)), sources

    def _remove_files(self, bundle: str, layer_dir: str) -> None:
        """Blocking, idempotent: unmount the image volumes and the root,
        remove bundle and writable layer."""
        for target in image_volumes.mount_points(bundle):
            self._host.unmount(target)
        self._host.unmount(os.path.join(bundle, "rootfs"))
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(layer_dir, ignore_errors=True)

    def _pod_context(self, sb: Sandbox) -> PodContext:
        host = set()
        if sb.network_mode == MODE_NODE:
            host.add("net")
        if sb.ipc_mode == MODE_NODE:
            host.add("ipc")
        if sb.pid_mode == MODE_NODE:
            host.add("pid")
        return PodContext(
            namespaces=dict(sb.namespaces),
            host=frozenset(host),
            pid_mode=sb.pid_mode,
            infra_pid=sb.infra_pid,
            hostname=sb.hostname,
            files={f"/etc/{n}": os.path.join(sb.dir, n) for n in ("resolv.conf", "hosts", "hostname")},
            shm=sb.shm,
            cgroup_parent=sb.cgroup_parent,
            sysctls=dict(sb.sysctls),
            userns=sb.user_namespace,
        )

    # -- StartContainer ----------------------------------------------------------------

    async def start(self, id_or_prefix: str) -> Container:
        """Start a created container under conmon."""
        c = self.get(id_or_prefix)
        lock = self._lock(c.id)
        await lock.acquire()
        try:
            if c.state != CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state}, not created: it cannot be started again")
            sb = self._sandboxes.get(c.sandbox_id)
            conmon = self._conmons[sb.handler]
            runtime = self._runtimes[sb.handler]
            if c.log_path:
                os.makedirs(os.path.dirname(c.log_path), exist_ok=True)

            if self.nri is not None:
                await self.nri.start_container(sb, c)  # NRI hook: a plugin error fails the start

            def into_pod_cgroup(pid: int) -> None:
                # conmon lives in the pod's cgroup, never the daemon's: restarting
                # the daemon's service must not take the monitors with it.
                self._host.add_to_cgroup(sb.cgroup_parent, pid)

            try:
                monitor = await conmon.create(c.id, c.bundle, c.log_path, tty=c.tty, stdin=c.stdin,
                                              stdin_once=c.stdin_once, cgroup=into_pod_cgroup)
                c.conmon_pid, c.container_pid = monitor.conmon_pid, monitor.container_pid
                await debugpoints.reached(debugpoints.CONTAINER_START_RUNC_CREATED, self._reactor)
                started_at = self._now_ns()  # the app cannot run before runc start is asked
                await runtime.start(c.id)
                await debugpoints.reached(debugpoints.CONTAINER_START_RUNC_STARTED, self._reactor)
            except RktletError as e:
                # conmon cleans up after a failed create; after a failed start
                # runc init and conmon still wait: end them.
                try:
                    await runtime.delete(c.id, force=True)
                    self._released.add(c.id)
                except RktletError as cleanup_error:
                    log.warn("cleanup after failed start of container {container_id}: {error}",
                             container_id=c.id, pod_id=c.sandbox_id, error=str(cleanup_error))
                c.state, c.exit_code, c.reason, c.message = EXITED, 128, "StartError", str(e)
                c.finished_at = self._now_ns()
                self._commit(c)
                if self.metrics is not None:
                    self.metrics.exited(c.reason)
                log.warn("container {container_id} ({name}) failed to start: {error}", container_id=c.id,
                         name=c.name, pod_id=c.sandbox_id, error=str(e))
                if RUNC_EXEC_FAILED in str(e):
                    # Its command is not there or not executable: the
                    # container's config is at fault, not the runtime.
                    raise logs.mark_logged(FailedPrecondition(f"container {c.id} cannot start: {e}")) from None
                raise logs.mark_logged(e)
            c.state, c.started_at = RUNNING, started_at
            self._commit(c)
            self._watch(c, monitor)
            log.info("container {container_id} ({name}) started, pid {pid}", container_id=c.id, name=c.name,
                     pod_id=c.sandbox_id, pid=c.container_pid)
            self._publish(event_kinds.STARTED, c)
            if self.nri is not None:
                self.nri.notify(self.nri.post_start_container(sb, c))  # NRI hook
            return c
        finally:
            lock.release()

    def _watch(self, c: Container, monitor: Monitor) -> None:
        self._monitors[c.id] = monitor

        def ended(result: tuple[int, int, bool]) -> None:
            self._monitors.pop(c.id, None)
            if c.id in self.containers and c.state == RUNNING:
                self._record_exit(c, *result)
                self._release_soon(c)

        def failed(failure: Any) -> None:
            self._monitors.pop(c.id, None)
            log.failure("watching container {container_id} failed", failure=failure, container_id=c.id,
                        pod_id=c.sandbox_id)

        monitor.exited.addCallbacks(ended, failed)

    def _release_soon(self, c: Container) -> None:
        """Delete an exited container from the runtime (``runc delete``:
        its state and cgroup) right after the exit, off the path of the RPC
        that waited for it, as containerd's shim does; RemoveContainer then
        has only files left to remove."""
        def release() -> None:
            if c.id in self._releasing:
                return
            d = ensureDeferred(self._release(c))

            def failed(failure: Any) -> bool:
                log.failure("releasing container {container_id} failed", failure=failure, container_id=c.id,
                            pod_id=c.sandbox_id)
                return False

            d.addErrback(failed)
            d.addBoth(lambda released: (self._releasing.pop(c.id, None), released)[1])
            if not d.called:
                self._releasing[c.id] = Shared(d, cancel_when_abandoned=False)

        self._reactor.callLater(0, release)

    async def _release(self, c: Container) -> bool:
        """``runc delete`` of an exited container; whether it is out of the
        runtime. No lock: once EXITED a container is only removed, and
        RemoveContainer waits for this instead of deleting it again."""
        if self.containers.get(c.id) is not c or c.state != EXITED or c.id in self._released:
            return True
        sb = self._sandboxes.find(c.sandbox_id)
        try:
            await self._runtimes[sb.handler if sb else "runc"].delete(c.id, force=True)
        except RktletError as e:
            log.warn("container {container_id} exited; deleting it from the runtime failed ({error}): "
                     "RemoveContainer will try again", container_id=c.id, pod_id=c.sandbox_id, error=str(e))
            return False
        if self.containers.get(c.id) is c:
            self._released.add(c.id)
        return True

    def _record_exit(self, c: Container, exit_code: int, finished_at: int, oom: bool, message: str = "") -> None:
        # The exit file's mtime is coarse (the kernel's jiffy clock): a quick
        # exit may look earlier than the start; the kubelet wants order.
        c.state, c.exit_code, c.finished_at = EXITED, exit_code, max(finished_at, c.started_at)
        c.reason = "OOMKilled" if oom else ("Completed" if exit_code == 0 else "Error")
        c.message = message
        try:
            self._commit(c)
        except OSError as e:  # learnt from a monitor: nobody to answer; the next commit writes it all
            log.error("persisting the exit of container {container_id} failed: {error}", container_id=c.id, error=e)
        log.info("container {container_id} ({name}) exited with {exit_code} ({reason})", container_id=c.id,
                 name=c.name, pod_id=c.sandbox_id, exit_code=exit_code, reason=c.reason,
                 **({"exit_message": message} if message else {}))
        if self.metrics is not None:
            self.metrics.exited(c.reason)
        self._publish(event_kinds.STOPPED, c)
        if self.nri is not None and (sb := self._sandboxes.find(c.sandbox_id)) is not None:
            self.nri.notify(self.nri.stop_container(sb, c))  # NRI hook: asked to stop or not

    # -- StopContainer / RemoveContainer ----------------------------------------------------

    async def stop(self, id_or_prefix: str, timeout: float) -> None:
        """The image's stop signal, *timeout* seconds, then SIGKILL; timeout 0
        kills at once. Idempotent; an unknown id is fine."""
        c = self.find(id_or_prefix)
        if c is None:
            return
        try:
            await self._stop(c, timeout)
        except RktletError as e:
            if not logs.was_logged(e):
                log.warn("stopping container {container_id} ({name}) failed: {error}", container_id=c.id,
                         name=c.name, pod_id=c.sandbox_id, error=str(e))
            raise logs.mark_logged(e)

    async def _stop(self, c: Container, timeout: float) -> None:
        monitor = self._monitors.get(c.id)
        if c.state != RUNNING or monitor is None:
            return
        sb = self._sandboxes.find(c.sandbox_id)
        runtime = self._runtimes[sb.handler if sb else "runc"]
        if timeout > 0:
            await runtime.kill(c.id, c.stop_signal.removeprefix("SIG"))
            await debugpoints.reached(debugpoints.CONTAINER_STOP_SIGNALLED, self._reactor)
            if await self._wait_exit(monitor, timeout):
                return
        await runtime.kill(c.id, "KILL", all_processes=True)
        if timeout <= 0:
            await debugpoints.reached(debugpoints.CONTAINER_STOP_SIGNALLED, self._reactor)
        if not await self._wait_exit(monitor, 10.0):
            raise RuntimeFailure(f"container {c.id} did not exit after SIGKILL")

    async def _wait_exit(self, monitor: Monitor, timeout: float) -> bool:
        if monitor.exited.called:
            return True
        done: Deferred = Deferred()
        timer = self._reactor.callLater(timeout, lambda: done.called or done.callback(False))

        def fired(result: Any) -> Any:
            if not done.called:
                timer.cancel()
                done.callback(True)
            return result

        monitor.exited.addBoth(fired)
        return await done

    async def remove(self, id_or_prefix: str) -> None:
        """Force-stop, delete from the runtime, unmount, remove the bundle and
        writable layer (the log stays: the kubelet owns it). Idempotent."""
        c = self.find(id_or_prefix)
        if c is None:
            return
        lock = self._lock(c.id)
        await lock.acquire()
        try:
            if c.id not in self.containers:
                return
            try:
                await self._remove_now(c)
            except RktletError as e:
                if not logs.was_logged(e):
                    log.warn("removing container {container_id} ({name}) failed: {error}", container_id=c.id,
                             name=c.name, pod_id=c.sandbox_id, error=str(e))
                raise logs.mark_logged(e)
        finally:
            lock.release()

    async def _remove_now(self, c: Container) -> None:
        """RemoveContainer's work, under the container's lock."""
        await self._stop(c, 0)
        sb = self._sandboxes.find(c.sandbox_id)
        handler = sb.handler if sb else "runc"
        runtime = self._runtimes[handler]
        # Deleted from the runtime at its exit already, or being deleted
        # now (then the files wait for that: see _remove_files_soon).
        releasing = self._releasing.get(c.id)
        if releasing is None and c.id not in self._released:
            await runtime.delete(c.id, force=True)
        await debugpoints.reached(debugpoints.CONTAINER_REMOVE_RUNTIME_DELETED, self._reactor)
        conmon = self._conmons[handler]
        conmon.forget(c.id)  # its Monitor is not needed any more
        # The record goes first; the files follow off the request path.
        # A crash in between leaves files without a record, which
        # start-up removes (rule 7 of rktlet.pod.recovery).
        self._drop(c)
        self._released.discard(c.id)
        await debugpoints.reached(debugpoints.CONTAINER_REMOVE_RECORD_DELETED, self._reactor)
        self._remove_files_soon(c, conmon, releasing, runtime)
        log.info("container {container_id} ({name}) removed", container_id=c.id, name=c.name, pod_id=c.sandbox_id)
        if self.nri is not None and sb is not None:
            await self.nri.remove_container(sb, c)  # NRI hook
        self._publish(event_kinds.DELETED, c)

    def _remove_files_soon(self, c: Container, conmon: MonitorDriver, releasing: Shared | None,
                           runtime: Runtime) -> None:
        """After RemoveContainer answered: once the container's release from
        the runtime (if one is under way) is over — and done again if it
        failed —, remove its files in a thread: conmon's files, the root
        filesystem mount, bundle and writable layer. Its image layers count
        as in use until then (they are the overlay's lowers)."""
        self._removing[c.id] = _chains_of(c)

        def remove() -> None:
            conmon.cleanup(conmon.paths(c.id, c.bundle))
            self._remove_files(c.bundle, c.layer_dir)

        async def finish() -> None:
            if releasing is not None and not await releasing.wait():
                await runtime.delete(c.id, force=True)
            await self._in_thread(remove)

        def failed(failure: Any) -> None:
            log.warn("removing container {container_id} from the runtime or its files failed: {error}; start-up "
                     "removes what is left", container_id=c.id, pod_id=c.sandbox_id, error=failure.getErrorMessage())

        def done(result: Any) -> None:
            self._removing.pop(c.id, None)

        d = Deferred.fromCoroutine(finish())
        d.addErrback(failed)
        d.addBoth(done)

    async def stop_pod_containers(self, sb: Sandbox) -> None:
        """StopPodSandbox: the pod's running containers are stopped (killed
        at once: the kubelet has already given each its grace period)."""
        for c in [c for c in self.containers.values() if c.sandbox_id == sb.id]:
            await self.stop(c.id, 0)

    async def remove_pod_containers(self, sb: Sandbox) -> None:
        """RemovePodSandbox: remove the pod's containers."""
        for c in [c for c in self.containers.values() if c.sandbox_id == sb.id]:
            await self.remove(c.id)

    # -- the rest -----------------------------------------------------------------------

    async def update_resources(self, id_or_prefix: str, wanted: Resources) -> None:
        """UpdateContainerResources: ``runc update``, then recorded."""
        c = self.get(id_or_prefix)
        resources, notes = linux_resources(wanted, self._host_info)
        for note in notes:
            log.info("container {container_id}: {note}", container_id=c.id, note=note)
        if c.state != RUNNING:
            c.resources.update(resources)
            self._commit(c)
            return
        sb = self._sandboxes.get(c.sandbox_id)
        try:
            await self._runtimes[sb.handler].update(c.id, resources)
        except RuntimeFailure as e:
            # runc's words when the kernel refuses a value for this
            # container (a memory limit below what it uses now, a swap
            # limit below the memory limit): the request's fault.
            log.warn("updating the resources of container {container_id} failed: {error}", container_id=c.id,
                     pod_id=c.sandbox_id, error=str(e))
            if any(words in str(e) for words in _REFUSED_VALUE):
                raise logs.mark_logged(InvalidArgument(f"linux: {e}")) from None
            raise logs.mark_logged(e)
        c.resources.update(resources)
        self._commit(c)

    def linux_resources(self, wanted: Resources) -> dict[str, Any]:
        """OCI ``linux.resources`` for CRI resources, as this host allows them."""
        resources, notes = linux_resources(wanted, self._host_info)
        for note in notes:
            log.info("resources: {note}", note=note)
        return resources

    def stop_watching(self) -> None:
        """Daemon shutdown: stop watching every monitor (conmon and the
        containers keep running; the next daemon adopts them)."""
        for conmon in {id(c): c for c in self._conmons.values()}.values():
            conmon.close()

    async def reopen_log(self, id_or_prefix: str) -> None:
        """ReopenContainerLog: conmon reopens the log file (after the
        kubelet rotated it), and the call returns once the new file is at
        the log path — the kubelet and critest look for it right away, as
        containerd makes it before answering."""
        c = self.get(id_or_prefix)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running: its log cannot be reopened")
        sb = self._sandboxes.get(c.sandbox_id)
        conmon = self._conmons[sb.handler]
        before = _inode(c.log_path)
        conmon.reopen_log(conmon.paths(c.id, c.bundle))
        # conmon renames a fresh file over the log path from its main loop;
        # wait (bounded) until a file other than the one there before is seen.
        for _ in range(_REOPEN_POLLS):
            now = _inode(c.log_path)
            if now is not None and now != before:
                return
            await deferLater(self._reactor, _REOPEN_POLL_INTERVAL, lambda: None)
        error = RuntimeFailure(f"container {c.id}: conmon did not reopen its log {c.log_path} "
                               f"within {_REOPEN_POLLS * _REOPEN_POLL_INTERVAL:.0f} s")
        log.warn("{error}", error=str(error), container_id=c.id, pod_id=c.sandbox_id)
        raise logs.mark_logged(error)

    def verbose_info(self, c: Container) -> dict[str, Any]:
        """ContainerStatus verbose: pid, bundle, runtime spec."""
        try:
            with open(os.path.join(c.bundle, "config.json")) as f:
                spec = json.load(f)
        except OSError:
            spec = None
        return {"pid": c.container_pid, "conmonPid": c.conmon_pid, "bundle": c.bundle, "runtimeSpec": spec,
                "sandboxID": c.sandbox_id, "user": c.user}

    def verbose_json(self, c: Container) -> str:
        """:meth:`verbose_info` of the snapshot *c* as JSON, made once per
        snapshot (the spec file is written at create and never again); any
        thread. The kubelet and critest ask for it on every status."""
        entry = self._verbose.get(c.id)
        if entry is None or entry[0] is not c:
            entry = (c, json.dumps(self.verbose_info(c)))
            if self.snapshots.current(c.id) is c:  # not for a removed one: nothing would drop it
                self._verbose[c.id] = entry
        return entry[1]


    # -- exec, attach (ExecSync and the streaming server) -------------------------------

    def running(self, id_or_prefix: str) -> Container:
        """The container, which must be running (exec and attach need it).

        :raises NotFound: no such container.
        :raises FailedPrecondition: it is not running (named by id and state).
        """
        c = self.get(id_or_prefix)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running (state {c.state})")
        return c

    async def probe_runtimes(self) -> None:
        """Ask every runtime what it supports (at start-up)."""
        for runtime in {id(r): r for r in self._runtimes.values()}.values():
            await runtime.probe_features()

    def handler_features(self, handler: str) -> Any:
        """What the runtime of *handler* supports (once probed)."""
        runtime = self._runtimes.get(handler)
        return runtime.features if runtime is not None else None

    def _handler_of(self, c: Container) -> str:
        sb = self._sandboxes.find(c.sandbox_id)
        return sb.handler if sb is not None else "runc"

    def runtime_of(self, c: Container) -> Runtime:
        """The OCI runtime driving *c* (its pod's handler)."""
        return self._runtimes[self._handler_of(c)]

    def conmon_of(self, c: Container) -> MonitorDriver:
        """The conmon driver monitoring *c* (its pod's handler)."""
        return self._conmons[self._handler_of(c)]

    def exit_of(self, c: Container) -> Deferred | None:
        """A Deferred firing with *c*'s ``(exit_code, finished_at_ns,
        oom_killed)`` when it ends (cancel it to stop waiting), or None when
        it is not watched (not running)."""
        monitor = self._monitors.get(c.id)
        return monitor.exited if monitor is not None else None

    async def exec_sync(self, id_or_prefix: str, cmd: list[str] | tuple[str, ...],
                        timeout: float) -> tuple[int, bytes, bytes]:
        """ExecSync: run *cmd* in the running container; ``(exit_code,
        stdout, stderr)``, each stream capped at 16 MiB.

        :raises NotFound: no such container.
        :raises FailedPrecondition: it is not running.
        :raises DeadlineExceeded: *timeout* (seconds, > 0) passed; the
            command was killed.
        :raises RuntimeFailure: runc could not run the command.
        """
        from rktlet.oci import exec as oci_exec  # kept local: this section was added after the imports

        c = self.running(id_or_prefix)
        try:
            return await oci_exec.exec_sync(self._reactor, self.runtime_of(c), c.id, c.bundle, list(cmd), timeout)
        except RuntimeFailure as e:
            log.warn("exec in container {container_id} failed: {error}", container_id=c.id, pod_id=c.sandbox_id,
                     error=str(e))
            raise logs.mark_logged(e)
