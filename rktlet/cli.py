"""The ``rktlet`` command: the same service as ``twistd -n rktlet``, in the
foreground, logging to stdout, without a pid file."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run the daemon with *argv* (default: the process arguments)."""
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["rktlet", "--nodaemon", "--pidfile=", "rktlet", *args]
    run()


if __name__ == "__main__":
    main()
