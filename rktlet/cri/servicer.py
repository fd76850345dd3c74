"""What every CRI servicer shares: the engine, the bridge, deadlines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import grpc

from rktlet.cri.bridge import ReactorBridge

if TYPE_CHECKING:
    from rktlet.pod.engine import Engine

# gRPC reports "no deadline" as a very large remaining time; past this many
# seconds a wait is treated as unbounded.
_UNBOUNDED = 365 * 24 * 3600.0


class Servicer:
    """Base of the CRI servicers.

    :param engine: the pod engine (touched only on the reactor thread).
    :param bridge: how worker threads reach the reactor thread.
    """

    def __init__(self, engine: Engine, bridge: ReactorBridge) -> None:
        self._engine = engine
        self._bridge = bridge

    def _on_reactor(self, context: grpc.ServicerContext, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the reactor thread within the RPC's deadline."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining > _UNBOUNDED:
            remaining = None
        return self._bridge.call(fn, *args, timeout=remaining, **kwargs)


# Items per message of the Stream* RPCs: bounded pages of what the List*
# twins return in one message.
PAGE_SIZE = 200


def paged(items: list, make: Callable[[list], Any]) -> Iterator[Any]:
    """*items* as a sequence of responses of at most PAGE_SIZE items each
    (one empty response when there are none)."""
    for start in range(0, max(len(items), 1), PAGE_SIZE):
        yield make(items[start : start + PAGE_SIZE])
