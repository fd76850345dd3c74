"""rktlet: a Kubernetes CRI v1 runtime on Twisted that keeps rkt's pod model."""

import os as _os

# The daemon forks children (runc, conmon, CNI plugins, ptys for exec). gRPC's
# fork handlers would otherwise run in those children between fork and exec
# and crash them; rktlet never uses gRPC in a forked child.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
