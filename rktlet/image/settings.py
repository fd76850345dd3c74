"""What image pulls use that may change while the daemon runs (a SIGHUP
reloads it): registry mirrors, insecure registries, the pull progress timeout.

One :class:`PullSettings` is immutable; the image manager swaps the whole of
it at once, and a pull keeps the one it started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rktlet.config import ALWAYS_INSECURE


@dataclass(frozen=True)
class PullSettings:
    """The reloadable settings of image pulls.

    :ivar insecure_registries: ``host[:port]`` reached over plain HTTP or
        unverified TLS (besides the node itself, which always is).
    :ivar mirrors: ``(registry domain, (mirror URL, ...))`` pairs, the URLs
        in the order they are tried.
    :ivar progress_timeout: seconds a pull may go without progress.
    """

    insecure_registries: frozenset[str] = frozenset()
    mirrors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    progress_timeout: float = 300.0

    @classmethod
    def from_config(cls, config: Any) -> "PullSettings":
        """The settings of a :class:`rktlet.config.Config`."""
        return cls(
            insecure_registries=frozenset(config.insecure_registry),
            mirrors=tuple((domain, tuple(urls)) for domain, urls in config.mirrors.items()),
            progress_timeout=config.pull_progress_timeout,
        )

    def is_insecure(self, host: str) -> bool:
        """Whether *host* (``name`` or ``name:port``) may be reached over plain HTTP."""
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return host in self.insecure_registries or bare in ALWAYS_INSECURE or bare in self.insecure_registries

    def mirror_map(self) -> dict[str, list[str]]:
        """Registry domain -> mirror URLs (a fresh dict)."""
        return {domain: list(urls) for domain, urls in self.mirrors}
