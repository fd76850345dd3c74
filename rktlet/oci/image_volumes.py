"""Image volumes (KEP-4639, the CRI's ``Mount.image``): an image's file
system mounted read-only into a container.

The image's unpacked layers are stacked in a read-only overlay (lower dirs
only: nothing is copied, nothing can be written) on a mount point in the
container's bundle, ``<bundle>/volumes/<n>`` for the request's mount *n*;
the container gets a read-only bind of it, or of a directory in it
(``image_sub_path``). Removing the bundle unmounts every mount point found
there first (:func:`mount_points`), so start-up recovery, which removes
the bundles of containers without a record, leaves no mount behind either.

Sub paths are resolved inside the mounted image by the rules containerd
follows (Go's ``os.OpenInRoot``): symbolic links are followed while they
stay in the image; an absolute link, or ``..`` climbing above the image's
root, is refused; what is named must be a directory.
"""

from __future__ import annotations

import os
import posixpath
import stat

from rktlet.errors import InvalidArgument, NotFound

__all__ = ["EMPTY_LOWER", "MAX_SUB_PATH", "check_sub_path", "mount_point", "mount_points", "resolve_sub_path",
           "volumes_dir"]

#: The longest ``image_sub_path`` taken (PATH_MAX).
MAX_SUB_PATH = 4096
#: Symbolic links followed at most while resolving a sub path (the kernel's ELOOP bound).
MAX_LINKS = 40
#: An empty directory under :func:`volumes_dir`, stacked below the image's
#: layers: overlayfs needs two lower dirs when it has no upper one (and an
#: image may have a single layer).
EMPTY_LOWER = "empty"


def volumes_dir(bundle: str) -> str:
    """Where a bundle's image volumes are mounted."""
    return os.path.join(bundle, "volumes")


def mount_point(bundle: str, index: int) -> str:
    """The mount point of the image volume of the request's mount *index*."""
    return os.path.join(volumes_dir(bundle), str(index))


def mount_points(bundle: str) -> list[str]:
    """Blocking: the image volume mount points a bundle has (made by
    :func:`mount_point`, mounted or not), whatever its record says."""
    try:
        names = os.listdir(volumes_dir(bundle))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(volumes_dir(bundle), n) for n in sorted(names) if n.isdigit()]


def check_sub_path(sub_path: str, field: str) -> str:
    """The sub path as checked before anything is mounted: relative, no NUL,
    within :data:`MAX_SUB_PATH`, not climbing above the image's root by its
    ``..`` components alone (read lexically: stricter than resolving, never
    looser). Returns it as given: only :func:`resolve_sub_path`, which
    follows links, may drop a ``..``.

    :raises InvalidArgument: naming *field* and the path.
    """
    if not sub_path:
        return ""
    if len(sub_path) > MAX_SUB_PATH:
        raise InvalidArgument(f"{field}: {len(sub_path)} bytes long, over the limit of {MAX_SUB_PATH}")
    if "\0" in sub_path:
        raise InvalidArgument(f"{field} {sub_path!r} holds a NUL byte")
    if sub_path.startswith("/"):
        raise InvalidArgument(f"{field} {sub_path!r} must be relative to the image's root")
    normal = posixpath.normpath(sub_path)
    if normal == ".." or normal.startswith("../"):
        raise InvalidArgument(f"{field} {sub_path!r} climbs above the image's root")
    return sub_path


def resolve_sub_path(root: str, sub_path: str, field: str) -> str:
    """Blocking: the directory *sub_path* names inside *root* (a mounted,
    read-only image), as an absolute path without symbolic links below
    *root*; *root* itself for ''.

    Links are followed inside *root*: a relative link resolves from its
    directory. The image is read-only and its layers never change, so what
    is resolved here is what the bind mount gets.

    :raises NotFound: a component does not exist (naming the path).
    :raises InvalidArgument: an absolute link, ``..`` above the root, a
        component that is not a directory, too many links.
    """
    what = f"{field} {sub_path!r}"
    pending = [p for p in sub_path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component last
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            if not resolved:
                raise InvalidArgument(f"{what} climbs above the image's root")
            resolved.pop()
            continue
        path = os.path.join(root, *resolved, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"{what} does not exist in the image ({'/'.join(resolved + [name])} is missing)") from None
        except NotADirectoryError:
            raise InvalidArgument(f"{what}: {'/'.join(resolved)} is not a directory") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise InvalidArgument(f"{what}: more than {MAX_LINKS} symbolic links")
            target = os.readlink(path)
            if target.startswith("/"):
                raise InvalidArgument(f"{what}: {'/'.join(resolved + [name])} is an absolute symbolic link "
                                      f"({target}), which would leave the image")
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if not stat.S_ISDIR(st.st_mode) and pending:
            raise InvalidArgument(f"{what}: {'/'.join(resolved + [name])} is not a directory")
        resolved.append(name)
    final = os.path.join(root, *resolved)
    if not stat.S_ISDIR(os.lstat(final).st_mode):
        # containerd and the KEP: a sub path names a directory, never a file.
        raise InvalidArgument(f"{what} is not a directory (only directories of an image can be mounted)")
    return final
