"""A loopback-only network namespace for tests that run the real clients
(critest, the kubelet) against rktlet: nothing started inside it can reach
another machine, whatever a component tries (rktlet, for one, falls back
from a failing registry mirror to the upstream registry), and the bridges,
iptables rules and host ports the pods use vanish with it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def enter_private_network() -> None:
    """Move the calling thread (and the processes it starts from now on)
    into a new network namespace with only ``lo``, up."""
    _libc_call("unshare", CLONE_NEWNET)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """:func:`enter_private_network` for the ``with`` block, then back to
    the namespace the thread was in (the private one goes once the
    processes started in it are gone)."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_private_network()
        try:
            yield
        finally:
            _libc_call("setns", original, CLONE_NEWNET)
    finally:
        os.close(original)
