"""mount(2) and umount2(2) for the few mounts rktlet makes itself (a pod's
/dev/shm, layer overlays). Blocking: call from worker threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Sequence

from rktlet.fsutil import PRIVATE_DIR, make_dir

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
EINVAL = 22
ENOENT = 2


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); raises OSError naming the target."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target} ({data}): {os.strerror(err)}")


def unmount(target: str) -> None:
    """Lazily unmount *target*; not mounted or absent is fine (idempotent)."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (EINVAL, ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mount_shm(target: str, size_bytes: int, owner: tuple[int, int] | None = None) -> None:
    """A pod's /dev/shm: a size-limited tmpfs, mode 1777, nosuid/nodev/noexec.
    The mount point is made 0700 (the tmpfs's 1777 root covers it once
    mounted); the caller keeps its parent 0700, so host users cannot reach
    the tmpfs, which containers get as their /dev/shm.  *owner* (host uid,
    gid): who owns its root directory (root by default)."""
    if not os.path.ismount(target):  # never narrow the tmpfs's own 1777 root
        make_dir(target, PRIVATE_DIR)
    data = f"mode=1777,size={size_bytes}"
    if owner is not None:  # a user-namespaced pod's: its root's, as it sees it
        data += f",uid={owner[0]},gid={owner[1]}"
    mount("shm", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, data)


def mount_readonly_overlay(target: str, lowers: Sequence[str]) -> None:
    """An overlay of *lowers* (top first) without an upper dir: read-only by
    its nature (and mounted ``MS_RDONLY`` too). overlayfs needs at least two
    lower dirs then; fewer is EINVAL, as the kernel would answer."""
    if len(lowers) < 2:
        raise OSError(EINVAL, f"mount overlay on {target}: a read-only overlay needs two lower dirs, "
                              f"got {len(lowers)}")
    mount("overlay", target, "overlay", MS_RDONLY, f"lowerdir={':'.join(lowers)}")
