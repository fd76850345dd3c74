"""Which runc the tests run under.

* :func:`test_runc`: the runc of the daemon's default handler and of the
  tests that drive runc themselves: ``$RKTLET_TEST_RUNC`` (or pytest's
  ``--runc PATH``), else ``runc`` from PATH (Debian 12's 1.1.5).  Set it to
  the cached runc 1.5.3 to run the container tests against that one.
* :func:`idmap_runc`: a runc that makes idmapped mounts, which pods with
  user namespaces need: ``$RKTLET_IDMAP_RUNC``, else the one
  ``tests/tools/build-clients runc`` caches; None when neither is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

CACHE_DIR = os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")
RUNC_VERSION = "v1.5.3"
#: Where tests/tools/build-clients puts runc 1.5.3.
CACHED_RUNC = os.path.join(CACHE_DIR, f"runc-{RUNC_VERSION}")
#: The handler name the tests give that runc (as the README suggests).
IDMAP_HANDLER = "runc-idmap"


def test_runc() -> str:
    """The runc binary the daemon's default handler and runc-driving tests use."""
    chosen = os.environ.get("RKTLET_TEST_RUNC", "")
    return chosen or shutil.which("runc") or "/usr/sbin/runc"


def has_idmap(binary: str) -> bool:
    """Whether *binary*'s ``runc features`` reports idmapped mounts."""
    try:
        out = subprocess.run([binary, "features"], capture_output=True, timeout=30).stdout
        doc = json.loads(out)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return bool(((doc.get("linux") or {}).get("mountExtensions") or {}).get("idmap", {}).get("enabled"))


def idmap_runc() -> str | None:
    """A runc with idmapped mounts, or None."""
    for candidate in (os.environ.get("RKTLET_IDMAP_RUNC", ""), CACHED_RUNC, test_runc()):
        if candidate and os.access(candidate, os.X_OK) and has_idmap(candidate):
            return candidate
    return None
