"""The streaming server: exec, attach and port-forward sessions over SPDY/3.1
and WebSocket, behind one-time tokens handed out by the CRI RPCs."""
