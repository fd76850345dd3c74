"""Container events for the kubelet's evented PLEG (``GetContainerEvents``).

The engine publishes on the reactor thread; each subscriber reads from its
own bounded queue on a gRPC worker thread. A subscriber that falls behind
is dropped with an error rather than slowing the engine or growing memory.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

from rktlet import logs
from rktlet.errors import ResourceExhausted
from rktlet.pod.container import Container
from rktlet.pod.sandbox import Sandbox

log = logs.logger("rktlet.pod.events")

CREATED = "created"
STARTED = "started"
STOPPED = "stopped"
DELETED = "deleted"

# Events a subscriber may have unread before it is dropped.
QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class ContainerEvent:
    """One container lifecycle event, with snapshots of its pod and of the
    pod's containers as they were when it happened."""

    kind: str
    container_id: str
    created_at: int
    sandbox: Sandbox | None
    containers: tuple[Container, ...] = field(default_factory=tuple)


class _Closed:
    pass


_CLOSED = _Closed()


class Subscription:
    """One subscriber's queue; iterate it from a worker thread."""

    def __init__(self, hub: "EventHub", limit: int) -> None:
        self._hub = hub
        self._queue: queue.Queue = queue.Queue(maxsize=limit)
        self._error: Exception | None = None
        self._closed = threading.Event()

    def _offer(self, event: ContainerEvent) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            self._error = ResourceExhausted(
                f"container event subscriber fell behind by {self._queue.maxsize} events and was dropped"
            )
            self._wake()
            return False

    def _wake(self) -> None:
        self._closed.set()
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:
            pass  # the reader finds the flag after draining

    def close(self) -> None:
        """End the subscription (the client went away); thread-safe."""
        self._hub.unsubscribe(self)
        self._wake()

    def __iter__(self) -> Iterator[ContainerEvent]:
        while True:
            if self._error is not None:
                raise self._error
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if item is _CLOSED:
                if self._error is not None:
                    raise self._error
                return
            yield item


class EventHub:
    """Fans events out to subscribers, from the moment each subscribes."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self) -> Subscription:
        """A new subscription, receiving every event published after now."""
        subscription = Subscription(self, self._limit)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes (events are not built otherwise)."""
        return bool(self._subscribers)

    def publish(self, kind: str, container: Container, sandbox: Sandbox | None, pod_containers: list[Container],
                now_ns: int) -> None:
        """Publish a lifecycle event (reactor thread). The records given
        are snapshots (rktlet.pod.records): subscribers read them on their
        own threads, so they must never change."""
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        event = ContainerEvent(kind, container.id, now_ns, sandbox, tuple(pod_containers))
        for subscription in subscribers:
            if not subscription._offer(event):
                self.unsubscribe(subscription)
                log.warn("dropped a container event subscriber that fell behind")
