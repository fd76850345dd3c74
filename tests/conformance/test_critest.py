"""cri-tools' ``critest`` v1.37.0 (the CRI validation suite) against rktlet,
fully offline.

The work is done by :mod:`tests.conformance.critest_run`, run as a child
process: it enters a new network namespace with only loopback, starts a local
registry holding every image critest pulls (rebuilt from the host's busybox
by :mod:`harness.critest_images`, pushed under their upstream paths),
starts rktlet with ``--registry-mirror`` for ``registry.k8s.io``, ``gcr.io``
and ``k8s.gcr.io`` and a CNI bridge network, runs critest with a Ginkgo JSON
report, cleans up (pods, processes by PID, temp dirs, critest's host shared
memory segments) and writes a JSON summary that this test reads.

critest is built by ``tests/tools/build-clients critest`` into
``$RKTLET_TOOLS_CACHE`` (default ``/var/cache/rktlet-test-tools``); without
it the test is skipped.

By hand, as root, from the repository root::

    # everything (registry, images, rktlet, critest, cleanup); summary in OUT.json,
    # --keep keeps critest's log and report and the daemon log in /tmp/critest-*
    .venv/bin/python -m tests.conformance.critest_run --summary /tmp/critest.json --keep
    # a subset: --focus REGEXP (repeatable), e.g. --focus 'Streaming'

    # add --parallel 4 to run 4 Ginkgo processes (needs the cached ginkgo)

    # or critest alone against a rktlet you started yourself (with the
    # mirrors pointing at a registry holding the images):
    /var/cache/rktlet-test-tools/critest-v1.37.0 \\
        --runtime-endpoint=unix:///run/rktlet/rktlet.sock \\
        --image-endpoint=unix:///run/rktlet/rktlet.sock \\
        '-ginkgo.skip=public image with digest should be pulled and removed' \\
        -ginkgo.json-report=/tmp/critest-report.json -ginkgo.no-color

``test_critest_user_namespaces`` runs the 6 UserNamespaces specs again,
with runc 1.5.3 (``tests/tools/build-clients runc``) as handler
``runc-idmap`` and critest's ``-runtime-handler``: in the main run they
skip, finding no handler that supports user namespaces (Debian's runc
1.1.5 makes no idmapped mounts).  About 15 s.

critest runs with ``-parallel=4`` (4 Ginkgo processes; the image specs are
``Serial`` and run alone at the end) when the Ginkgo CLI is in the cache
(``tests/tools/build-clients ginkgo``), sequentially otherwise;
``RKTLET_CRITEST_PARALLEL=N`` chooses.  Measured on 2 cores: about 20 s
with 4 processes, 40 s sequentially, plus 8 s for the second pass (the
Streaming specs over WebSocket) and 2 s to build and push the images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conformance.critest_run import CRITEST, GINKGO
from harness.critest_images import critest_images_available
from harness.daemon import REPO, daemon_env
from harness.registry import registry_available
from harness.runc import IDMAP_HANDLER, idmap_runc

pytestmark = pytest.mark.root

TIMEOUT = 40 * 60


def _format_failures(summary: dict) -> str:
    lines = []
    for f in summary.get("failures", []):
        # The first lines say it; Gomega then dumps the Go error struct.
        message_lines = f["message"].splitlines()
        message = "\n".join(message_lines[:6]) + ("\n…" if len(message_lines) > 6 else "")
        lines.append(f"* {f['spec']} [{f['state']}]\n    at {f['location']}\n    " + message.replace("\n", "\n    "))
    return "\n".join(lines)


def _run_critest(tmp_path, *args: str) -> dict:
    """Run tests.conformance.critest_run with *args* in a child process;
    its summary (the test fails when the run itself failed)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.access(CRITEST, os.X_OK):
        pytest.skip(f"{CRITEST} is not built (tests/tools/build-clients critest)")
    for reason in (registry_available(), critest_images_available()):
        if reason:
            pytest.skip(reason)
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")

    summary_path = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "tests.conformance.critest_run", "--summary", str(summary_path), *args]
    proc = subprocess.Popen(argv, cwd=REPO, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:  # stop it by its PID; it cleans up on SIGTERM
            proc.terminate()
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert summary_path.exists(), f"the critest runner wrote no summary:\n{out.decode(errors='replace')[-5000:]}"
    summary = json.loads(summary_path.read_text())
    if summary.get("error"):
        pytest.fail(f"critest run failed: {summary['error']}\n{summary.get('critest_log_tail', '')[-3000:]}\n"
                    f"rktlet log:\n{summary.get('daemon_log_tail', '')}")
    counts = summary["counts"]
    print(f"critest: {counts} in {summary.get('critest_s')} s (setup {summary.get('setup_s')} s)")
    for skip in summary.get("skips_with_reason", []):
        print(f"skipped by critest: {skip['spec']}: {skip['reason'].splitlines()[0]}")
    assert not summary.get("mirror_fallbacks"), "rktlet fell back from the local mirror to an upstream registry"
    assert counts["passed"] > 0, f"critest ran no spec:\n{summary.get('critest_log_tail', '')[-3000:]}"
    if counts["failed"]:
        pytest.fail(f"{counts['failed']} critest spec(s) failed ({counts}):\n{_format_failures(summary)}",
                    pytrace=False)
    return summary


def test_critest(tmp_path):
    parallel = int(os.environ.get("RKTLET_CRITEST_PARALLEL", "0")) or (4 if os.access(GINKGO, os.X_OK) else 1)
    _run_critest(tmp_path, *(["--parallel", str(parallel)] if parallel > 1 else []))


def test_critest_user_namespaces(tmp_path):
    """The 6 UserNamespaces specs with runc 1.5.3 as handler ``runc-idmap``
    (the main run's default handler is Debian's runc 1.1.5: they skip
    there, finding no handler that supports user namespaces): all must run
    and pass, none skip."""
    runc = idmap_runc()
    if runc is None:
        pytest.skip("no runc with idmapped mounts (tests/tools/build-clients runc)")
    summary = _run_critest(tmp_path, "--focus", "UserNamespaces", "--runtime-handler", f"{IDMAP_HANDLER}={runc}")
    ran = [s for s in summary["skips_with_reason"] if "UserNamespaces" in s["spec"]]
    assert ran == [], f"UserNamespaces specs skipped: {ran}"
    assert summary["counts"]["passed"] == 6, summary["counts"]
