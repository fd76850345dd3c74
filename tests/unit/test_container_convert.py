"""ListContainers' summary cache (rktlet/cri/container_convert.py)."""

from __future__ import annotations

from dataclasses import replace

from rktlet.cri.container_convert import SummaryCache
from rktlet.cri.proto import pb
from rktlet.pod.container import EXITED, RUNNING, Container


def test_summary_cache_rebuilds_for_each_new_snapshot_and_forgets_removed():
    live = Container(id="a", sandbox_id="p", name="a", attempt=0, fingerprint="", created_at=1, image="i",
                     image_ref="sha256:1", state=RUNNING, labels={"k": "v"})
    a = live.snapshot()
    b = replace(live, id="b", name="b").snapshot()
    cache = SummaryCache()
    first = cache.summaries([a, b], complete=True)
    assert [m.id for m in first] == ["a", "b"] and first[0].state == pb.CONTAINER_RUNNING
    assert first[0].labels == {"k": "v"}
    assert cache.summaries([a], complete=False)[0] is first[0]  # reused
    live.state = EXITED
    a = live.snapshot()  # the next version
    again = cache.summaries([a, b], complete=True)
    assert again[0] is not first[0] and again[0].state == pb.CONTAINER_EXITED
    assert again[1] is first[1]
    cache.summaries([b], complete=True)  # a was removed
    assert "a" not in cache._entries


def test_recursive_read_only_mounts_need_readonly_and_private_propagation():
    import pytest

    from rktlet.cri.container_convert import container_config
    from rktlet.errors import InvalidArgument

    def request(**mount):
        r = pb.CreateContainerRequest(pod_sandbox_id="p", config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="busybox")))
        r.config.mounts.add(container_path="/mnt", host_path="/tmp", recursive_read_only=True, **mount)
        return r

    config, _ = container_config(request(readonly=True))
    assert config.mounts[0].recursive_read_only and config.mounts[0].readonly
    with pytest.raises(InvalidArgument, match=r"mounts\[0\].recursive_read_only needs readonly"):
        container_config(request(readonly=False))
    with pytest.raises(InvalidArgument, match="PROPAGATION_BIDIRECTIONAL"):
        container_config(request(readonly=True, propagation=pb.PROPAGATION_BIDIRECTIONAL))
