"""Recreating tar entries under the target directory, safely: every
operation relative to a directory fd walked without following symlinks,
whiteouts in overlayfs form, hard links checked, times applied last,
budgets charged as entries are created (see the package documentation for
the policy)."""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections import OrderedDict
from collections.abc import Iterator

from rktlet.errors import HostileContent, InvalidArgument, ResourceExhausted
from rktlet.image.unpack.limits import Limits
from rktlet.image.unpack.tar import BLK, CHR, DIR, FIFO, FILE_TYPES, LNK, SYM, Entry, TarReader

# Deeper paths are refused: real layers stay far below, and Python's
# recursive shutil.rmtree (used to clean up and garbage-collect layers)
# fails on trees deeper than its recursion limit.
_MAX_DEPTH = 256
# Directory fds kept open between entries (most layers list a directory's
# children together, so a small cache makes parent lookups free).
_MAX_CACHED_DIRS = 128

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."
_OPAQUE_XATTR = "trusted.overlay.opaque"
_DROPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# -- extraction --------------------------------------------------------------------


class _PendingTimes:
    """Directory times to set at the end, kept as a tree of path components
    so that a replaced directory's subtree is dropped in O(depth), not by
    scanning every pending path (which made layers replacing many
    directories quadratic)."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        # A node: [times or None, {child name: node}].
        self._root: list = [None, {}]

    def set(self, path: str, times: tuple[int, int]) -> None:
        node = self._root
        if path:
            for part in path.split("/"):
                node = node[1].setdefault(part, [None, {}])
        node[0] = times

    def drop(self, path: str) -> None:
        """Forget *path* (never the root) and everything below it."""
        parent, _, name = path.rpartition("/")
        node = self._root
        if parent:
            for part in parent.split("/"):
                node = node[1].get(part)
                if node is None:
                    return
        node[1].pop(name, None)

    def items(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """``(path, times)`` of every pending directory, parents first."""
        stack = [("", self._root)]
        while stack:
            path, (times, children) = stack.pop()
            if times is not None:
                yield path, times
            for name, child in children.items():
                stack.append((f"{path}/{name}" if path else name, child))


class Extractor:
    """Creates entries under the target directory, never following a symlink.

    Directories are reached through file descriptors opened component by
    component with ``O_NOFOLLOW``, cached by normalised path between entries.
    """

    def __init__(self, target: str, what: str, limits: Limits | None = None) -> None:
        self._what = what
        self._limits = limits or Limits()
        self._entries = 0
        self._charged_inodes = 0
        self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: OrderedDict[str, int] = OrderedDict()
        # Directory mtimes are set last: creating children changes them.
        self._dir_times = _PendingTimes()
        self._chown = os.geteuid() == 0
        self._entry_name = ""
        self.size = 0
        self.inodes = 0
        # See the module docstring: a temp dir's 0700 must not leak into "/".
        os.fchmod(self._root, 0o755)

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self._root)

    # errors

    def _hostile(self, why: str) -> HostileContent:
        return HostileContent(f"{self._what}: entry {self._entry_name!r}: {why}")

    def _invalid(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self._what}: entry {self._entry_name!r}: {why}")

    # paths

    def _normalize(self, name: str, what: str) -> str:
        """*name* relative to the layer root, normalised ("" for the root)."""
        if "\0" in name:
            raise self._invalid(f"{what} contains a NUL byte")
        if name.startswith("/"):
            raise self._hostile(f"{what} {name!r} is absolute")
        norm = posixpath.normpath(name) if name else "."
        if norm == ".":
            return ""
        if norm == ".." or norm.startswith("../"):
            raise self._hostile(f"{what} {name!r} leads outside the layer")
        if norm.count("/") >= _MAX_DEPTH:
            raise self._invalid(f"{what} is deeper than {_MAX_DEPTH} directories")
        return norm

    def _dir(self, path: str, create: bool) -> int:
        """An fd of directory *path* (normalised, "" for the root), reached
        without following symlinks; missing components are created (mode
        0755) when *create*, else FileNotFoundError."""
        if not path:
            return self._root
        fd = self._dirs.get(path)
        if fd is not None:
            self._dirs.move_to_end(path)
            return fd
        parts = path.split("/")
        # Start from the deepest cached ancestor.
        depth = len(parts) - 1
        fd = self._root
        while depth > 0:
            cached = self._dirs.get("/".join(parts[:depth]))
            if cached is not None:
                fd = cached
                break
            depth -= 1
        owned = False  # whether fd is ours to close (an uncached ancestor)
        for i in range(depth, len(parts)):
            try:
                child = self._open_dir(fd, parts[i], create)
            finally:
                if owned:
                    os.close(fd)
            # Cache the directory itself and, within a bound, its ancestors
            # (fds in use by this entry must not be closed before _trim, so a
            # very deep path must not make us hold thousands of fds).
            if i == len(parts) - 1 or len(self._dirs) < 2 * _MAX_CACHED_DIRS:
                self._dirs["/".join(parts[:i + 1])] = child
                owned = False
            else:
                owned = True
            fd = child
        return fd

    def _open_dir(self, parent_fd: int, name: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.lstat(name, dir_fd=parent_fd)
            if stat.S_ISLNK(st.st_mode):
                raise self._hostile(f"its path goes through the symlink {name!r}") from None
            raise self._invalid(f"its path goes through {name!r}, which is not a directory") from None
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        self.inodes += 1
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, 0o755)  # whatever the umask
        return fd

    def _forget(self, path: str) -> None:
        """Drop cached fds and pending mtimes at and below removed *path*."""
        below = path + "/"
        # The fd cache holds at most 2 * _MAX_CACHED_DIRS entries: a scan is
        # cheap.  Pending times are a tree: dropping a subtree is O(depth).
        if self._dirs:
            for key in [k for k in self._dirs if k.startswith(below) or k == path]:
                os.close(self._dirs.pop(key))
        self._dir_times.drop(path)

    def _trim(self) -> None:
        """Close the least recently used dir fds beyond the cache size (only
        between entries, when no fd is in use)."""
        while len(self._dirs) > _MAX_CACHED_DIRS:
            os.close(self._dirs.popitem(last=False)[1])

    def _remove(self, parent_fd: int, name: str, path: str) -> None:
        """Remove whatever is at *name* (this layer's earlier entry)."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget(path)
            try:
                os.rmdir(name, dir_fd=parent_fd)  # the common case: empty
                self.inodes -= 1
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            self.inodes -= self._count_inodes(parent_fd, name)
            shutil.rmtree(name, dir_fd=parent_fd)  # fd-based, never follows symlinks
        else:
            os.unlink(name, dir_fd=parent_fd)
            if st.st_nlink == 1:
                self.inodes -= 1

    @staticmethod
    def _count_inodes(parent_fd: int, name: str) -> int:
        """Inodes that removing the tree *name* frees (hard-linked ones only
        when all their names are inside it)."""
        dirs = 0
        names_by_inode: dict[int, list[int]] = {}
        for _, subdirs, files, dir_fd in os.fwalk(name, dir_fd=parent_fd, follow_symlinks=False):
            dirs += 1
            for entry in files + subdirs:
                st = os.lstat(entry, dir_fd=dir_fd)
                if stat.S_ISDIR(st.st_mode):
                    continue  # counted when walked
                names_by_inode.setdefault(st.st_ino, [st.st_nlink, 0])[1] += 1
        return dirs + sum(1 for nlink, seen in names_by_inode.values() if seen >= nlink)

    # metadata

    def _set_xattrs(self, target: int | str, xattrs: dict[str, bytes]) -> None:
        """Apply the layer's xattrs to an fd or a (/proc/self/fd based) path,
        dropping overlayfs's own attributes (see the module docstring)."""
        follow = isinstance(target, int)  # an fd: nothing to follow (and os insists)
        for key, value in xattrs.items():
            if key.startswith(_DROPPED_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    continue  # not representable on this file system / inode type
                raise self._invalid(f"cannot set xattr {key!r}: {e.strerror}") from None

    def _proc_path(self, parent_fd: int, name: str) -> str:
        # Symlinks, devices and FIFOs cannot be opened for fsetxattr without
        # following or triggering them; the magic link resolves to the
        # already verified parent, and the last component is not followed.
        return f"/proc/self/fd/{parent_fd}/{name}"

    # entries

    def extract(self, entry: Entry, reader: TarReader) -> None:
        """Create *entry* under the target (reading its data from *reader*)."""
        self._entry_name = entry.name
        limits = self._limits
        self._entries += 1
        if limits.max_inodes is not None and self._entries > limits.max_inodes:
            raise ResourceExhausted(f"{self._what} has more than {limits.max_inodes} entries "
                                    f"(the limit is {limits.max_inodes} inodes)")
        if entry.type in FILE_TYPES and entry.size:
            self._charge_bytes(entry.size)
        try:
            self._extract(entry, reader)
            self._charge_inodes()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(
                    f"no space left unpacking {self._what} (entry {entry.name!r})") from None
            if e.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
                           errno.EEXIST, errno.ENOENT, errno.EMLINK, errno.ENOTEMPTY, errno.EXDEV):
                raise self._invalid(f"cannot create it: {e.strerror}") from None
            raise
        except (ValueError, OverflowError) as e:  # a NUL in a symlink target, a huge uid...
            raise self._invalid(str(e)) from None
        finally:
            self._trim()

    def _extract(self, entry: Entry, reader: TarReader) -> None:
        path = self._normalize(entry.name, "name")
        parent, _, name = path.rpartition("/")
        kind = entry.type

        if path.startswith(_META_PREFIX) and path != _OPAQUE_MARKER:
            return  # aufs bookkeeping trees at the root (.wh..wh.plnk/...)
        if name.startswith(_WHITEOUT_PREFIX):
            self._whiteout(parent, name, entry)
            return
        if not path:
            if kind != DIR:
                raise self._invalid("only a directory can be the layer root")
            self._apply_dir_meta(self._root, "", entry)
            return

        if kind in FILE_TYPES:
            parent_fd = self._dir(parent, True)
            fd = self._create(parent_fd, name, path,
                              lambda: os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd))
            try:
                self.size += reader.copy_data(fd)
                if self._chown:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)  # after chown, which clears setuid
                if entry.xattrs:
                    self._set_xattrs(fd, entry.xattrs)  # after chown too (capabilities)
                os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
            self.inodes += 1
        elif kind == DIR:
            parent_fd = self._dir(parent, True)
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.inodes += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
                    self._remove(parent_fd, name, path)
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                    self.inodes += 1
            self._apply_dir_meta(self._dir(path, False), path, entry)
        elif kind == SYM:
            parent_fd = self._dir(parent, True)
            self._create(parent_fd, name, path, lambda: os.symlink(entry.linkname, name, dir_fd=parent_fd))
            self._apply_meta_nofollow(parent_fd, name, entry, chmod=False)
            self.inodes += 1
        elif kind == LNK:
            self._hard_link(parent, name, path, entry)
        elif kind in (CHR, BLK, FIFO):
            parent_fd = self._dir(parent, True)
            fmt = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}[kind]
            dev = os.makedev(entry.devmajor, entry.devminor) if kind != FIFO else 0
            self._create(parent_fd, name, path, lambda: os.mknod(name, fmt | 0o600, dev, dir_fd=parent_fd))
            self._apply_meta_nofollow(parent_fd, name, entry, chmod=True)
            self.inodes += 1
        else:
            raise self._invalid(f"unsupported tar entry type {kind!r}")

    # budgets

    def _over(self, why: str) -> ResourceExhausted:
        return ResourceExhausted(f"{self._what}: entry {self._entry_name!r}: {why}")

    def _charge_bytes(self, n: int) -> None:
        """Account for *n* bytes of file content about to be written."""
        limits = self._limits
        if limits.max_bytes is not None and self.size + n > limits.max_bytes:
            raise self._over(f"the layer holds more than {limits.max_bytes} bytes of files")
        if limits.shared is not None and (why := limits.shared.charge(n, 0)) is not None:
            raise self._over(why)

    def _charge_inodes(self) -> None:
        """Account for the inodes the last entry made (or freed)."""
        limits = self._limits
        delta = self.inodes - self._charged_inodes
        if not delta:
            return
        if limits.max_inodes is not None and self.inodes > limits.max_inodes:
            raise self._over(f"the layer holds more than {limits.max_inodes} inodes")
        if limits.shared is not None and (why := limits.shared.charge(0, delta)) is not None:
            raise self._over(why)
        self._charged_inodes = self.inodes

    def _create(self, parent_fd: int, name: str, path: str, make):  # type: ignore[no-untyped-def]
        """Run *make* (which creates *name* exclusively); if something is in
        the way, remove it (a later entry replaces an earlier one) and retry."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, name, path)
            return make()

    def _apply_dir_meta(self, fd: int, path: str, entry: Entry) -> None:
        if self._chown:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)  # after chown, which clears setgid
        if entry.xattrs:
            self._set_xattrs(fd, entry.xattrs)
        self._dir_times.set(path, (entry.atime_ns, entry.mtime_ns))

    def _apply_meta_nofollow(self, parent_fd: int, name: str, entry: Entry, chmod: bool) -> None:
        """Owner, mode, xattrs and times of a symlink, device or FIFO *name*
        just created in *parent_fd* (never opened: that would follow or
        trigger it)."""
        if self._chown:
            os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        if chmod:
            # Linux has no lchmod; *name* is the device/FIFO just created
            # exclusively, not a symlink, so following it is moot.
            os.chmod(name, entry.mode, dir_fd=parent_fd)
        if entry.xattrs:
            self._set_xattrs(self._proc_path(parent_fd, name), entry.xattrs)
        os.utime(name, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _hard_link(self, parent: str, name: str, path: str, entry: Entry) -> None:
        target = self._normalize(entry.linkname, "hard link target")
        if not target:
            raise self._hostile("hard link to the layer root")
        if target == path:
            raise self._invalid("hard link to itself")
        if target.startswith(path + "/"):
            raise self._invalid(f"hard link replaces a directory holding its target {entry.linkname!r}")
        target_parent, _, target_name = target.rpartition("/")
        missing = self._hostile(f"hard link target {entry.linkname!r} does not exist in this layer")
        try:
            target_parent_fd = self._dir(target_parent, False)
            st = os.lstat(target_name, dir_fd=target_parent_fd)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        except InvalidArgument as e:  # a non-directory on the way: missing, too
            if isinstance(e, HostileContent):
                raise
            raise missing from None
        if stat.S_ISDIR(st.st_mode):
            raise self._hostile(f"hard link target {entry.linkname!r} is a directory")
        parent_fd = self._dir(parent, True)
        self._create(parent_fd, name, path, lambda: os.link(
            target_name, name, src_dir_fd=target_parent_fd, dst_dir_fd=parent_fd, follow_symlinks=False))

    def _whiteout(self, parent: str, name: str, entry: Entry) -> None:
        if name == _OPAQUE_MARKER:
            # Creating the directory if the marker comes before its entry.
            fd = self._dir(parent, True)
            try:
                os.setxattr(fd, _OPAQUE_XATTR, b"y")
            except OSError as e:
                raise self._invalid(f"cannot mark {parent or '/'!r} opaque: {e.strerror}") from None
            return
        if name.startswith(_META_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs...)
        hidden = name[len(_WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise self._hostile(f"whiteout of {hidden!r} does not name an entry of its directory")
        parent_fd = self._dir(parent, True)
        path = f"{parent}/{hidden}" if parent else hidden
        self._remove(parent_fd, hidden, path)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
        self.inodes += 1

    def finish(self) -> None:
        """Set directory mtimes, now that nothing more is created in them."""
        for path, times in self._dir_times.items():
            self._entry_name = path or "."
            os.utime(self._dir(path, False), ns=times)
            self._trim()
        self._dir_times = _PendingTimes()
