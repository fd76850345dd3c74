"""The gRPC-thread to reactor-thread bridge, with a reactor run by a thread."""

from __future__ import annotations

import queue
import threading

import pytest
from twisted.internet.defer import Deferred, succeed

from rktlet.cri.bridge import ReactorBridge
from rktlet.errors import DeadlineExceeded, NotFound, Unavailable


class ThreadReactor:
    """Stands in for the reactor: runs ``callFromThread`` calls in order on
    one thread of its own, so the bridge's cross-thread handoff is real."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while (item := self.calls.get()) is not None:
            fn, args, kwargs = item
            fn(*args, **kwargs)

    def callFromThread(self, fn, *args, **kwargs):
        self.calls.put((fn, args, kwargs))

    def stop(self):
        self.calls.put(None)
        self.thread.join()


@pytest.fixture
def reactor():
    r = ThreadReactor()
    yield r
    r.stop()


def test_runs_on_the_reactor_thread(reactor):
    bridge = ReactorBridge(reactor)
    assert bridge.call(threading.current_thread) is reactor.thread


def test_plain_and_deferred_results(reactor):
    bridge = ReactorBridge(reactor)
    assert bridge.call(lambda a, b=0: a + b, 1, b=2) == 3
    assert bridge.call(succeed, "x") == "x"


def test_errors_are_raised_in_the_caller(reactor):
    bridge = ReactorBridge(reactor)

    def fail():
        raise NotFound("pod abc not found")

    with pytest.raises(NotFound, match="pod abc"):
        bridge.call(fail)


def test_deadline(reactor):
    bridge = ReactorBridge(reactor)
    pending = Deferred()
    with pytest.raises(DeadlineExceeded, match="within 0.1s"):
        bridge.call(lambda: pending, timeout=0.1)
    pending.callback(None)  # finishing later is harmless


def test_close_releases_waiters_and_refuses_new_calls(reactor):
    bridge = ReactorBridge(reactor)
    pending = Deferred()
    errors = []

    def wait():
        try:
            bridge.call(lambda: pending)
        except Unavailable as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    while not bridge._pending:
        pass
    bridge.close()
    t.join(5)
    assert errors and "shutting down" in str(errors[0])
    with pytest.raises(Unavailable):
        bridge.call(lambda: 1)
    pending.callback(None)
