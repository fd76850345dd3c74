"""The streaming server: exec, attach and port-forward sessions over SPDY/3.1
and WebSocket, behind one-time tokens handed out by the CRI RPCs.

Plugging it in::

    service = StreamService(reactor, "127.0.0.1:10241", backend)   # server.py
    service.setServiceParent(parent)
    url = service.new_session(ExecRequest(...))   # on the reactor; the RPC's answer

*backend* is the runtime's :class:`~rktlet.stream.session.Backend`; the
server calls it when the client connects, with a
:class:`~rktlet.stream.session.Terminal` for the output.

Modules:

* ``session``: the interface with the runtime (requests, Backend, Terminal,
  ProcessIO).
* ``server``: the twisted.web resource, upgrade negotiation, ``StreamService``.
* ``tokens``: the one-time token cache.
* ``upgrade``: negotiation helpers and taking a connection over from twisted.web.
* ``spdyframes``: SPDY/3 frames and header compression (pure).
* ``spdy``: the SPDY connection protocol (streams, pings, no flow control).
* ``remotecommand``: exec/attach over SPDY (protocol versions v1-v4).
* ``portforward``: ``portforward.k8s.io`` over SPDY, and the pod-side TCP
  bridge shared with WebSocket.
* ``websocket``: the channel protocols (exec/attach, legacy port-forward) and
  the SPDY port-forward tunnel, on autobahn.
* ``command``: exec/attach independent of the wire (status, resizes).
* ``flow``: back-pressure and idle-time plumbing.
* ``testing``: in-memory fakes and clients for tests.
"""
