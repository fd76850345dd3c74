"""Budgets and control of an unpack: per-layer :class:`Limits`, the image-wide
:class:`Budget` several layers charge together from their threads, and the
:class:`Control` another thread watches and cancels an unpack through."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rktlet.errors import RktletError

# With byte and inode limits, the tar stream may exceed the content by this
# much per allowed entry (header, padding, a PAX record) plus a fixed slack
# (a few large extension headers).
STREAM_OVERHEAD_PER_ENTRY = 2048
STREAM_SLACK = 64 << 20


class UnpackCancelled(RktletError):
    """The unpacking was cancelled through its :class:`Control`."""


class Budget:
    """Bytes and inodes that several layers (one image's) may use together.

    Charged from unpacking threads, hence the lock.

    :param max_bytes: bytes of file content, ``None`` for no limit.
    :param max_inodes: inodes, ``None`` for no limit.
    :param what: how messages name the limit (``"the image's"``).
    """

    def __init__(self, max_bytes: int | None, max_inodes: int | None, what: str = "the image's") -> None:
        self.max_bytes = max_bytes
        self.max_inodes = max_inodes
        self.what = what
        self.bytes = 0
        self.inodes = 0
        self._lock = threading.Lock()

    def charge(self, nbytes: int, inodes: int) -> str | None:
        """Add *nbytes* and *inodes* (negative: freed); returns why that is
        over the budget (then nothing is charged), else ``None``."""
        with self._lock:
            if self.max_bytes is not None and nbytes > 0 and self.bytes + nbytes > self.max_bytes:
                return f"{self.what} layers together hold more than {self.max_bytes} bytes of files"
            if self.max_inodes is not None and inodes > 0 and self.inodes + inodes > self.max_inodes:
                return f"{self.what} layers together hold more than {self.max_inodes} inodes"
            self.bytes += nbytes
            self.inodes += inodes
            return None


@dataclass(frozen=True)
class Limits:
    """Budgets of one layer's unpacking; ``None`` is unlimited.

    :ivar max_bytes: bytes of file content written (replaced files count).
    :ivar max_inodes: inodes the layer holds, and tar entries it may have.
    :ivar shared: a :class:`Budget` charged as well (the image's).

    The uncompressed tar stream itself may be longer than the content by
    what headers need (:data:`STREAM_OVERHEAD_PER_ENTRY` per allowed entry
    plus :data:`STREAM_SLACK`) and no more.
    """

    max_bytes: int | None = None
    max_inodes: int | None = None
    shared: Budget | None = None

    @property
    def max_stream(self) -> int | None:
        if self.max_bytes is None or self.max_inodes is None:
            return None
        return self.max_bytes + self.max_inodes * STREAM_OVERHEAD_PER_ENTRY + STREAM_SLACK


class Control:
    """Watching and stopping an unpack running in another thread.

    :ivar offset: bytes of the uncompressed tar stream consumed so far (the
        owner polls it to tell a working unpack from a stuck one).
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self.offset = 0

    def cancel(self) -> None:
        """Make the unpack stop (soon: at its next chunk or entry) with
        :class:`UnpackCancelled`."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

