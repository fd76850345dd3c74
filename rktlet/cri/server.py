"""The gRPC server of the CRI, as a Twisted service on a unix socket."""

from __future__ import annotations

import os
from concurrent import futures
from typing import Sequence

import grpc
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from rktlet import logs
from rktlet.cri.bridge import ReactorBridge
from rktlet.errors import StartupError

log = logs.logger("rktlet.cri.server")

SOCKET_MODE = 0o660
# Seconds in-flight calls get to finish when the daemon stops.
STOP_GRACE = 5.0
# Messages up to 16 MiB each way (ExecSync output, large list answers).
MAX_MESSAGE = 16 * 1024 * 1024


class GrpcServerService(Service):
    """Serves the CRI handlers on the claimed unix socket.

    :param socket_path: the unix socket to serve, claimed by the daemon
        before this service starts (``socket_claim``).
    :param handlers: the gRPC handlers, one per CRI service.
    :param bridge: closed on stop, so waiting workers are released.
    :param max_workers: size of the worker thread pool: calls served at
        once. A call that waits (StopContainer in its grace period, a pull,
        ExecSync, an event stream) holds a worker all along, so there are
        many: cheap calls (Status, the lists the kubelet makes every second)
        must always find one. Past 8 calls queued per worker, new calls are
        refused with RESOURCE_EXHAUSTED instead of queueing without bound.
    """

    name = "cri-grpc"

    def __init__(
        self,
        socket_path: str,
        handlers: Sequence[grpc.GenericRpcHandler],
        bridge: ReactorBridge,
        max_workers: int = 128,
    ) -> None:
        self._socket_path = socket_path
        self._handlers = handlers
        self._bridge = bridge
        self._max_workers = max_workers
        self._server: grpc.Server | None = None

    def startService(self) -> None:
        path = self._socket_path
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="cri"),
            handlers=list(self._handlers),
            maximum_concurrent_rpcs=self._max_workers * 8,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        old_umask = os.umask(0o117)  # the socket is born 0660; no window wider than that
        try:
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise StartupError(f"cannot listen on {path}")
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        server.start()
        self._server = server
        Service.startService(self)
        log.info("CRI server listening on unix:{path}", path=path)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self._bridge.close()
        server, self._server = self._server, None

        def stop() -> None:
            if server is not None:
                server.stop(STOP_GRACE).wait()

        d = deferToThread(stop)
        d.addBoth(lambda result: (log.info("CRI server stopped"), result)[-1])
        return d
