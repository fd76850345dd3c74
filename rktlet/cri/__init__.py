"""The CRI gRPC boundary: thin servicers over the pod engine.

Each servicer method validates its request, crosses to the reactor thread
through :mod:`rktlet.cri.bridge`, calls the engine and converts the answer to
protobuf. :mod:`rktlet.cri.dispatch` registers every RPC and maps errors.
"""
