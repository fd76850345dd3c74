"""The two variants every contract test runs in, and the skip of the real
one where it cannot run."""

from __future__ import annotations

import os
import shutil

import pytest

#: Fixture params: the fake first (it needs nothing), then the real driver.
VARIANTS = ["fake", "real"]


def require_real(*programs: str) -> None:
    """Skip the calling test's real variant without root or without one of
    *programs* (looked up in PATH)."""
    if os.geteuid() != 0:
        pytest.skip("the real driver needs root (namespaces, mounts, cgroups)")
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"the real driver needs {', '.join(missing)}, not installed")
