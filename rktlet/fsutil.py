"""Small file-system helpers shared by every layer.

File modes (see the README's "Security notes"): every directory rktlet makes
on the way to a root filesystem, bundle, writable layer, unpacked layer, pod
directory or record is :data:`PRIVATE_DIR` (0700) and every record and
runtime spec :data:`PRIVATE_FILE` (0600), so that no host user but root can
list, read or execute anything there (a setuid file made inside a container
must not be reachable from the host). :func:`make_dir` applies a mode
whatever the umask, also to directories an older daemon made.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_dir(path: str, mode: int = PRIVATE_DIR, narrow: bool = True) -> None:
    """``mkdir -p`` *path* where every directory this makes, and *path*
    itself even when it existed already, gets exactly *mode*: the umask does
    not apply (``os.makedirs(mode=…)`` is subject to it and leaves existing
    directories as they are) and a directory left wider by an older daemon
    is narrowed. Parents that existed are left alone; so is an existing
    *path* with *narrow* false (a directory an operator named, which may be
    shared, such as ``/run``)."""
    path = os.path.abspath(path)
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
        os.chmod(directory, mode)
    if narrow and not missing and os.stat(path).st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def set_mode(path: str, mode: int) -> None:
    """``chmod`` *path* (not following a symlink there) when it exists and
    has another mode; a missing path is fine (start-up narrowing of what an
    older daemon made)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o7777 == mode:
        return
    os.chmod(path, mode)


def write_atomic(path: str, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace *path* with *data* so that readers see the old or the new
    content, never a mix, even across a crash: temp file, fsync, rename,
    fsync of the directory. The file gets *mode* whatever the umask (0600
    unless the caller says why others may read it)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask, and a leftover temp file's mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: str, value: Any, mode: int = PRIVATE_FILE) -> None:
    """:func:`write_atomic` of *value* as indented JSON."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", mode)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in *path*, or *default* when the file does not exist."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
