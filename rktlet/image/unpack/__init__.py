"""Unpack one image layer blob, safely, into a directory overlayfs can use
as a lower layer.

:func:`unpack_layer` streams the blob (gzip, zstd or uncompressed) through a
small tar reader of its own, computes the layer's ``diff_id`` (sha256 of the
uncompressed tar) on the way, and recreates every entry under ``target``:

* files, directories, symlinks, hard links, character and block devices and
  FIFOs, with numeric owner, mode (setuid/setgid/sticky included), mtime and
  the extended attributes of PAX ``SCHILY.xattr.*`` records;
* OCI/Docker whiteouts in overlayfs form: ``.wh.NAME`` becomes a character
  device 0:0 named ``NAME``; ``DIR/.wh..wh..opq`` sets
  ``trusted.overlay.opaque=y`` on ``DIR``; other ``.wh..wh.*`` names (aufs
  bookkeeping such as ``.wh..wh.plnk``, with everything under such a
  directory at the layer root) are skipped;
* a later entry with the same path replaces the earlier one; a directory over
  an existing directory keeps its content and takes the new metadata.

Security policy (the layer is untrusted input, even with a good digest):

* Nothing is ever created, changed or removed outside ``target``. Every
  operation is relative to a directory file descriptor obtained by walking
  the entry's parent path one component at a time from ``target`` with
  ``O_NOFOLLOW|O_DIRECTORY``; no symlink is ever followed, and new files are
  created with ``O_CREAT|O_EXCL`` after removing whatever was at the name,
  so an earlier entry can never redirect a later write.
* :class:`~rktlet.errors.HostileContent` is raised, naming the entry, for:
  absolute names; names with a ``..`` component left after lexical
  normalisation (``./a/../../b``); a parent path that goes through a symlink
  (``evil -> /etc`` then ``evil/passwd``); hard links whose target is
  absolute, escapes with ``..``, goes through a symlink, is a directory or
  does not exist (yet) in this layer; whiteouts named ``.wh..`` or
  ``.wh...``.  Symlink *targets* are stored verbatim (absolute or relative):
  they are resolved inside the container, never by us.
* Layer xattrs named ``trusted.overlay.*`` or ``user.overlay.*`` are
  dropped: they are overlayfs's own control attributes (opaque, redirect,
  metacopy, origin...), and letting a layer set them would let it steer the
  overlay mount (e.g. a redirect exposing other paths); opacity comes only
  from ``.wh..wh..opq``.  Other xattrs are applied after chown (which clears
  ``security.capability``); one the store's filesystem cannot hold
  (``ENOTSUP``, or ``EPERM`` for ``user.*`` on a symlink or device) is
  skipped, an invalid one is an error.
* PAX global headers are ignored (as by Docker and containerd); sparse files,
  paths more than 256 directories deep and every entry type not listed
  above are refused with :class:`~rktlet.errors.InvalidArgument`.
* Memory stays flat: data moves in chunks of at most 1 MiB whatever the
  compression ratio (no decompression bomb can make us buffer).  A stream
  that is corrupt, truncated (gzip trailer or zstd frame missing, tar cut
  inside an entry) or followed by garbage is an
  :class:`~rktlet.errors.InvalidArgument` naming the blob.  A tar cut exactly
  between entries cannot be told from a complete one: the caller's check of
  the returned ``diff_id`` against the image config catches it.
* Budgets (:class:`Limits`): bytes of file content (checked from each
  header before its data is written, so a decompression bomb is stopped
  before it lands), inodes and tar entries per layer, the length of the
  uncompressed stream, and an image-wide :class:`Budget` several layers
  unpacking at once charge together; over one is
  :class:`~rktlet.errors.ResourceExhausted` naming the entry and the limit.
* A :class:`Control` shows another thread how far the stream has been read
  (a watchdog tells a working unpack from a stuck one) and cancels the
  unpack at its next chunk or entry (:class:`UnpackCancelled`).
* Work is linear in the entries: a replaced directory drops its pending
  times in O(depth) (they are kept as a tree), not by scanning them all.
* The layer may hold setuid binaries and device nodes: the caller must keep
  the layer store itself unreachable for unprivileged host users (mode 0700
  on its root), as containerd does.

The layer root (``target`` itself) is set to mode 0755 unless the layer has a
``./`` entry saying otherwise: a temporary directory's 0700 would otherwise
become the container's ``/`` when this layer is the top one.

Ownership is only restored when running as root (as ``tar`` does); rktlet
always runs as root.

The parts: :mod:`.layer` (the whole unpack), :mod:`.decompress` (gzip, zstd,
the bounded hashed stream), :mod:`.tar` (the tar reader), :mod:`.extract`
(entries recreated safely) and :mod:`.limits` (budgets, control).
"""

from rktlet.image.unpack.decompress import COMPRESSIONS, detect_compression
from rktlet.image.unpack.layer import UnpackResult, unpack_layer
from rktlet.image.unpack.limits import Budget, Control, Limits, UnpackCancelled

__all__ = [
    "Budget", "COMPRESSIONS", "Control", "Limits", "UnpackCancelled", "UnpackResult", "detect_compression",
    "unpack_layer",
]
