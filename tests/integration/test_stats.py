"""Container and pod statistics against real workloads."""

from __future__ import annotations

import time

from rktlet.cri.proto import pb
from harness.containers import container_config, create, start
from harness.network import ping
from harness.pods import pod_config, pod_status, run_pod


def running(daemon, pod_id, pod_cfg, image, name, command):
    cid = create(daemon, pod_id, pod_cfg, container_config(name, image, command=command))
    start(daemon, cid)
    return cid


def test_container_and_pod_stats(daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    pod_cfg = pod_config(log_directory=str(tmp_path))
    pod_id = run_pod(daemon, pod_cfg)
    hog = running(daemon, pod_id, pod_cfg, image, "hog",
                  # dd fills a 70 MiB buffer, then blocks writing it to a reader that never reads.
                  ["sh", "-c", "dd if=/dev/zero bs=70M count=1 | sleep 300"])
    busy = running(daemon, pod_id, pod_cfg, image, "busy", ["sh", "-c", "while :; do :; done"])
    runtime = daemon.runtime()
    time.sleep(2)  # the hog has built its string
    first = {s.attributes.id: s for s in runtime.ListContainerStats(pb.ListContainerStatsRequest(), timeout=30).stats}
    time.sleep(1.5)
    second = {s.attributes.id: s for s in runtime.ListContainerStats(pb.ListContainerStatsRequest(), timeout=30).stats}
    assert second[hog].memory.working_set_bytes.value >= 64 * 1024 * 1024
    assert second[hog].attributes.metadata.name == "hog"
    cores = second[busy].cpu.usage_nano_cores.value
    assert 0.6e9 <= cores <= 1.3e9, cores
    assert second[busy].cpu.usage_core_nano_seconds.value > first[busy].cpu.usage_core_nano_seconds.value
    one = runtime.ContainerStats(pb.ContainerStatsRequest(container_id=hog[:12]), timeout=30).stats
    assert one.attributes.id == hog
    f = pb.ContainerStatsFilter(pod_sandbox_id=pod_id, label_selector={"nope": "x"})
    assert runtime.ListContainerStats(pb.ListContainerStatsRequest(filter=f), timeout=30).stats == []
    # Writable layer: measured in the background, reported once known.
    deadline = time.monotonic() + 15
    while not runtime.ContainerStats(pb.ContainerStatsRequest(container_id=hog), timeout=30).stats.writable_layer.HasField("inodes_used"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Pod: network counters grow with traffic to the pod.
    ip = pod_status(daemon, pod_id).status.network.ip
    before = runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats
    for _ in range(3):
        assert ping(ip)
    after = runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats
    assert after.linux.network.default_interface.name == "eth0"
    assert after.linux.network.default_interface.rx_bytes.value > before.linux.network.default_interface.rx_bytes.value
    assert after.linux.process.process_count.value >= 2
    assert {c.attributes.id for c in after.linux.containers} == {hog, busy}
    listed = runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=30).stats
    assert [s.attributes.id for s in listed] == [pod_id]
    names = {d.name for d in runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10).descriptors}
    assert {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
            "container_network_receive_bytes_total", "container_network_transmit_bytes_total"} <= names
    metrics = runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    assert metrics[0].pod_sandbox_id == pod_id
    assert any(m.name == "container_network_receive_bytes_total" and m.value.value > 0 for m in metrics[0].metrics)
    assert {cm.container_id for cm in metrics[0].container_metrics} == {hog, busy}
    # As critest checks it: every descriptor has values from the real cgroups
    # (block I/O accounting may be off), with as many labels as keys.
    keys = {d.name: len(d.label_keys) for d in runtime.ListMetricDescriptors(
        pb.ListMetricDescriptorsRequest(), timeout=10).descriptors}
    seen: dict[str, int] = {}
    for m in [*metrics[0].metrics, *(m for cm in metrics[0].container_metrics for m in cm.metrics)]:
        seen.setdefault(m.name, len(m.label_values))
    optional = {"container_blkio_device_usage_total", "container_fs_reads_bytes_total", "container_fs_reads_total",
                "container_fs_writes_bytes_total", "container_fs_writes_total", "container_spec_cpu_quota"}
    assert set(keys) - optional <= set(seen), set(keys) - optional - set(seen)
    assert all(seen[name] == keys[name] for name in seen)
