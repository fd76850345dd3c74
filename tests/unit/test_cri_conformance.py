"""What critest and the kubelet expect of the CRI boundary, as units: ids
that cannot exist, unknown enum values, image names in statuses, and the
cAdvisor-named metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rktlet.cri import container_convert, metrics_convert, sandbox_convert
from rktlet.cri.proto import known, pb
from rktlet.errors import InvalidArgument
from rktlet.oci.cgroup_metrics import BlockDevice, CgroupMetrics, _blkio_v1, _flat, _io_v2
from rktlet.pod import ids
from rktlet.pod.container import RUNNING, Container
from rktlet.pod.stats import ContainerMetricFigures, PodMetricFigures

# What critest v1.37 (pkg/validate/pod.go) requires of ListMetricDescriptors,
# less the ones it lists as not implemented by every runtime yet.
CRITEST_REQUIRED_METRICS = {
    "container_blkio_device_usage_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
    "container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total",
    "container_fs_limit_bytes", "container_fs_reads_bytes_total", "container_fs_reads_total",
    "container_fs_usage_bytes", "container_fs_writes_bytes_total", "container_fs_writes_total",
    "container_last_seen", "container_memory_cache", "container_memory_failcnt",
    "container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap",
    "container_memory_usage_bytes", "container_memory_working_set_bytes",
    "container_network_receive_bytes_total", "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total", "container_network_receive_packets_total",
    "container_network_transmit_bytes_total", "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total", "container_network_transmit_packets_total",
    "container_oom_events_total", "container_processes", "container_sockets", "container_spec_cpu_period",
    "container_spec_cpu_shares", "container_spec_memory_limit_bytes", "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds", "container_threads", "container_threads_max",
}
# Values critest allows to be missing (block I/O accounting may be off).
OPTIONAL_VALUES = {"container_blkio_device_usage_total", "container_fs_reads_bytes_total",
                   "container_fs_reads_total", "container_fs_writes_bytes_total", "container_fs_writes_total"}


# -- ids -----------------------------------------------------------------------


def test_an_id_that_is_not_hex_is_simply_not_found():
    known_ids = ["ab" * 32]
    assert ids.resolve("da6d141e-e453-4968-a471-577187b48550", known_ids) is None
    assert ids.resolve("", known_ids) is None
    assert ids.resolve("ab", known_ids) == "ab" * 32
    with pytest.raises(InvalidArgument, match="ambiguous"):
        ids.resolve("a", ["a1", "a2"])


# -- enums ---------------------------------------------------------------------


def test_unknown_enum_values_are_invalid_argument_naming_the_field():
    with pytest.raises(InvalidArgument, match=r"config.port_mappings\[0\].protocol: unknown value 99"):
        known({pb.TCP: "tcp"}, 99, "config.port_mappings[0].protocol", pb.Protocol)
    request = pb.RunPodSandboxRequest()
    request.config.metadata.name, request.config.metadata.uid, request.config.metadata.namespace = "p", "u", "n"
    request.config.port_mappings.add(container_port=80, protocol=99)
    with pytest.raises(InvalidArgument, match="protocol"):
        sandbox_convert.sandbox_spec(request)
    request = pb.RunPodSandboxRequest()
    request.config.metadata.name, request.config.metadata.uid, request.config.metadata.namespace = "p", "u", "n"
    request.config.linux.security_context.namespace_options.network = 42
    with pytest.raises(InvalidArgument, match="network: 42"):
        sandbox_convert.sandbox_spec(request)


def _create_request(**security) -> pb.CreateContainerRequest:
    request = pb.CreateContainerRequest(pod_sandbox_id="p")
    request.config.metadata.name = "c"
    request.config.image.image = "busybox"
    for key, value in security.items():
        setattr(request.config, key, value)
    return request


def test_unknown_signal_propagation_and_profile_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="stop_signal"):
        container_convert.stop_signal(_create_request(stop_signal=500).config)
    request = _create_request()
    request.config.mounts.add(container_path="/x", host_path="/tmp", propagation=7)
    with pytest.raises(InvalidArgument, match=r"mounts\[0\].propagation"):
        container_convert.container_config(request)
    request = _create_request()
    request.config.linux.security_context.seccomp.profile_type = 9
    with pytest.raises(InvalidArgument, match="seccomp.profile_type"):
        container_convert.container_config(request)


# -- image names in statuses ------------------------------------------------------


def _container(**fields) -> Container:
    base = dict(id="c1", sandbox_id="p1", name="app", attempt=0, fingerprint="", created_at=1,
                image="sha256:" + "4" * 64, image_ref="sha256:" + "4" * 64, state=RUNNING)
    base.update(fields)
    return Container(**base)


def test_status_names_the_image_by_tag_and_keeps_what_the_user_wrote():
    c = _container(image_name="registry.k8s.io/e2e-test-images/nginx:1.14-2",
                   image_digest_ref="registry.k8s.io/e2e-test-images/nginx@sha256:" + "9" * 64,
                   user_specified_image="registry.k8s.io/e2e-test-images/nginx:1.14-2")
    status = container_convert.container_status(c)
    assert status.image.image == "registry.k8s.io/e2e-test-images/nginx:1.14-2"
    assert status.image.user_specified_image == "registry.k8s.io/e2e-test-images/nginx:1.14-2"
    assert status.image_ref == "registry.k8s.io/e2e-test-images/nginx@sha256:" + "9" * 64
    assert status.image_id == c.image_ref
    summary = container_convert.container_summary(c)
    assert summary.image.image == status.image.image and summary.image_id == c.image_ref


def test_status_of_an_untagged_image_names_what_the_request_named():
    c = _container(image_name="sha256:" + "4" * 64)
    status = container_convert.container_status(c)
    assert status.image.image == c.image and status.image_ref == c.image_ref


# -- metrics ---------------------------------------------------------------------


def test_descriptors_cover_what_critest_requires_with_help_and_labels():
    names = {d.name for d in metrics_convert.DESCRIPTORS}
    assert CRITEST_REQUIRED_METRICS <= names
    for d in metrics_convert.DESCRIPTORS:
        assert d.help and d.label_keys, d.name
        assert list(d.label_keys[:6]) == list(metrics_convert.BASE_LABELS)


def _figures() -> PodMetricFigures:
    values = {key: 7 for key in (
        "cpu_user_seconds", "cpu_system_seconds", "cpu_cfs_periods", "cpu_cfs_throttled_periods",
        "cpu_cfs_throttled_seconds", "spec_cpu_period", "spec_cpu_quota", "spec_cpu_shares", "memory_cache",
        "memory_rss", "memory_mapped_file", "memory_swap", "memory_pgfault_container",
        "memory_pgmajfault_container", "memory_pgfault_hierarchy", "memory_pgmajfault_hierarchy",
        "memory_failcnt", "memory_max_usage_bytes", "memory_kernel_usage", "spec_memory_limit_bytes",
        "spec_memory_reservation_limit_bytes", "spec_memory_swap_limit_bytes", "oom_events", "threads_max",
        "processes", "threads", "file_descriptors", "sockets")}
    cgroup = CgroupMetrics(values, (BlockDevice(8, 0, "/dev/sda", {"Read": 1, "Write": 2}, {"Read": 3, "Write": 4}),))
    sample = SimpleNamespace(cpu_usage_ns=5_000_000_000, memory_usage_bytes=10, memory_working_set_bytes=9)
    c = _container(started_at=3_000_000_000, image_name="busybox:latest")
    figures = ContainerMetricFigures(c, 4_000_000_000, sample, cgroup, (100, 5),
                                     {"limit_bytes": 1000, "inodes_total": 50, "inodes_free": 40}, "/dev/vda1")
    sandbox = SimpleNamespace(id="p1", name="pod", namespace="ns")
    network = {"lo": {"rx_bytes": 1}, "eth0": {"rx_bytes": 11, "tx_bytes": 12, "rx_packets": 1, "tx_packets": 1,
                                                 "rx_errors": 0, "tx_errors": 0, "rx_drop": 0, "tx_drop": 0}}
    return PodMetricFigures(sandbox, 4_000_000_000, network, (figures,))


def test_every_descriptor_has_values_with_as_many_labels_as_keys():
    message = metrics_convert.pod_metrics(_figures())
    found: dict[str, list[pb.Metric]] = {}
    for m in [*message.metrics, *message.container_metrics[0].metrics]:
        found.setdefault(m.name, []).append(m)
    assert "lo" not in {m.label_values[-1] for m in found["container_network_receive_bytes_total"]}
    for d in metrics_convert.DESCRIPTORS:
        assert d.name in found, d.name
        for m in found[d.name]:
            assert len(m.label_values) == len(d.label_keys), d.name
    assert found["container_cpu_usage_seconds_total"][0].value.value == 5
    assert found["container_start_time_seconds"][0].value.value == 3
    assert found["container_fs_usage_bytes"][0].label_values[-1] == "/dev/vda1"
    assert {tuple(m.label_values[-2:]) for m in found["container_memory_failures_total"]} == {
        ("pgfault", "container"), ("pgfault", "hierarchy"), ("pgmajfault", "container"), ("pgmajfault", "hierarchy")}


def test_cgroup_file_parsers():
    assert _flat(b"user 10\nsystem 20\nbad x\n") == {"user": 10, "system": 20}
    assert _blkio_v1(b"8:0 Read 4096\n8:0 Write 0\nTotal 4096\n") == {(8, 0): {"Read": 4096, "Write": 0}}
    nbytes, ops = _io_v2(b"8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n")
    assert nbytes == {(8, 0): {"Read": 1, "Write": 2}} and ops == {(8, 0): {"Read": 3, "Write": 4}}


# -- records ---------------------------------------------------------------------


def test_a_record_that_is_json_but_not_an_object_is_set_aside(tmp_path):
    from rktlet.pod.store import ContainerStore

    store = ContainerStore(str(tmp_path))
    assert list(store.load()) == []  # makes the directory, as at start-up
    good = _container(id="a" * 64)
    store.save(good)
    for name, text in (("b" * 64, "[1, 2]"), ("c" * 64, '{"id": 5}'), ("d" * 64, "{")):
        (tmp_path / "containers" / f"{name}.json").write_text(text)
    assert [c.id for c in store.load()] == [good.id]
    assert sorted(p.name for p in (tmp_path / "containers").glob("*.bad")) == [
        f"{n * 64}.json.bad" for n in "bcd"]


# -- hostile image documents ---------------------------------------------------------

_DIFF_ID = "sha256:" + "1" * 64


@pytest.mark.parametrize("doc,field", [
    ({"rootfs": {"diff_ids": [5]}}, "diff_ids[0]"),
    ({"rootfs": {"diff_ids": [_DIFF_ID]}, "config": []}, "config is a list"),
    ({"rootfs": {"diff_ids": [_DIFF_ID]}, "config": {"Labels": ["a"]}}, "config.Labels"),
    ({"rootfs": {"diff_ids": [_DIFF_ID]}, "config": {"ExposedPorts": [80, "x"]}}, "config.ExposedPorts"),
    ({"rootfs": {"diff_ids": [_DIFF_ID]}, "config": {"Volumes": "/data"}}, "config.Volumes"),
])
def test_image_configs_of_the_wrong_shape_are_invalid_argument_naming_the_field(doc, field):
    import json

    from rktlet.image.manifest import parse_config

    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(json.dumps(doc).encode(), "registry/app:1")


def test_descriptor_urls_of_the_wrong_shape_are_invalid_argument():
    import json

    from rktlet.image.manifest import OCI_MANIFEST, parse_manifest

    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _DIFF_ID, "size": 2, "urls": 7}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}).encode()
    with pytest.raises(InvalidArgument, match="urls"):
        parse_manifest(OCI_MANIFEST, body, "registry/app:1")


def test_pod_keys_of_names_with_slashes_do_not_collide():
    assert ids.pod_key("a/b", "c", "u", 1) != ids.pod_key("a", "b/c", "u", 1)
    assert ids.pod_key("default", "web", "uid-1", 2) == "default/web/uid-1/2"


def test_log_path_is_relative_and_the_request_log_directory_is_not_trusted():
    request = _create_request(log_path="c/0.log")
    request.sandbox_config.log_directory = "/etc"  # whatever a client says: the pod's record decides
    _, log_path = container_convert.container_config(request)
    assert log_path == "c/0.log"
    for bad in ("/etc/passwd", "../x.log"):
        with pytest.raises(InvalidArgument, match="log_path"):
            container_convert.container_config(_create_request(log_path=bad))


def test_pod_log_directory_must_be_absolute():
    request = pb.RunPodSandboxRequest()
    request.config.metadata.name, request.config.metadata.uid, request.config.metadata.namespace = "p", "u", "n"
    for bad in ("logs", "/var/log/../../etc"):
        request.config.log_directory = bad
        with pytest.raises(InvalidArgument, match="log_directory"):
            sandbox_convert.sandbox_spec(request)


@pytest.mark.parametrize("fields,field", [
    ({"cpu_period": 10}, "cpu_period"),
    ({"cpu_quota": 5}, "cpu_quota"),
    ({"cpu_shares": 1}, "cpu_shares"),
    ({"memory_limit_in_bytes": 1 << 30, "memory_swap_limit_in_bytes": 1 << 20}, "memory_swap_limit_in_bytes"),
    ({"cpuset_cpus": "["}, "cpuset_cpus"),
])
def test_resource_values_no_kernel_takes_are_invalid_argument(fields, field):
    with pytest.raises(InvalidArgument, match=f"linux.{field}"):
        container_convert.resources(pb.LinuxContainerResources(**fields), "linux")
    ok = container_convert.resources(pb.LinuxContainerResources(cpu_period=100000, cpu_quota=20000, cpu_shares=2,
                                                                cpuset_cpus="0-1,3"), "linux")
    assert ok.cpu_shares == 2 and ok.cpuset_cpus == "0-1,3"
