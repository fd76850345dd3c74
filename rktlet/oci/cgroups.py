"""The cgroupfs cgroup driver: cgroup v1, hybrid and pure v2 hosts.

rktlet manages cgroups as directories in the mounted cgroup file systems
(the "cgroupfs" driver); there is no systemd driver (no systemd as PID 1
here).  Cgroup paths are absolute paths inside each hierarchy, e.g.
``/kubepods/besteffort/pod<uid>`` (the kubelet's cgroup_parent) or
``/rktlet/<pod id>``; runc gets the same path as ``linux.cgroupsPath``.

Layouts (see :func:`detect`):

* ``v1``: one hierarchy per controller (or per group of co-mounted
  controllers, like ``cpu,cpuacct``), plus named hierarchies such as
  ``name=systemd``.  Processes must be placed in every hierarchy.
* ``hybrid``: v1 as above plus a cgroup2 "unified" mount that holds no
  controllers the v1 hierarchies use (this machine: /sys/fs/cgroup/unified,
  with only hugetlb).  rktlet treats it as v1; the unified tree is left alone.
* ``v2``: one cgroup2 hierarchy.  :func:`ensure` only makes the directories:
  enabling controllers in ``cgroup.subtree_control`` along the path is left
  to runc, which does it for every ancestor when it creates a container's
  cgroup.  Mind v2's "no internal processes" rule: a cgroup that holds
  processes (:func:`add_process`) cannot enable controllers for children.

Every function here blocks on file-system calls: call them from a worker
thread, never from the reactor thread.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.mountinfo import unescape as unescape_mountinfo

__all__ = [
    "Layout",
    "detect",
    "layout_from_mountinfo",
    "ensure",
    "remove",
    "procs",
    "add_process",
    "validate_path",
]

# Mount options of a v1 cgroup mount that are not controller names.
_V1_OPTIONS = frozenset({
    "rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode",
    "favordynmods", "nofavordynmods", "none", "all",
})

# NAME_MAX: longer directory names are refused by every file system.
_NAME_MAX = 255


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are mounted.

    ``mode`` is "v1", "hybrid" (v1 plus a cgroup2 unified mount) or "v2"
    (unified only).  ``v1`` maps each v1 controller (and named hierarchy,
    e.g. ``name=systemd``) to its mount point; co-mounted controllers map to
    the same directory.  It is empty in "v2" mode.  ``unified`` is the
    cgroup2 mount point, if any.
    """

    mode: str
    v1: Mapping[str, str] = field(default_factory=dict)
    unified: str | None = None


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------

def layout_from_mountinfo(text: str) -> Layout:
    """The cgroup :class:`Layout` described by the text of a mountinfo file.

    When a hierarchy is mounted more than once (bind mounts, a second cgroup2
    mount), the first mount of its root (mount root ``/``) wins: that is
    the one the boot set up, and paths are relative to the hierarchy's root.
    Raises RuntimeFailure when no cgroup file system is mounted.
    """
    v1: dict[str, str] = {}
    v1_root: dict[str, bool] = {}  # controller → its chosen mount shows the hierarchy root
    unified: str | None = None
    unified_is_root = False
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2:
            continue
        fstype = fields[sep + 1]
        root = unescape_mountinfo(fields[3])
        mount_point = unescape_mountinfo(fields[4])
        at_root = root == "/"
        if fstype == "cgroup":
            superopts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
            for opt in superopts:
                if opt in _V1_OPTIONS or ("=" in opt and not opt.startswith("name=")):
                    continue
                if opt not in v1 or (at_root and not v1_root[opt]):
                    v1[opt] = mount_point
                    v1_root[opt] = at_root
        elif fstype == "cgroup2":
            if unified is None or (at_root and not unified_is_root):
                unified = mount_point
                unified_is_root = at_root
    controllers = [name for name in v1 if not name.startswith("name=")]
    if controllers:
        return Layout(mode="hybrid" if unified else "v1", v1=v1, unified=unified)
    if unified is not None:
        # Named v1 hierarchies alone (no controllers) beside cgroup2: the
        # controllers are all in the unified tree, so this is v2.
        return Layout(mode="v2", v1={}, unified=unified)
    raise RuntimeFailure("no cgroup file systems are mounted (neither cgroup v1 controllers nor cgroup2)")


def detect(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """The cgroup :class:`Layout` of this host, read from *mountinfo*."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise RuntimeFailure(f"read {mountinfo}: {os.strerror(e.errno or 0)}") from e
    return layout_from_mountinfo(text)


def _hierarchies(layout: Layout) -> list[str]:
    """The mount points rktlet manages cgroups in: each distinct v1 mount
    (v1 and hybrid), or the unified one (v2)."""
    if layout.mode == "v2":
        if not layout.unified:
            raise RuntimeFailure("cgroup layout is v2 but has no unified mount point")
        return [layout.unified]
    return list(dict.fromkeys(layout.v1.values()))


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------

def validate_path(path: str, field_name: str = "cgroup_parent") -> str:
    """Check a cgroup path from a request and return it.

    It must be absolute and normalized: no empty components (``//``, a
    trailing ``/``), no ``.`` or ``..``, no control characters, no component
    longer than 255 bytes.  systemd slice names (``kubepods.slice``,
    ``/kubepods.slice/...``) are refused with a message saying rktlet uses
    the cgroupfs driver.  Raises InvalidArgument naming *field_name*.
    """
    systemd_hint = (
        f"{field_name} {path!r} looks like a systemd slice: rktlet uses the cgroupfs "
        "cgroup driver; configure the kubelet with --cgroup-driver=cgroupfs so it sends "
        "paths like /kubepods/besteffort/pod<uid>"
    )
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"{field_name}: must be an absolute cgroup path such as /kubepods/pod123")
    if not path.startswith("/"):
        if path.endswith(".slice"):
            raise InvalidArgument(systemd_hint)
        raise InvalidArgument(f"{field_name} {path!r}: must be an absolute cgroup path such as /kubepods/pod123")
    if path == "/":
        return path
    for part in path[1:].split("/"):
        if part == "":
            raise InvalidArgument(f"{field_name} {path!r}: empty path component ('//' or a trailing '/')")
        if part in (".", ".."):
            raise InvalidArgument(f"{field_name} {path!r}: '.' and '..' are not allowed")
        if any(ord(c) < 0x20 or c == "\x7f" for c in part):
            raise InvalidArgument(f"{field_name} {path!r}: control characters are not allowed")
        if len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise InvalidArgument(f"{field_name} {path!r}: component longer than {_NAME_MAX} bytes")
        if part.endswith(".slice"):
            raise InvalidArgument(systemd_hint)
    return path


def _components(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _join(root: str, path: str) -> str:
    return os.path.join(root, *_components(path))


# ---------------------------------------------------------------------------
# Creation and removal
# ---------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _write(path: str, value: str) -> None:
    """Write *value* to a cgroup control file in one write(2), as the kernel
    wants (no O_CREAT: a missing file is an error, not something to make)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _inherit_cpuset(parent: str, child: str) -> None:
    """Copy cpuset.cpus and cpuset.mems from *parent* to a new v1 *child*.

    A new v1 cpuset cgroup starts with both empty (unless the hierarchy has
    clone_children), and a task cannot join a cpuset with no CPUs or memory
    nodes (ENOSPC).
    """
    for name in ("cpus", "mems"):
        file = f"cpuset.{name}"
        if not os.path.exists(os.path.join(child, file)):
            file = name  # hierarchy mounted with noprefix
        child_file = os.path.join(child, file)
        try:
            if _read(child_file).strip():
                continue
            value = _read(os.path.join(parent, file)).strip()
            if value:
                _write(child_file, value)
        except OSError as e:
            raise RuntimeFailure(f"cgroup {child}: copy {file} from {parent}: {os.strerror(e.errno or 0)}") from e


def ensure(layout: Layout, path: str) -> list[str]:
    """Create cgroup *path* (``mkdir -p``) in every managed hierarchy.

    That is each distinct v1 mount point in "v1" and "hybrid" mode, the
    unified mount in "v2" mode.  For v1 cpuset, every newly made level gets
    its parent's cpuset.cpus and cpuset.mems.  Returns the directories this
    call created, parents before children (deepest last), so the caller can
    :func:`remove` exactly those; levels that already existed are not
    listed.  On failure, what was created is removed and the error raised
    (InvalidArgument for a bad path, RuntimeFailure naming the directory).
    """
    path = validate_path(path)
    cpuset_root = layout.v1.get("cpuset") if layout.mode != "v2" else None
    created: list[str] = []
    try:
        roots = _hierarchies(layout)
        if layout.mode == "hybrid" and layout.unified:
            # runc also makes each container's cgroup in the unified tree of
            # a hybrid host; owning the pod's levels there too means removing
            # the pod removes what runc left under them.
            roots.append(layout.unified)
        for root in roots:
            current = root
            for part in _components(path):
                parent, current = current, os.path.join(current, part)
                try:
                    os.mkdir(current, 0o755)
                except FileExistsError:
                    if not os.path.isdir(current):
                        raise InvalidArgument(
                            f"cgroup_parent {path!r}: {part!r} is a control file in {parent}, not a cgroup"
                        ) from None
                    continue
                except OSError as e:
                    raise RuntimeFailure(f"create cgroup {current}: {os.strerror(e.errno or 0)}") from e
                created.append(current)
                if root == cpuset_root:
                    _inherit_cpuset(parent, current)
    except BaseException:
        try:
            remove(created)
        except RuntimeFailure:
            pass  # the original failure is the one worth reporting
        raise
    return created


def _pids(cgroup_dir: str) -> list[int]:
    """The pids in ``cgroup.procs`` of *cgroup_dir*; [] if it is gone."""
    try:
        text = _read(os.path.join(cgroup_dir, "cgroup.procs"))
    except FileNotFoundError:
        return []
    return sorted({int(line) for line in text.split()})


def _thaw(cgroup_dir: str) -> None:
    """Thaw *cgroup_dir* if it is a frozen v1 freezer or v2 cgroup: a frozen
    task does not act on SIGKILL until thawed.  Other hierarchies have no
    such files; errors are left to the removal that follows to report."""
    for control, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        try:
            _write(os.path.join(cgroup_dir, control), value)
        except OSError:
            pass


def _thaw_tree(cgroup_dir: str) -> None:
    """:func:`_thaw` *cgroup_dir* and every cgroup below it (a v1 freezer
    child frozen on its own stays frozen when its parent thaws)."""
    if not any(os.path.exists(os.path.join(cgroup_dir, f)) for f in ("freezer.state", "cgroup.freeze")):
        return  # not a hierarchy that can freeze: nothing to walk
    for directory, _subdirs, _files in os.walk(cgroup_dir):
        _thaw(directory)


def _kill_all(cgroup_dir: str) -> None:
    """SIGKILL every process in *cgroup_dir* (not its children's).

    The cgroup is thawed first.  On cgroup v2 ≥ 5.14, ``cgroup.kill`` does
    it all at once without pid-reuse races.  The daemon never kills itself.
    """
    pids = _pids(cgroup_dir)
    if os.getpid() in pids:
        raise RuntimeFailure(f"cannot remove cgroup {cgroup_dir}: the rktlet daemon itself is in it")
    _thaw(cgroup_dir)
    try:
        _write(os.path.join(cgroup_dir, "cgroup.kill"), "1")
    except OSError:
        pass  # v1, or a v2 kernel older than 5.14: the signals below do it
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_one(cgroup_dir: str, deadline: float) -> None:
    """rmdir *cgroup_dir*, first its child cgroups (made by runc under a pod
    cgroup, say), killing processes that keep any of them busy."""
    try:
        children = [entry.path for entry in os.scandir(cgroup_dir) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    except OSError as e:
        raise RuntimeFailure(f"remove cgroup {cgroup_dir}: {os.strerror(e.errno or 0)}") from e
    for child in children:
        _remove_one(child, deadline)
    pause = 0.005
    while True:
        try:
            os.rmdir(cgroup_dir)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise RuntimeFailure(f"remove cgroup {cgroup_dir}: {os.strerror(e.errno or 0)}") from e
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"remove cgroup {cgroup_dir}: {os.strerror(e.errno)}; "
                    f"processes still in it: {_pids(cgroup_dir)}"
                ) from e
        # Killed processes leave the cgroup when they exit (zombies do not
        # keep it busy), which takes a moment.
        _kill_all(cgroup_dir)
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def remove(dirs: Sequence[str], timeout: float = 5.0) -> None:
    """Remove cgroup directories (as returned by :func:`ensure`).

    Deepest first, whatever order they come in.  Child cgroups found inside
    are removed too.  Processes still in a cgroup are killed (SIGKILL) and
    the removal retried until *timeout* seconds have passed in all; frozen
    cgroups among *dirs* (v1 freezer, v2 cgroup.freeze) are thawed first so
    that the kill takes.  Absent directories are fine.  Raises RuntimeFailure naming the directory that
    could not be removed.
    """
    deadline = time.monotonic() + timeout
    ordered = sorted(dict.fromkeys(dirs), key=lambda d: d.rstrip("/").count("/"), reverse=True)
    # Thaw first, in every hierarchy given: in v1 the freezer is a hierarchy
    # of its own, and a process frozen there ignores the SIGKILL sent while
    # removing its cpu or memory cgroup, which come first.
    for cgroup_dir in ordered:
        _thaw_tree(cgroup_dir)
    for cgroup_dir in ordered:
        _remove_one(cgroup_dir, deadline)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

def procs(layout: Layout, path: str) -> list[int]:
    """Pids in cgroup *path* (sorted), read from the memory (else pids, else
    the first) v1 hierarchy, or the unified one in v2.  [] if the cgroup does
    not exist."""
    path = validate_path(path)
    if layout.mode == "v2":
        root = _hierarchies(layout)[0]
    else:
        root = layout.v1.get("memory") or layout.v1.get("pids") or _hierarchies(layout)[0]
    try:
        return _pids(_join(root, path))
    except OSError as e:
        raise RuntimeFailure(f"read {_join(root, path)}/cgroup.procs: {os.strerror(e.errno or 0)}") from e


def add_process(layout: Layout, path: str, pid: int) -> None:
    """Move process *pid* (all its threads) into cgroup *path* in every
    managed hierarchy.  Raises RuntimeFailure naming the cgroup.procs file
    that refused it; hierarchies already joined stay joined."""
    path = validate_path(path)
    for root in _hierarchies(layout):
        target = os.path.join(_join(root, path), "cgroup.procs")
        try:
            _write(target, str(int(pid)))
        except OSError as e:
            raise RuntimeFailure(f"add pid {pid} to {target}: {os.strerror(e.errno or 0)}") from e


def existing(layout: Layout, path: str) -> list[str]:
    """The directories of cgroup *path* that exist, in every hierarchy
    :func:`ensure` creates it in (for undoing an ``ensure`` whose result was
    lost, e.g. in a crash)."""
    path = validate_path(path)
    roots = _hierarchies(layout)
    if layout.mode == "hybrid" and layout.unified:
        roots.append(layout.unified)
    return [d for d in (_join(root, path) for root in roots) if os.path.isdir(d)]


def _cpu_weight(shares: int) -> int:
    # The kernel's documented v1 shares → v2 weight conversion.
    return 1 + ((max(2, min(shares, 262144)) - 2) * 9999) // 262142


def apply_resources(layout: Layout, path: str, resources: dict) -> list[str]:
    """Write OCI ``linux.resources`` (cpu shares/quota/period/cpus/mems,
    memory limit) into cgroup *path* — a pod's cgroup, which runc never
    manages. Returns the files written.

    :raises RuntimeFailure: naming the file the kernel refused.
    """
    path = validate_path(path)
    cpu = resources.get("cpu") or {}
    memory = resources.get("memory") or {}
    writes: list[tuple[str, str]] = []
    if layout.mode == "v2":
        base = _join(layout.unified or "", path)
        if cpu.get("shares"):
            writes.append((os.path.join(base, "cpu.weight"), str(_cpu_weight(cpu["shares"]))))
        if cpu.get("quota") or cpu.get("period"):
            quota = cpu.get("quota") or -1
            writes.append((os.path.join(base, "cpu.max"), f"{'max' if quota < 0 else quota} {cpu.get('period') or 100000}"))
        for key in ("cpus", "mems"):
            if cpu.get(key):
                writes.append((os.path.join(base, f"cpuset.{key}"), cpu[key]))
        if memory.get("limit"):
            writes.append((os.path.join(base, "memory.max"), str(memory["limit"])))
    else:
        def v1(controller: str, name: str, value: object) -> None:
            root = layout.v1.get(controller)
            if root:
                writes.append((os.path.join(_join(root, path), name), str(value)))

        if cpu.get("shares"):
            v1("cpu", "cpu.shares", cpu["shares"])
        if cpu.get("period"):
            v1("cpu", "cpu.cfs_period_us", cpu["period"])
        if cpu.get("quota"):
            v1("cpu", "cpu.cfs_quota_us", cpu["quota"])
        for key in ("cpus", "mems"):
            if cpu.get(key):
                v1("cpuset", f"cpuset.{key}", cpu[key])
        if memory.get("limit"):
            v1("memory", "memory.limit_in_bytes", memory["limit"])
    for file, value in writes:
        try:
            _write(file, value)
        except OSError as e:
            message = f"set {file} to {value}: {os.strerror(e.errno or 0)}"
            if e.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW, errno.EBUSY):
                # The kernel refused the value itself (a CPU that is not
                # there, a limit out of range or below what the pod uses
                # now): the request's fault.
                raise InvalidArgument(message) from None
            raise RuntimeFailure(message) from None
    return [file for file, _ in writes]
