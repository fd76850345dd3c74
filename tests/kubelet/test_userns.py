"""``hostUsers: false`` through a real standalone kubelet, with rktlet's
default handler on a runc that makes idmapped mounts (runc 1.5.3; static
pods cannot name a RuntimeClass without an API server).

The kubelet allocates the pod's range itself (no ``kubelet`` user in
/etc/subuid: ids from 65536 up, 65536 per pod), sends it as the pod's
``userns_options``, and puts the same mappings on every mount it makes
(volumes, /etc/hosts, the termination log).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.runc import idmap_runc
from tests.kubelet.conftest import BUSYBOX, Env, kubelet_environment, wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def kubelet_env() -> Iterator[Env]:
    # conftest's `env` fixture (pods removed after each test) uses this one.
    runc = idmap_runc()
    if runc is None:
        pytest.skip("no runc with idmapped mounts (tests/tools/build-clients runc)")
    yield from kubelet_environment(("--runtime", runc))


def test_host_users_false(env):
    script = ("cat /proc/self/uid_map; stat -c '%n %u:%g' / /bin/busybox /data /etc/hosts; "
              "touch /data/f /f && echo wrote; trap 'exit 0' TERM; while true; do sleep 1; done")
    env.kubelet.write_manifest("userns", {
        "hostUsers": False,
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
    })
    env.wait_running("userns")
    wait_for(lambda: "wrote" in env.logs("userns", "c"), 30, "the container to write")
    lines = env.logs("userns", "c").splitlines()
    container_id, host_id, length = (int(x) for x in lines[0].split())
    assert container_id == 0 and length == 65536 and host_id >= 65536 and host_id % 65536 == 0, lines[0]
    assert lines[1:5] == ["/ 0:0", "/bin/busybox 0:0", "/data 0:0", "/etc/hosts 0:0"], lines
