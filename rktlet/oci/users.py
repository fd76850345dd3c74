"""Who a container runs as: the CRI/kubelet user rules, resolved through the
container's own ``/etc/passwd`` and ``/etc/group``.

The files are read from the container's root file system, which is image
content and so untrusted: :func:`read_in_root` resolves every path the way
the kernel would inside a chroot at that root (absolute symlink targets
start at the root, ``..`` stops at it), so a hostile image cannot make the
daemon read a host file such as the host's ``/etc/shadow``.

Blocking (file reads): call from a worker thread, not the reactor thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

from rktlet.errors import InvalidArgument
from rktlet.oci.container_config import ResolvedUser, Security

__all__ = ["read_in_root", "resolve_user", "MAX_SYMLINKS"]

#: Symlinks followed while resolving one path before giving up (the
#: kernel's own limit, MAXSYMLINKS, is 40 too).
MAX_SYMLINKS = 40

# uid_t/gid_t are 32 bits; (uid_t)-1 means "no change" to set*id(2), so the
# largest usable id is 2**32 - 2.
_MAX_ID = 2**32 - 2

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class _Loop(Exception):
    """More than :data:`MAX_SYMLINKS` links, or a loop."""


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def read_in_root(root: str, path: str, limit: int = 1 << 20) -> bytes | None:
    """The content of *path* inside the root file system *root*, never
    leaving *root*.

    Each component is opened relative to the directory before it (``openat``
    with ``O_NOFOLLOW``), and symlinks are resolved by hand, chroot-style:
    an absolute target restarts at *root*, ``..`` never climbs above it.
    At most :data:`MAX_SYMLINKS` links are followed.

    :returns: the bytes, or ``None`` when the file is absent, is not a
        regular file, a component is not a directory, or the links loop
        (ELOOP: to a caller asking "is there a passwd file", that is the same
        as none).
    :raises InvalidArgument: the file is larger than *limit* bytes (a
        truncated passwd file would silently give wrong answers).
    """
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    # stack[0] is the root; stack[-1] the directory reached so far.  Keeping
    # every level open makes '..' a pop rather than a lookup of the real
    # parent (which, at the root, would be outside it).
    stack = [root_fd]
    try:
        fd = _walk(stack, path)
        if fd is None:
            return None
        return _read_regular(fd, limit, path)
    except _Loop:
        return None
    finally:
        for opened in stack:
            os.close(opened)


def _walk(stack: list[int], path: str) -> int | None:
    """Resolve *path* from ``stack[0]``; returns an ``O_PATH`` descriptor of
    the final file, pushed onto *stack* so the caller closes it; ``None``
    when some component is missing or not a directory."""
    pending = deque(_components(path))
    links = 0
    while pending:
        name = pending.popleft()
        if name == "..":
            if len(stack) > 1:
                os.close(stack.pop())
            continue
        try:
            fd = os.open(name, _PATH_FLAGS, dir_fd=stack[-1])
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG):
                return None
            raise
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            os.close(fd)
            links += 1
            if links > MAX_SYMLINKS:
                raise _Loop()
            target = os.readlink(name, dir_fd=stack[-1])
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            pending.extendleft(reversed(_components(target)))
            continue
        if pending and not stat.S_ISDIR(mode):
            os.close(fd)
            return None
        stack.append(fd)
    if len(stack) == 1:
        return None  # the path names the root directory itself
    return stack[-1]


def _read_regular(path_fd: int, limit: int, path: str) -> bytes | None:
    """Read the regular file behind the ``O_PATH`` descriptor *path_fd*."""
    if not stat.S_ISREG(os.fstat(path_fd).st_mode):
        return None  # a directory, FIFO or device: never block on or read those
    # Reopen through the descriptor (not by name) so the file checked is the
    # file read, even if the tree changes meanwhile.
    fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"{path} in the container image is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# passwd / group
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _lines(root: str, path: str) -> list[list[str]]:
    """The colon-separated records of a passwd-format file in *root*;
    comments, blank lines and NIS ``+``/``-`` entries skipped."""
    data = read_in_root(root, path)
    if data is None:
        return []
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "+", "-")):
            continue
        records.append(line.split(":"))
    return records


def _parse_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _passwd(root: str) -> list[_PasswdEntry]:
    entries = []
    for fields in _lines(root, "/etc/passwd"):
        if len(fields) < 4:
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(_PasswdEntry(fields[0], uid, gid, home))
    return entries


def _groups(root: str) -> list[_GroupEntry]:
    entries = []
    for fields in _lines(root, "/etc/group"):
        if len(fields) < 3:
            continue
        gid = _parse_id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        entries.append(_GroupEntry(fields[0], gid, members))
    return entries


def _check_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise InvalidArgument(f"{what}: {value!r} is not a valid id (0..{_MAX_ID})")
    return value


def resolve_user(root: str, image_user: str, security: Security) -> ResolvedUser:
    """The user, group and supplementary groups of a container's process.

    The kubelet's rules, in order:

    1. ``security.run_as_user`` (the uid as given; its passwd entry, if
       any, supplies the name, the primary gid and the home);
    2. ``security.run_as_username`` (must exist in the image's /etc/passwd);
    3. the image's ``USER``: ``name``, ``uid``, ``name:group``, ``uid:gid``
       (the group part a name from /etc/group or a number);
    4. nothing: root.

    ``run_as_group`` overrides the primary gid; the CRI allows it only
    together with ``run_as_user`` or ``run_as_username``.  Without an
    explicit group the gid comes from the user's passwd entry, or 0 for a
    uid passwd does not list (a numeric uid need not exist).  The
    supplementary gids are the /etc/group entries listing the user's name
    (unless ``supplemental_groups_policy`` is ``"strict"``), then
    ``supplemental_groups``; duplicates and the primary gid left out.
    The home is the passwd entry's, else ``/``.

    :raises InvalidArgument: a user or group *name* that the image's files
        do not define (naming it and the file), a malformed ``USER``, an id
        out of range, or ``run_as_group`` without a user.
    """
    if security.run_as_group is not None and security.run_as_user is None and not security.run_as_username:
        raise InvalidArgument("run_as_group: may only be set together with run_as_user or run_as_username")
    passwd = _passwd(root)
    by_name = {}
    by_uid = {}
    for entry in passwd:  # the first entry wins, as with getpwnam(3)
        by_name.setdefault(entry.name, entry)
        by_uid.setdefault(entry.uid, entry)

    group_spec = ""
    entry: _PasswdEntry | None
    if security.run_as_user is not None:
        uid = _check_id(security.run_as_user, "run_as_user")
        entry = by_uid.get(uid)
    elif security.run_as_username:
        entry = by_name.get(security.run_as_username)
        if entry is None:
            raise InvalidArgument(
                f"run_as_username: user {security.run_as_username!r} not found in the image's /etc/passwd"
            )
        uid = entry.uid
    elif image_user:
        user_spec, _, group_spec = image_user.partition(":")
        if not user_spec:
            raise InvalidArgument(f"image user {image_user!r}: no user before ':'")
        numeric = _parse_id(user_spec)
        if numeric is not None:
            uid = numeric
            entry = by_uid.get(uid)
        else:
            entry = by_name.get(user_spec)
            if entry is None:
                raise InvalidArgument(f"image user {user_spec!r} not found in the image's /etc/passwd")
            uid = entry.uid
    else:
        uid = 0
        entry = by_uid.get(0)

    groups = _groups(root)
    if security.run_as_group is not None:
        gid = _check_id(security.run_as_group, "run_as_group")
    elif group_spec:
        numeric = _parse_id(group_spec)
        if numeric is not None:
            gid = numeric
        else:
            match = next((g for g in groups if g.name == group_spec), None)
            if match is None:
                raise InvalidArgument(f"image user {image_user!r}: group {group_spec!r} not found in the image's /etc/group")
            gid = match.gid
    else:
        gid = entry.gid if entry is not None else 0

    username = entry.name if entry is not None else ""
    additional: list[int] = []
    if username and security.supplemental_groups_policy != "strict":
        additional += [g.gid for g in groups if username in g.members]
    for extra in security.supplemental_groups:
        additional.append(_check_id(extra, "supplemental_groups"))
    additional_gids = tuple(dict.fromkeys(g for g in additional if g != gid))
    home = entry.home if entry is not None and entry.home else "/"
    return ResolvedUser(uid=uid, gid=gid, additional_gids=additional_gids, username=username, home=home)
