"""An in-memory pod network: :class:`FakeNetwork` (the ``Network``
protocol of :mod:`rktlet.pod.drivers`).

Addresses come from a small IPv4 pool and go back to it on DEL. ADD and DEL
answer with Deferreds that have fired already. A test makes the next ADD or
DEL fail (:meth:`FakeNetwork.fail_next_add`, :meth:`FakeNetwork.fail_next_delete`):
a failed ADD leaves nothing behind, a failed DEL keeps the attachment cached
and its address held, for a retry — as the real driver does.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred, fail, succeed

from rktlet.errors import RuntimeFailure
from rktlet.network.cni import Attachment, NetworkResult
from rktlet.network.cni_exec import result_ips

__all__ = ["FakeNetwork"]


class FakeNetwork:
    """A CNI network without plugins.

    :param subnet: the pool; its first address is the gateway, the rest go
        to pods (a /29 gives six).
    :param name: the network's name.
    """

    def __init__(self, subnet: str = "10.89.0.0/29", name: str = "fake-net") -> None:
        self.network = ipaddress.ip_network(subnet)
        self.name = name
        hosts = list(self.network.hosts())
        self.gateway = hosts[0]
        self._free = hosts[1:]
        self._cache: dict[str, dict] = {}
        self._add_failure: Exception | None = None
        self._delete_failure: Exception | None = None
        self.calls: list[tuple[str, str]] = []

    def fail_next_add(self, error: Exception | None = None) -> None:
        """The next ADD fails (default: a RuntimeFailure, as a failing plugin)."""
        self._add_failure = error or RuntimeFailure(f"CNI ADD to network {self.name!r}: injected failure")

    def fail_next_delete(self, error: Exception | None = None) -> None:
        """The next DEL fails (default: a RuntimeFailure); the cache is kept."""
        self._delete_failure = error or RuntimeFailure(f"CNI DEL from network {self.name!r}: injected failure")

    def allocated(self) -> list[str]:
        """The addresses held (by attached pods, or pods whose DEL failed)."""
        return sorted(ip for entry in self._cache.values() for ip in result_ips(entry["result"], "eth0"))

    # -- the Network protocol --------------------------------------------------------

    def add(self, attachment: Attachment) -> Deferred[NetworkResult]:
        """Attach: the next free address of the pool."""
        self.calls.append(("ADD", attachment.container_id))
        failure, self._add_failure = self._add_failure, None
        if failure is not None:
            return fail(failure)
        entry = self._cache.get(attachment.container_id)
        if entry is None:
            if not self._free:
                return fail(RuntimeFailure(f"CNI ADD to network {self.name!r}: no address left in {self.network}"))
            address = self._free.pop(0)
            result = {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": attachment.ifname, "sandbox": attachment.netns}],
                "ips": [{"address": f"{address}/{self.network.prefixlen}", "gateway": str(self.gateway),
                         "interface": 0}],
            }
            network = {"cniVersion": "1.0.0", "name": self.name, "plugins": [{"type": "fake"}]}
            entry = {"network": network, "result": result, "attachment": attachment.as_json()}
            self._cache[attachment.container_id] = entry
        return succeed(NetworkResult(self.name, result_ips(entry["result"], attachment.ifname), entry["result"]))

    def delete(self, attachment: Attachment) -> Deferred[None]:
        """Detach: the address goes back to the pool. Idempotent."""
        self.calls.append(("DEL", attachment.container_id))
        failure, self._delete_failure = self._delete_failure, None
        if failure is not None:
            return fail(failure)
        entry = self._cache.pop(attachment.container_id, None)
        if entry is not None:
            for ip in result_ips(entry["result"], attachment.ifname):
                self._free.append(ipaddress.ip_address(ip))
            self._free.sort()
        return succeed(None)

    def cached(self, container_id: str) -> dict | None:
        """The cached ADD of a sandbox."""
        return self._cache.get(container_id)

    def cached_ids(self) -> list[str]:
        """Sandbox ids with a cached ADD."""
        return sorted(self._cache)

    def cached_attachments(self) -> dict[str, Attachment]:
        """The attachment of every cached ADD."""
        return {i: Attachment.from_json(e["attachment"]) for i, e in sorted(self._cache.items())}
