"""User namespaces of pods (the kubelet's ``hostUsers: false``).

A pod with a user namespace gets one of its own, made before any other of its
namespaces, with the single uid and gid range the kubelet allocated (container
ids ``0..length-1`` onto host ids ``host_id..host_id+length-1``).  Its network,
IPC and UTS namespaces are created *by a process inside it*, so the user
namespace owns them: the pod's root has its capabilities over them (sysctls,
interfaces, mounting sysfs) and nothing over the host's.  Every namespace is
pinned (a bind mount of its ``nsfs`` file, as :mod:`rktlet.oci.namespaces`
does), and containers join the user namespace by path.

Why a child process: ``unshare(CLONE_NEWUSER)`` is refused in a
multithreaded process (and ``setns`` into a user namespace too), so the
daemon cannot do it from a thread the way it makes the other namespaces.
``unshare --user --net --ipc --uts cat`` does it in one ``unshare(2)`` call
— the kernel makes the user namespace first and the others owned by it —
then waits on its standard input; the daemon, root in the parent user
namespace, writes the child's ``uid_map`` and ``gid_map`` (no
``setgroups`` deny is needed for that), pins the namespaces from
``/proc/PID/ns`` and closes the pipe, which ends the child.

Files appear with the right owners through *idmapped mounts*
(``mount_setattr(MOUNT_ATTR_IDMAP)``, kernel 5.12+): a container's root
filesystem is an overlay whose lower layers (the shared, unpacked image
layers) are idmapped with the pod's user namespace — overlayfs accepts
idmapped layers since kernel 5.19, but an overlay mount cannot itself be
idmapped — and whose private upper layer belongs to the pod's root on the
host, which is what containerd 2.x does; image layers are never chowned.
Volumes the kubelet marks with mappings are idmapped by runc (1.2 or
later: ``runc features`` reports ``mountExtensions.idmap``).
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.fsutil import PRIVATE_DIR, make_dir

__all__ = [
    "IDMapping",
    "IDMappedRoot",
    "UserNamespace",
    "check_mappings",
    "create_pinned",
    "write_maps",
    "pin_from_process",
    "idmapped_bind",
    "mount_overlay_idmapped",
    "MAX_ID",
    "kernel_version",
    "IDMAPPED_LAYERS_KERNEL",
]

#: The largest valid uid/gid: (uid_t)-1 is "no id" to the kernel.
MAX_ID = 2**32 - 2

#: The namespace kinds made inside a pod's user namespace, with their
#: ``unshare(1)`` flags.
_UNSHARE_FLAGS = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}


@dataclass(frozen=True)
class IDMapping:
    """One range: container ids ``container_id..+length-1`` are host ids
    ``host_id..+length-1`` (a line of ``/proc/PID/uid_map``)."""

    container_id: int
    host_id: int
    length: int

    def to_host(self, container_id: int) -> int | None:
        """The host id of *container_id*, or None when it is not mapped."""
        offset = container_id - self.container_id
        return self.host_id + offset if 0 <= offset < self.length else None

    def line(self) -> str:
        """As ``/proc/PID/uid_map`` takes it."""
        return f"{self.container_id} {self.host_id} {self.length}\n"

    def to_oci(self) -> dict[str, int]:
        """As an OCI ``LinuxIDMapping``."""
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.length}

    def to_json(self) -> dict[str, int]:
        return {"container_id": self.container_id, "host_id": self.host_id, "length": self.length}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "IDMapping":
        return cls(int(doc["container_id"]), int(doc["host_id"]), int(doc["length"]))


@dataclass(frozen=True)
class UserNamespace:
    """A pod's user namespace: its uid and gid mappings (one range each)."""

    uids: tuple[IDMapping, ...]
    gids: tuple[IDMapping, ...]

    @property
    def root_uid(self) -> int:
        """The host uid of the pod's root."""
        uid = self.uids[0].to_host(0) if self.uids else None
        if uid is None:
            raise ValueError("uid 0 is not mapped")
        return uid

    @property
    def root_gid(self) -> int:
        """The host gid of the pod's root."""
        gid = self.gids[0].to_host(0) if self.gids else None
        if gid is None:
            raise ValueError("gid 0 is not mapped")
        return gid

    def to_json(self) -> dict[str, Any]:
        return {"uids": [m.to_json() for m in self.uids], "gids": [m.to_json() for m in self.gids]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "UserNamespace":
        return cls(tuple(IDMapping.from_json(m) for m in doc.get("uids", ())),
                   tuple(IDMapping.from_json(m) for m in doc.get("gids", ())))


@dataclass(frozen=True)
class IDMappedRoot:
    """How a container root filesystem is idmapped: through the user
    namespace pinned at *userns_path*, its upper layer owned by the pod's
    root (*uid*, *gid* on the host); *scratch* is a private directory for
    the moment the lower layers are being idmapped."""

    userns_path: str
    uid: int
    gid: int
    scratch: str


#: overlayfs accepts idmapped lower layers from this kernel on.
IDMAPPED_LAYERS_KERNEL = (5, 19)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of *release*, ``uname -r``)."""
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _check_range(mappings: Sequence[IDMapping], what: str) -> None:
    if len(mappings) != 1:
        # One range, as the kubelet allocates and containerd and CRI-O accept:
        # an idmapped mount or overlay carries exactly that one.
        raise InvalidArgument(f"{what}: exactly one mapping is supported, got {len(mappings)}")
    m = mappings[0]
    if m.length < 1:
        raise InvalidArgument(f"{what}[0].length: {m.length} must be at least 1")
    if m.container_id != 0:
        raise InvalidArgument(f"{what}[0]: container id 0 (root) must be mapped, the range starts at "
                              f"container id {m.container_id}")
    for name, start in (("host_id", m.host_id), ("container_id", m.container_id)):
        if start < 0 or start + m.length - 1 > MAX_ID:
            raise InvalidArgument(f"{what}[0].{name}: {start}+{m.length} goes past the largest id {MAX_ID}")


def check_mappings(uids: Sequence[IDMapping], gids: Sequence[IDMapping], where: str) -> UserNamespace:
    """Validate a pod's mappings (*where* prefixes the field names in
    messages): one range each, mapping container id 0, inside the id space.

    :raises InvalidArgument: naming the field.
    """
    _check_range(uids, f"{where}.uids")
    _check_range(gids, f"{where}.gids")
    return UserNamespace(tuple(uids), tuple(gids))


# ---------------------------------------------------------------------------
# Creating and pinning (the child process)
# ---------------------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long
_MS_BIND = 0x1000


def write_maps(pid: int, userns: UserNamespace) -> None:
    """Blocking: write the uid and gid maps of process *pid*'s new user
    namespace (once: the kernel refuses a second write)."""
    for name, mappings in (("uid_map", userns.uids), ("gid_map", userns.gids)):
        path = f"/proc/{pid}/{name}"
        try:
            with open(path, "w") as f:
                f.write("".join(m.line() for m in mappings))
        except OSError as e:
            raise RuntimeFailure(f"write {path} ({''.join(m.line() for m in mappings).strip()}): "
                                 f"{os.strerror(e.errno or 0)}") from e


def pin_from_process(pid: int, paths: Mapping[str, str]) -> list[str]:
    """Blocking: pin each namespace (kind → file to create) of process *pid*
    (``/proc/PID/ns/<kind>`` bind-mounted onto a new file).  Returns the
    files made, in order; on failure those made are left for the caller to
    remove (:func:`rktlet.oci.namespaces.remove_pinned`) and it raises
    RuntimeFailure naming the path."""
    made: list[str] = []
    try:
        for kind, path in paths.items():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            except OSError as e:
                raise RuntimeFailure(f"create {kind} namespace file {path}: {os.strerror(e.errno or 0)}") from e
            made.append(path)
            source = f"/proc/{pid}/ns/{kind}".encode()
            if _libc.mount(source, os.fsencode(path), None, _MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise RuntimeFailure(f"pin {kind} namespace at {path}: bind mount: {os.strerror(err)}")
    except RuntimeFailure as e:
        e.made = made  # type: ignore[attr-defined]
        raise
    return made


class _Holder(ProcessProtocol):
    """``unshare … cat``: holds its namespaces until its stdin closes."""

    def __init__(self) -> None:
        self.stderr = b""
        self.ended: Deferred = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-4096:]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _ns_id(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


async def create_pinned(reactor: Any, paths: Mapping[str, str], userns: UserNamespace,
                        in_thread: Any, poll: float = 0.001, timeout: float = 10.0) -> None:
    """Make a pod's user namespace with *userns*'s mappings and, owned by
    it, the other namespaces of *paths* (kind → file: ``user`` and some of
    ``net``, ``ipc``, ``uts``); pin them all.  All or nothing: a failure
    unpins what was pinned and raises RuntimeFailure with the tool's words.

    :param in_thread: ``fn, *args → Deferred``: where blocking steps run.
    """
    from rktlet.oci import namespaces  # the pinning primitives (same layer)

    if "user" not in paths:
        raise ValueError("a user namespace file is required")
    unknown = [k for k in paths if k != "user" and k not in _UNSHARE_FLAGS]
    if unknown:
        raise ValueError(f"unknown namespace kinds {unknown}")
    argv = ["unshare", "--user", *(_UNSHARE_FLAGS[k] for k in sorted(paths) if k in _UNSHARE_FLAGS), "--", "cat"]
    holder = _Holder()
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    try:
        transport = reactor.spawnProcess(holder, argv[0], argv, env=env)
    except OSError as e:
        raise RuntimeFailure(f"create the pod's user namespace: cannot run unshare: {os.strerror(e.errno or 0)}") from e
    pid = transport.pid
    made: list[str] = []
    try:
        own = _ns_id("self", "user")
        waited = 0.0
        # One unshare(2) makes them all: once the user namespace differs
        # from ours, every namespace asked for exists.
        while True:
            if holder.ended.called:
                raise RuntimeFailure(f"unshare: {holder.stderr.decode(errors='replace').strip() or 'exited'}")
            current = _ns_id(pid, "user")
            if current is not None and current != own:
                break
            if waited >= timeout:
                raise RuntimeFailure(f"unshare did not make the pod's namespaces within {timeout:g}s")
            d: Deferred = Deferred()
            reactor.callLater(poll, d.callback, None)
            await d
            waited += poll
            poll = min(poll * 2, 0.05)
        await in_thread(write_maps, pid, userns)
        try:
            # The user namespace first: the others are pinned while it is known to be there.
            ordered = {"user": paths["user"], **{k: v for k, v in paths.items() if k != "user"}}
            made = await in_thread(pin_from_process, pid, ordered)
        except RuntimeFailure as e:
            made = getattr(e, "made", [])
            raise
    except BaseException:
        if made:
            try:
                await in_thread(namespaces.remove_pinned, list(reversed(made)))
            except RuntimeFailure:
                pass  # the first failure is the one to report
        raise
    finally:
        transport.closeStdin()  # cat reads EOF and exits; the pins keep the namespaces
        if not holder.ended.called:
            d = holder.ended
            timer = reactor.callLater(5.0, lambda: transport.signalProcess("KILL") if not d.called else None)
            await d
            if timer.active():
                timer.cancel()


# ---------------------------------------------------------------------------
# Idmapped mounts
# ---------------------------------------------------------------------------

# The new mount API (kernel 5.2+/5.12+): one number on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _syscall(number: int, *args: Any) -> int:
    result = _libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def idmapped_bind(source: str, target: str, userns_path: str, readonly: bool = False) -> None:
    """Blocking: bind *source* at *target* (which exists), idmapped through
    the user namespace pinned at *userns_path*: a file owned by id N on disk
    appears owned by that namespace's mapping of N.

    :raises OSError: naming the step and path (EINVAL from mount_setattr:
        the file system or kernel cannot idmap it).
    """
    try:
        tree = _syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                        ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC))
    except OSError as e:
        raise OSError(e.errno, f"open_tree {source}: {e.strerror}") from None
    try:
        userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            attr = _MountAttr(_MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if readonly else 0), 0, 0, userns_fd)
            try:
                _syscall(_SYS_MOUNT_SETATTR, tree, b"", ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr)))
            except OSError as e:
                raise OSError(e.errno, f"idmap {source} (mount_setattr): {e.strerror}") from None
        finally:
            os.close(userns_fd)
        try:
            _syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                     ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
        except OSError as e:
            raise OSError(e.errno, f"move_mount {source} to {target}: {e.strerror}") from None
    finally:
        os.close(tree)


def mount_overlay_idmapped(target: str, lowers: Sequence[str], upper: str, work: str, scratch: str,
                           userns_path: str, root_uid: int, root_gid: int) -> None:
    """Blocking: an overlay on *target* whose *lowers* (top first) appear
    through the user namespace pinned at *userns_path*, and whose *upper*
    belongs to the pod's root (*root_uid*, *root_gid* on the host).

    The lowers' common parent is idmapped once, read-only, at *scratch* (a
    directory made here, 0700), the overlay is mounted from the idmapped
    paths, and the scratch mount is detached again: overlayfs keeps private
    clones of its layers, so the shared image layers are never changed.

    :raises OSError: naming the step and path.
    """
    from rktlet.oci import mounts  # mount(2)/umount2(2) (same layer)

    common = os.path.commonpath(list(lowers)) if len(lowers) > 1 else os.path.dirname(lowers[0])
    make_dir(scratch, PRIVATE_DIR)
    try:
        idmapped_bind(common, scratch, userns_path, readonly=True)
    except OSError:
        os.rmdir(scratch)
        raise
    try:
        mapped = [os.path.join(scratch, os.path.relpath(lower, common)) for lower in lowers]
        # The container's "/" (the upper's root) is its root's; what it
        # writes lands in upper/ under its host ids, as containerd does.
        os.lchown(upper, root_uid, root_gid)
        mounts.mount("overlay", target, "overlay", 0,
                     f"lowerdir={':'.join(mapped)},upperdir={upper},workdir={work}")
    finally:
        mounts.unmount(scratch)
        try:
            os.rmdir(scratch)
        except OSError:
            pass
