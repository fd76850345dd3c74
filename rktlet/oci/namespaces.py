"""Pinned pod namespaces (network, IPC, UTS) and work done inside them.

A pod's namespaces must outlive any process: they are made before CNI ADD
and before the first container, and removed after CNI DEL.  They are kept
alive by bind-mounting their ``nsfs`` file onto a plain file under the run
dir (what ``ip netns add`` does), and containers join them by path.

How the daemon's own namespaces stay untouched
-----------------------------------------------
On Linux, namespaces belong to a *task* (a thread), not to the process:
``unshare(2)`` and ``setns(2)`` with ``CLONE_NEWNET``, ``CLONE_NEWIPC`` or
``CLONE_NEWUTS`` change only the calling thread.  (The mount namespace is
different — unsharing it implies ``CLONE_FS``, refused in a multithreaded
process — which is why the mount namespace is not one of :data:`KINDS`.)
Every namespace change here therefore happens in a fresh
:class:`threading.Thread` made for that one job; it ends afterwards, taking its
namespaces with it, and the daemon's threads never leave the host's.

Per-thread views in /proc (verified on kernel 6.18, see the tests)
-----------------------------------------------------------------
* ``/proc/thread-self/ns/<kind>`` is the calling thread's namespace;
  ``/proc/self/ns/<kind>`` is the thread-group *leader's* (the host's).
* ``/proc/sys/net/...`` and the IPC and UTS entries of ``/proc/sys`` are
  looked up (and read/written) in the namespaces of the thread doing it, so a
  sysctl written from the unshared thread lands in the new namespace only.
* ``/proc/net`` is a symlink to ``self/net``, i.e. the *leader's* network
  namespace: inside a namespace thread, ``/proc/net/dev`` still shows the
  host's interfaces.  ``/proc/thread-self/net/dev`` is the one to read.

Every function here blocks (system calls, thread joins): call them from a
worker thread (``deferToThread``), never from the reactor thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.mountinfo import unescape as unescape_mountinfo

__all__ = [
    "KINDS",
    "create_pinned",
    "check_settings",
    "configure_pinned",
    "remove_pinned",
    "is_pinned",
    "sysctl_namespace",
    "sysctl_path",
    "run_in_namespace",
    "read_net_dev",
    "parse_net_dev",
]

T = TypeVar("T")

#: The namespace kinds a pod can have pinned, by their /proc/<pid>/ns names.
KINDS = ("net", "ipc", "uts")

# <sched.h> and <sys/mount.h> values (stable kernel ABI).
_CLONE_FLAGS = {
    "net": 0x40000000,  # CLONE_NEWNET
    "ipc": 0x08000000,  # CLONE_NEWIPC
    "uts": 0x04000000,  # CLONE_NEWUTS
}
# setresuid(2)'s number: the raw system call changes the calling thread only.
_SYS_SETRESUID = {"x86_64": 117, "aarch64": 147, "ppc64le": 164, "s390x": 208}.get(os.uname().machine, 117)
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_UMOUNT_NOFOLLOW = 0x8

# How each kind is called in messages meant for people.
_LABELS = {"net": "network", "ipc": "IPC", "uts": "UTS"}

# HOST_NAME_MAX: sethostname(2) refuses longer names with EINVAL; checking
# first gives a clear message before anything is created.
_HOST_NAME_MAX = 64

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, what: str) -> None:
    """Turn a libc ``-1`` return into an :class:`OSError` carrying errno."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------------------
# Sysctls
# ---------------------------------------------------------------------------

# IPC-namespaced entries of /proc/sys/kernel (the kernel's ipc_sysctls table;
# auto_msgmni is a no-op kept for compatibility, the *_next_id ones exist with
# CONFIG_CHECKPOINT_RESTORE).  fs.mqueue.* is IPC-namespaced as a whole.
_IPC_KERNEL = frozenset({
    "shmmax", "shmall", "shmmni", "shm_rmid_forced",
    "msgmax", "msgmnb", "msgmni", "auto_msgmni",
    "sem",
    "msg_next_id", "sem_next_id", "shm_next_id",
})

# UTS-namespaced and writable.  (kernel.ostype/osrelease/version are in the
# UTS table too, but read-only, so nothing a pod could set.)
_UTS_KERNEL = frozenset({"hostname", "domainname"})

# net.* entries that are host-wide although they live under /proc/sys/net.
# Measured on kernel 6.18 by comparing /proc/sys/net in the initial network
# namespace with a new one: these are either absent from a new namespace
# (registered for init_net only) or present but read-only there (the
# rmem/wmem defaults and maxima, the conntrack table sizes).  Refusing them
# up front gives a clear message before anything is created; for any other
# host-wide entry (other kernels, modules loaded later) the kernel itself
# refuses the write in the pod's namespace (ENOENT or EACCES), which
# create_pinned reports as InvalidArgument after rolling back — a net.*
# sysctl written from the pod's namespace can never change the host's.
_HOST_WIDE_NET = frozenset({
    # net.core (net_core_table, init_net only or read-only elsewhere)
    "core.bpf_jit_enable", "core.bpf_jit_harden", "core.bpf_jit_kallsyms",
    "core.bpf_jit_limit", "core.busy_poll", "core.busy_read", "core.default_qdisc",
    "core.dev_weight", "core.dev_weight_rx_bias", "core.dev_weight_tx_bias",
    "core.devconf_inherit_init_net", "core.fb_tunnels_only_for_init_net",
    "core.flow_limit_cpu_bitmap", "core.flow_limit_table_len", "core.gro_normal_batch",
    "core.high_order_alloc_disable", "core.max_skb_frags", "core.mem_pcpu_rsv",
    "core.message_burst", "core.message_cost", "core.netdev_budget",
    "core.netdev_budget_usecs", "core.netdev_max_backlog", "core.netdev_rss_key",
    "core.netdev_tstamp_prequeue", "core.netdev_unregister_timeout_secs",
    "core.rps_sock_flow_entries", "core.skb_defer_max", "core.warnings",
    "core.rmem_max", "core.wmem_max", "core.rmem_default", "core.wmem_default",
    # net.ipv4 (ipv4_table, global memory limits and caches)
    "ipv4.cipso_cache_bucket_size", "ipv4.cipso_cache_enable", "ipv4.cipso_rbm_optfmt",
    "ipv4.cipso_rbm_strictvalid", "ipv4.fib_sync_mem", "ipv4.inet_peer_maxttl",
    "ipv4.inet_peer_minttl", "ipv4.inet_peer_threshold", "ipv4.ipfrag_secret_interval",
    "ipv4.tcp_available_ulp", "ipv4.tcp_low_latency", "ipv4.tcp_max_orphans",
    "ipv4.tcp_mem", "ipv4.udp_mem",
    "ipv4.route.error_burst", "ipv4.route.error_cost", "ipv4.route.gc_elasticity",
    "ipv4.route.gc_interval", "ipv4.route.gc_min_interval", "ipv4.route.gc_min_interval_ms",
    "ipv4.route.gc_thresh", "ipv4.route.gc_timeout", "ipv4.route.max_size",
    "ipv4.route.redirect_load", "ipv4.route.redirect_number", "ipv4.route.redirect_silence",
    # net.ipv6
    "ipv6.calipso_cache_bucket_size", "ipv6.calipso_cache_enable",
    "ipv6.ip6frag_secret_interval", "ipv6.mld_max_msf", "ipv6.mld_qrv",
    # conntrack table sizes: read-only outside init_net since 5.12
    "netfilter.nf_conntrack_max", "nf_conntrack_max",
    "netfilter.nf_conntrack_expect_max", "netfilter.nf_conntrack_buckets",
    "netfilter.nf_log_all_netns",
})

# net.ipv4.neigh.default.gc_thresh1 and friends: the neighbour-table garbage
# collection knobs are global (only the "default" entry has them).
_HOST_WIDE_NEIGH = frozenset({"gc_interval", "gc_thresh1", "gc_thresh2", "gc_thresh3"})


def _sysctl_parts(name: object) -> tuple[str, ...] | None:
    """The /proc/sys path components of a sysctl *name*, or None if malformed.

    Both forms of sysctl(8) are accepted.  Slash form (the first separator is
    ``/``): ``net/ipv4/conf/eth0.100/forwarding``, dots are literal.  Dot
    form: ``net.ipv4.conf.eth0/100.forwarding`` — a ``/`` inside a component
    stands for a literal dot (procps' convention, which the kubelet follows).
    Components ``.``, ``..`` and empty ones are refused: ``net/../kernel/x``
    must not write kernel.x.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    slash, dot = name.find("/"), name.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        parts = tuple(name.split("/"))
    else:
        parts = tuple(part.replace("/", ".") for part in name.split("."))
    if any(part in ("", ".", "..") or "/" in part for part in parts):
        return None
    return parts


def sysctl_path(name: str) -> str:
    """The /proc/sys file of sysctl *name* (dot or slash form).

    Raises InvalidArgument when the name is malformed.
    """
    parts = _sysctl_parts(name)
    if parts is None:
        raise InvalidArgument(f"sysctl {name!r}: malformed name")
    return "/proc/sys/" + "/".join(parts)


def sysctl_namespace(name: str) -> str | None:
    """The namespace kind ("net", "ipc" or "uts") that sysctl *name* belongs
    to, or None when it is host-wide (``kernel.panic``, ``vm.*``, the
    host-wide parts of ``net.*`` listed above) or malformed.

    Accepts dot and slash forms (``kernel.shmmax``, ``kernel/shmmax``).
    """
    parts = _sysctl_parts(name)
    if parts is None or len(parts) < 2:
        return None
    top = parts[0]
    if top == "net":
        rest = ".".join(parts[1:])
        if rest in _HOST_WIDE_NET:
            return None
        if (len(parts) == 5 and parts[1] in ("ipv4", "ipv6") and parts[2] == "neigh"
                and parts[4] in _HOST_WIDE_NEIGH):
            return None
        return "net"
    if top == "kernel" and len(parts) == 2:
        if parts[1] in _IPC_KERNEL:
            return "ipc"
        if parts[1] in _UTS_KERNEL:
            return "uts"
        return None
    if top == "fs" and len(parts) == 3 and parts[1] == "mqueue":
        return "ipc"
    return None


def _validate_sysctls(sysctls: Mapping[str, str], kinds: Iterable[str]) -> list[tuple[str, str, str, str]]:
    """Check every sysctl against the kinds being created, before anything is.

    Returns (name, kind, /proc/sys path, value) in the order given.
    """
    created = set(kinds)
    checked = []
    for name, value in sysctls.items():
        parts = _sysctl_parts(name)
        if parts is None:
            raise InvalidArgument(f"sysctl {name!r}: malformed name")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"sysctl {name}: value must be a string without NUL bytes")
        kind = sysctl_namespace(name)
        if kind is None:
            raise InvalidArgument(
                f"sysctl {name} is not namespaced: setting it for a pod would change the host"
            )
        if kind not in created:
            label = _LABELS[kind]
            raise InvalidArgument(
                f"sysctl {name} would change the host's {label} settings "
                f"(pod uses the host's {label} namespace)"
            )
        checked.append((name, kind, "/proc/sys/" + "/".join(parts), value))
    return checked


def _write_sysctl(name: str, kind: str, path: str, value: str) -> None:
    """Write one sysctl from the current (namespace) thread.

    No O_CREAT: a name the pod's namespace does not have must fail with
    ENOENT, not create anything.  Every failure is the request's fault (an
    unknown name, a host-wide entry read-only in the namespace, a value the
    kernel rejects), hence InvalidArgument with the kernel's errno text.
    """
    label = _LABELS[kind]
    data = value.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        text = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.ENOENT:
            raise InvalidArgument(
                f"sysctl {name}: not found in the pod's {label} namespace "
                f"(unknown, or not namespaced on this kernel): {text}"
            ) from e
        if e.errno in (errno.EACCES, errno.EPERM):
            raise InvalidArgument(
                f"sysctl {name}: cannot be set inside the pod's {label} namespace "
                f"(host-wide on this kernel): {text}"
            ) from e
        raise InvalidArgument(f"sysctl {name}={value!r}: rejected by the kernel: {text}") from e
    if written != len(data):
        raise InvalidArgument(f"sysctl {name}={value!r}: value too long ({written} of {len(data)} bytes taken)")


# ---------------------------------------------------------------------------
# Fresh-thread execution
# ---------------------------------------------------------------------------

def _in_fresh_thread(fn: Callable[[], T], name: str) -> T:
    """Run *fn* in a new OS thread, wait for it, return its result or raise
    its exception.  The thread ends afterwards, so whatever namespaces it
    entered die with it (unless pinned)."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e

    # daemon=True: a namespace job must never keep the daemon from exiting.
    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Mount table
# ---------------------------------------------------------------------------

def _mounts_at(path: str) -> list[str]:
    """File-system types mounted at *path* (oldest first), from our mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-")
            except ValueError:
                continue
            if len(fields) > sep + 1 and unescape_mountinfo(fields[4]) == path:
                found.append(fields[sep + 1])
    return found


def _resolved(path: str) -> str:
    """*path* as the mount table spells it: the directory resolved, the last
    component kept (the file itself is the mount point, not followed)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_pinned(path: str) -> bool:
    """Whether a live namespace (an ``nsfs`` bind mount) is mounted at *path*."""
    mounts = _mounts_at(_resolved(path))
    # The last mount at a point is the one visible there.
    return bool(mounts) and mounts[-1] == "nsfs"


# ---------------------------------------------------------------------------
# Pinning
# ---------------------------------------------------------------------------

def _umount_all(path: str) -> None:
    """Detach every mount stacked at *path*; a path that is not a mount point
    (EINVAL) or does not exist (ENOENT) is fine."""
    target = os.fsencode(path)
    for _ in range(64):  # bounded: each round removes one stacked mount
        if _libc.umount2(target, _MNT_DETACH | _UMOUNT_NOFOLLOW) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise RuntimeFailure(f"unmount namespace file {path}: {os.strerror(err)}")
    raise RuntimeFailure(f"unmount namespace file {path}: still mounted after 64 unmounts")


def remove_pinned(paths: Iterable[str]) -> None:
    """Unmount (lazily, MNT_DETACH) and delete each namespace file.

    Idempotent: absent files and files with nothing mounted are fine.  Every
    path is tried even when one fails; the first failure is raised at the end
    (RuntimeFailure naming the path).
    """
    first: BaseException | None = None
    for path in paths:
        try:
            _umount_all(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise RuntimeFailure(f"remove namespace file {path}: {os.strerror(e.errno or 0)}") from e
        except RuntimeFailure as e:
            if first is None:
                first = e
    if first is not None:
        raise first


def check_settings(paths: Mapping[str, str], hostname: str | None,
                   sysctls: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """Check the kinds of *paths*, the *hostname* and every sysctl before
    anything is made; returns the sysctls as (name, kind, /proc/sys path,
    value).

    :raises InvalidArgument: naming the sysctl or the hostname.
    """
    kinds = list(paths)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown namespace kinds {unknown}; expected some of {KINDS}")
    checked = _validate_sysctls(sysctls, kinds)
    if hostname and "uts" in paths:
        if len(hostname.encode()) > _HOST_NAME_MAX or "\0" in hostname:
            raise InvalidArgument(
                f"hostname {hostname!r}: must be at most {_HOST_NAME_MAX} bytes, without NUL"
            )
    return checked


def _setns(path: str, kind: str) -> None:
    """Join the *kind* namespace pinned at *path* (the calling thread only)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeFailure(f"open {_LABELS[kind]} namespace {path}: {os.strerror(e.errno or 0)}") from e
    try:
        # nstype set: the kernel refuses (EINVAL) a file of another kind.
        _check(_libc.setns(fd, _CLONE_FLAGS[kind]), "setns")
    except OSError as e:
        raise RuntimeFailure(f"enter {_LABELS[kind]} namespace {path}: setns: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(fd)


def _set_thread_euid(uid: int) -> None:
    """setresuid(-1, *uid*, -1) for the calling thread alone (glibc's
    wrapper would change every thread of the daemon)."""
    _libc.syscall.restype = ctypes.c_long
    if _libc.syscall(_SYS_SETRESUID, ctypes.c_long(-1), ctypes.c_long(uid), ctypes.c_long(-1)) != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"setresuid(-1, {uid}, -1): {os.strerror(err)}")


def configure_pinned(paths: Mapping[str, str], hostname: str | None, sysctls: Mapping[str, str],
                     owner_uid: int = 0) -> None:
    """Set *hostname* and *sysctls* in namespaces already pinned at *paths*
    (kind → file), from a fresh thread that joins them: what
    :func:`create_pinned` does after making them, for namespaces another
    process made (a pod's user namespace owns them: :mod:`rktlet.oci.userns`).

    *owner_uid*: the host uid of the owning user namespace's root.  The IPC
    sysctls of an IPC namespace owned by another user namespace are
    writable by that root only (the kernel checks the writer's euid against
    it, capabilities aside), so they are written with that euid, in this
    thread alone and for that write only.

    :raises InvalidArgument: as :func:`create_pinned`.
    """
    checked = check_settings(paths, hostname, sysctls)
    if not (hostname and "uts" in paths) and not checked:
        return

    def job() -> None:
        for kind in ("net", "ipc", "uts"):
            if kind in paths:
                _setns(paths[kind], kind)
        if hostname and "uts" in paths:
            encoded = hostname.encode()
            try:
                _check(_libc.sethostname(encoded, len(encoded)), "sethostname")
            except OSError as e:
                raise InvalidArgument(f"hostname {hostname!r}: sethostname: {os.strerror(e.errno or 0)}") from e
        for name, kind, path, value in checked:
            if kind == "ipc" and owner_uid:
                # The kernel checks the writer at open and at write.
                _set_thread_euid(owner_uid)
                try:
                    _write_sysctl(name, kind, path, value)
                finally:
                    _set_thread_euid(0)
                continue
            _write_sysctl(name, kind, path, value)

    _in_fresh_thread(job, "rktlet-ns-configure")


def create_pinned(
    paths: Mapping[str, str],
    hostname: str | None = None,
    sysctls: Mapping[str, str] = {},  # noqa: B006 (read-only default)
) -> None:
    """Create new namespaces of the kinds in *paths* and pin each at its path.

    *paths* maps kinds (a subset of :data:`KINDS`) to files to create (their
    parent directories must exist; the files must not).  In a fresh thread,
    one ``unshare(2)`` makes all the namespaces asked for; each file is
    created and ``/proc/thread-self/ns/<kind>`` is bind-mounted onto it, so
    the namespace outlives the thread.  When a UTS namespace is made and
    *hostname* is given, it is set in there (None or "" keeps the copy of
    the host's name a new UTS namespace starts with; *hostname* is ignored
    for a pod in the host's UTS namespace, which keeps the host's name).  Then each of
    *sysctls* is written, from that thread, into the new namespaces (after
    the hostname, so ``kernel.hostname`` would win).

    Sysctls and the hostname are all validated before anything is created:
    a sysctl that is not namespaced, or whose namespace kind is not being
    created (the pod shares the host's), raises InvalidArgument.  A failure
    later (a sysctl the kernel refuses, a mount error) unmounts and deletes
    whatever was made and raises: InvalidArgument for sysctls,
    RuntimeFailure for system errors, each naming the path or sysctl and
    the errno text.
    """
    kinds = list(paths)
    checked = check_settings(paths, hostname, sysctls)
    if not kinds:
        return

    flags = 0
    for kind in kinds:
        flags |= _CLONE_FLAGS[kind]
    created: list[str] = []  # files this call made (O_EXCL), to undo on failure

    def job() -> None:
        try:
            _check(_libc.unshare(flags), "unshare")
        except OSError as e:
            raise RuntimeFailure(
                f"create {', '.join(_LABELS[k] for k in kinds)} namespaces: {os.strerror(e.errno or 0)}"
            ) from e
        for kind in kinds:
            path = paths[kind]
            try:
                # O_EXCL: never take over (and later delete) someone else's file.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            except OSError as e:
                raise RuntimeFailure(
                    f"create {_LABELS[kind]} namespace file {path}: {os.strerror(e.errno or 0)}"
                ) from e
            created.append(path)
            source = f"/proc/thread-self/ns/{kind}".encode()
            try:
                _check(_libc.mount(source, os.fsencode(path), None, _MS_BIND, None), "mount")
            except OSError as e:
                raise RuntimeFailure(
                    f"pin {_LABELS[kind]} namespace at {path}: bind mount: {os.strerror(e.errno or 0)}"
                ) from e
        if hostname and "uts" in paths:
            encoded = hostname.encode()
            try:
                _check(_libc.sethostname(encoded, len(encoded)), "sethostname")
            except OSError as e:
                raise InvalidArgument(
                    f"hostname {hostname!r}: sethostname: {os.strerror(e.errno or 0)}"
                ) from e
        for name, kind, path, value in checked:
            _write_sysctl(name, kind, path, value)

    try:
        _in_fresh_thread(job, "rktlet-ns-create")
    except BaseException:
        # Mounts are per mount namespace (shared by all threads), so the
        # caller's thread can undo what the namespace thread made.
        try:
            remove_pinned(reversed(created))
        except RuntimeFailure:
            pass  # the original failure is the one worth reporting
        raise


# ---------------------------------------------------------------------------
# Work inside a pinned namespace
# ---------------------------------------------------------------------------

def run_in_namespace(path: str, kind: str, fn: Callable[[], T]) -> T:
    """Call *fn* in a fresh thread that has joined the *kind* namespace
    pinned at *path*; return its result or re-raise its exception unchanged.

    Inside *fn*, use ``/proc/thread-self/...`` (not ``/proc/self`` or
    ``/proc/net``, which show the daemon's main thread).  Processes *fn*
    starts inherit the namespace.  Failing to enter the namespace raises
    RuntimeFailure naming *path*.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown namespace kind {kind!r}; expected one of {KINDS}")

    def job() -> T:
        _setns(path, kind)
        return fn()

    return _in_fresh_thread(job, f"rktlet-ns-{kind}")


_NET_DEV_FIELDS = (
    # /proc/net/dev columns, in order; the ones kept are named, others None.
    "rx_bytes", "rx_packets", "rx_errors", "rx_drop", None, None, None, None,
    "tx_bytes", "tx_packets", "tx_errors", "tx_drop", None, None, None, None,
)


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """Parse ``/proc/net/dev`` text: interface → rx/tx bytes, packets,
    errors and drops.  (Interface names cannot contain ``:``, so the first
    colon ends the name; the two header lines have ``|`` instead.)"""
    result: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        values = rest.split()
        stats = {}
        for field, value in zip(_NET_DEV_FIELDS, values):
            if field is not None:
                stats[field] = int(value)
        result[name.strip()] = stats
    return result


def read_net_dev(netns_path: str) -> dict[str, dict[str, int]]:
    """Interface counters of the network namespace pinned at *netns_path*."""

    def read() -> str:
        # thread-self: /proc/net would be the main thread's (host's) view.
        with open("/proc/thread-self/net/dev", encoding="ascii") as f:
            return f.read()

    return parse_net_dev(run_in_namespace(netns_path, "net", read))
