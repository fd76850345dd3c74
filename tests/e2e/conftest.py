"""e2e: the daemon started the way the README starts it (the ``rktlet``
command), driven by the real ``crictl``."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from harness.daemon import Daemon
from harness.pods import remove_all_pods


def rktlet_command() -> list[str]:
    """The installed ``rktlet`` command (beside the test interpreter first)."""
    beside = os.path.join(os.path.dirname(sys.executable), "rktlet")
    found = beside if os.access(beside, os.X_OK) else shutil.which("rktlet")
    if not found:
        pytest.skip("the rktlet command is not installed (pip install .)")
    return [found]


@pytest.fixture
def daemon():
    """rktlet started by its own command, in temporary dirs."""
    d = Daemon(command=rktlet_command())
    try:
        yield d.start()
    finally:
        remove_all_pods(d)
        d.cleanup()
