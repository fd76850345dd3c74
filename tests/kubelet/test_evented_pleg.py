"""A kubelet with the EventedPLEG feature gate on rktlet.

With the gate on, the kubelet builds a pod's container statuses from the
PodSandboxStatus answer (its ``containers_statuses``, stamped with
``timestamp``) instead of asking ContainerStatus per container, and relists a
pod as soon as GetContainerEvents reports one of its containers stopped.
An answer without the containers made it start the pod's container again
and again (a new one about every 0.1 s, never Running).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.kubelet.conftest import Env, container, kubelet_environment, wait_for

pytestmark = pytest.mark.root

@pytest.fixture(scope="module")
def kubelet_env() -> Iterator[Env]:
    # conftest's `env` fixture (pods removed after each test) uses this one.
    yield from kubelet_environment(feature_gates={"EventedPLEG": True})


def test_a_pod_runs_once_and_stays(env):
    env.kubelet.write_manifest("steady", {"containers": [container("c")]})
    env.wait_running("steady")
    wait_for(lambda: "started" in env.logs("steady", "c"), 30, "the container's log line")
    first = {c.id for c in env.containers("steady", "c")}
    assert len(first) == 1, first
    time.sleep(5)  # several sync periods (1 s): nothing is started again
    assert {c.id for c in env.containers("steady", "c")} == first
    (cs,) = env.kubelet.pod("steady")["status"]["containerStatuses"]
    assert cs["restartCount"] == 0 and "running" in cs["state"], cs


def test_a_stopped_container_is_seen_and_restarted(env):
    env.kubelet.write_manifest("crash", {"restartPolicy": "Always",
                                         "containers": [container("c", ["sh", "-c", "sleep 0.5; exit 3"])]})

    def restarted_twice():
        pod = env.kubelet.pod("crash")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0].get("restartCount", 0) >= 2 else None

    cs = wait_for(restarted_twice, 60, "restartCount >= 2", interval=0.2)
    assert cs["lastState"]["terminated"]["exitCode"] == 3
