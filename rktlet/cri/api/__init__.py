"""Generated CRI v1 protobuf and gRPC modules (see ``generate.py``).

Import the messages through :mod:`rktlet.cri.proto`, which keeps the generated
layout a detail.
"""
