"""The daemon as a process: serving, configuration, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time

import grpc
import pytest

from rktlet.cri.image_service import ImageService
from rktlet.cri.proto import SERVICES, pb
from rktlet.cri.runtime_service import RuntimeService
from harness.runc import test_runc
from harness.daemon import Daemon, daemon_env, twistd_command, write_network


def status(daemon, verbose=False):
    response = daemon.runtime().Status(pb.StatusRequest(verbose=verbose), timeout=10)
    return {c.type: c for c in response.status.conditions}, response


def test_version(daemon):
    response = daemon.runtime().Version(pb.VersionRequest(version="v1"), timeout=10)
    assert response.runtime_name == "rktlet"
    assert response.runtime_api_version == "v1"
    assert response.runtime_version


def test_default_network_is_written_into_an_empty_conf_dir(daemon):
    path = os.path.join(daemon.cni_conf_dir, "10-rktlet.conflist")
    with open(path) as f:
        network = json.load(f)
    assert network["name"] == "rkt.kubernetes.io"
    assert [p["type"] for p in network["plugins"]] == ["bridge", "portmap"]
    assert network["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/16"}]]
    conditions, _ = status(daemon)
    assert conditions["NetworkReady"].status is True, conditions["NetworkReady"].message


def test_status_without_cni_config_names_the_reason(daemon):
    os.unlink(os.path.join(daemon.cni_conf_dir, "10-rktlet.conflist"))
    conditions, _ = status(daemon)
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert daemon.cni_conf_dir in network.message


def test_status_network_ready_follows_config_and_plugins(daemon):
    os.unlink(os.path.join(daemon.cni_conf_dir, "10-rktlet.conflist"))
    write_network(daemon.cni_conf_dir, plugins=("bridge", "no-such-plugin"))
    conditions, _ = status(daemon)
    assert conditions["NetworkReady"].status is False
    assert "no-such-plugin" in conditions["NetworkReady"].message
    write_network(daemon.cni_conf_dir, plugins=("bridge", "portmap"))
    conditions, _ = status(daemon)
    assert conditions["NetworkReady"].status is True, conditions["NetworkReady"].message


def test_status_verbose_returns_effective_config(daemon):
    _, response = status(daemon, verbose=True)
    config = json.loads(response.info["config"])
    assert config["socket"] == daemon.socket
    assert config["root"] == daemon.root
    assert config["run-dir"] == daemon.run_dir
    assert config["stream-address"] == f"127.0.0.1:{daemon.stream_port}"
    assert config["log-level"] == "debug"
    assert [h.name for h in response.runtime_handlers] == ["", "runc"]


def test_runtime_config_reports_cgroupfs(daemon):
    response = daemon.runtime().RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
    assert response.linux.cgroup_driver == pb.CGROUPFS


def test_update_runtime_config_stores_pod_cidr_across_restart():
    d = Daemon()
    try:
        d.start()
        request = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.244.1.0/24"))
        )
        d.runtime().UpdateRuntimeConfig(request, timeout=10)
        bad = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.244.1.0/99"))
        )
        with pytest.raises(grpc.RpcError) as e:
            d.runtime().UpdateRuntimeConfig(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pod_cidr" in e.value.details()
        assert d.stop() in (0, -signal.SIGTERM)
        d.start()
        _, response = status(d, verbose=True)
        assert json.loads(response.info["runtimeConfig"])["podCIDRs"] == ["10.244.1.0/24"]
    finally:
        d.cleanup()


def _empty_request(method):
    return getattr(pb, method.input_type.name)()


def test_every_rpc_is_registered_and_unbuilt_ones_say_unimplemented(daemon):
    channel = daemon.channel()
    implemented = {
        m.name for service, cls in zip(SERVICES, (RuntimeService, ImageService)) for m in service.methods
        if hasattr(cls, m.name)
    }
    seen = 0
    for service in SERVICES:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            response_cls = getattr(pb, method.output_type.name)
            if method.server_streaming:
                call = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=response_cls.FromString)
            else:
                call = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_cls.FromString)
            try:
                # An event stream never ends by itself: give it a short deadline.
                result = call(_empty_request(method), timeout=2 if method.name == "GetContainerEvents" else 10)
                if method.server_streaming:
                    list(result)
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.UNKNOWN, (path, e.details())
                if method.name == "GetContainerEvents" and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if method.name not in implemented:
                    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (path, e.code(), e.details())
                    assert method.name in e.details() and "Traceback" not in e.details()
                    seen += 1
                continue
            assert method.name in implemented, f"{path} answered without being built"
    assert seen == 43 - len(implemented)
    assert {"Version", "Status", "PullImage"} <= implemented
    assert "Traceback" not in daemon.log()


def test_socket_is_mode_0660(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_socket(sig):
    d = Daemon()
    try:
        d.start()
        # twistd ends a signalled daemon by re-raising that signal, as a
        # process killed by it would; systemd counts SIGTERM as a clean exit.
        assert d.stop(sig) in (0, -sig)
        assert "CRI server stopped" in d.log()
        assert "Traceback" not in d.log()
        assert not os.path.exists(d.socket)
        assert not os.path.exists(d.socket + ".lock")
    finally:
        d.cleanup()


def test_second_daemon_on_same_socket_is_refused_with_one_line(daemon):
    second = subprocess.run(
        twistd_command(*daemon.args), capture_output=True, text=True, env=daemon_env(), cwd=daemon.base, timeout=30
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "another rktlet" in lines[0] and daemon.socket in lines[0]
    assert str(daemon.process.pid) in lines[0]
    # The first one still serves.
    daemon.runtime().Version(pb.VersionRequest(), timeout=10)


def test_streaming_port_in_use_is_refused_with_one_line_and_leaves_nothing():
    """A listener that cannot listen (here the streaming server's port is
    taken) is a start-up refusal like the others: one line, exit status 1,
    and the claimed socket given back."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    d = Daemon(extra_args=["--stream-address", f"127.0.0.1:{port}"])
    try:
        os.makedirs(d.run_dir)
        result = subprocess.run(twistd_command(*d.args), capture_output=True, text=True, env=daemon_env(),
                                cwd=d.base, timeout=60)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"rktlet: streaming server cannot listen on 127.0.0.1:{port}: "), lines
        assert not os.path.exists(d.socket) and not os.path.exists(d.socket + ".lock")
    finally:
        busy.close()
        d.cleanup()


def test_stale_socket_file_is_replaced():
    d = Daemon()
    try:
        os.makedirs(d.run_dir)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(d.socket)
        stale.close()  # a socket file nobody listens on: a dead daemon's
        d.start()
        d.runtime().Version(pb.VersionRequest(), timeout=10)
    finally:
        d.cleanup()


def test_non_root_is_refused_with_a_clear_message():
    d = Daemon()
    try:
        os.chmod(d.base, 0o755)
        try:
            result = subprocess.run(
                twistd_command(*d.args), capture_output=True, text=True, env=daemon_env(), cwd="/", timeout=30,
                user=65534,
            )
        except PermissionError:
            pytest.skip("this Python installation is not readable by uid 65534 (unit test covers the check)")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "rktlet: root: rktlet must run as root (it creates namespaces, mounts and cgroups); running as uid "
            "65534; start it as root (sudo, or its systemd unit)"
        )
    finally:
        d.cleanup()


def test_config_file_with_flags_overriding_it():
    d = Daemon()
    try:
        config = os.path.join(d.base, "rktlet.toml")
        with open(config, "w") as f:
            # The runc the tests run under ($RKTLET_TEST_RUNC puts it in a flag too).
            runc = test_runc() if os.environ.get("RKTLET_TEST_RUNC") else "/usr/sbin/runc"
            f.write(f'runtime = "{runc}"\nlog-level = "warn"\ninsecure-registry = ["reg.example:5000"]\n')
        d.extra_args = ["--config", config, "--log-level", "info"]
        d.start()
        _, response = status(d, verbose=True)
        effective = json.loads(response.info["config"])
        assert effective["runtime"] == runc
        assert effective["log-level"] == "info"  # the flag wins over the file
        assert effective["insecure-registry"] == ["reg.example:5000"]
        assert effective["config"] == config
    finally:
        d.cleanup()


def test_bad_config_file_fails_naming_the_key():
    d = Daemon()
    try:
        config = os.path.join(d.base, "rktlet.toml")
        with open(config, "w") as f:
            f.write('stream-address = "nonsense"\n')
        result = subprocess.run(
            twistd_command(*d.args, "--config", config), capture_output=True, text=True, env=daemon_env(),
            cwd=d.base, timeout=30,
        )
        assert result.returncode != 0
        assert "stream-address" in result.stdout + result.stderr
    finally:
        d.cleanup()


def test_debug_log_has_one_line_per_call(daemon):
    daemon.runtime().Version(pb.VersionRequest(), timeout=10)
    deadline = time.monotonic() + 5
    while "RuntimeService/Version" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = [l for l in daemon.log().splitlines() if "RuntimeService/Version" in l][-1]
    assert "ms OK" in line


def test_status_verbose_names_handlers_cni_config_and_versions(daemon):
    deadline = time.monotonic() + 10
    while True:
        _, response = status(daemon, verbose=True)
        versions = json.loads(response.info["versions"])
        if versions or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert versions["runtimes"]["runc"].startswith("runc version")
    assert versions["conmon"].startswith("conmon version")
    assert "bridge" in versions["cniPlugins"]["bridge"]
    assert json.loads(response.info["runtimeHandlers"]) == {"runc": os.environ.get("RKTLET_TEST_RUNC") or "runc"}
    cni = json.loads(response.info["cni"])
    assert cni["config"]["name"] == "rkt.kubernetes.io" and cni["path"].endswith("10-rktlet.conflist")
