"""The ``rktlet`` command on this machine: ``check`` with the real programs,
the daemon refusing with the same lines, ``config`` read back by a real
daemon, ``--help`` and ``--version``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rktlet import __version__
from rktlet.cri.proto import pb
from harness.daemon import Daemon, daemon_env, twistd_command


def rktlet(*args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    """The ``rktlet`` command of this checkout."""
    return subprocess.run([sys.executable, "-m", "rktlet.cli", *args], capture_output=True, text=True,
                          env=daemon_env(), cwd=cwd, timeout=60)


def twistd(*args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    return subprocess.run(twistd_command(*args), capture_output=True, text=True, env=daemon_env(), cwd=cwd,
                          timeout=60)


def test_check_passes_on_this_machine():
    d = Daemon()
    try:
        result = rktlet("check", *d.args)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert all(line.startswith("ok   ") for line in lines), result.stdout
        names = [line[5:].split(":")[0] for line in lines]
        for name in ("root", "runtime runc", "conmon", "cni", "cgroups", "overlayfs", "kernel", "disk", "socket",
                     "instance"):
            assert name in names
        assert not os.path.exists(d.socket + ".lock") and not os.path.exists(d.root)  # it only looked
    finally:
        d.cleanup()


def test_missing_runtime_fails_the_check_and_the_daemon_with_the_same_line():
    d = Daemon(extra_args=["--runtime", "/nonexistent/runc"])
    try:
        line = ("runtime runc: /nonexistent/runc not found; install runc (Debian: apt-get install runc) or point "
                "--runtime at the runtime's path")
        check = rktlet("check", *d.args)
        assert check.returncode == 1
        assert f"FAIL {line}" in check.stdout.splitlines()
        for refused in (twistd(*d.args, cwd=d.base), rktlet(*d.args, cwd=d.base)):
            assert refused.returncode == 1
            assert refused.stderr.splitlines() == [f"rktlet: {line}"], refused.stderr
        assert not os.path.exists(d.socket)
    finally:
        d.cleanup()


def test_missing_cni_plugin_warns_and_the_daemon_starts_degraded():
    d = Daemon()
    bin_dir = os.path.join(d.base, "cni-bin")
    os.makedirs(bin_dir)
    for plugin in ("host-local", "portmap"):
        os.symlink(f"/usr/lib/cni/{plugin}", os.path.join(bin_dir, plugin))
    d.extra_args = ["--cni-bin-dir", bin_dir]
    try:
        line = (f"cni: plugin(s) bridge of network 'rkt.kubernetes.io' (rktlet's default, written into "
                f"{d.cni_conf_dir} at start) not found in {bin_dir}; install them (Debian: apt-get install "
                "containernetworking-plugins) or set --cni-bin-dir; pods get no network until then")
        check = rktlet("check", *d.args)
        assert check.returncode == 2, check.stdout
        assert f"warn {line}" in check.stdout.splitlines()
        d.start()
        assert line in d.log()
        conditions = {c.type: c for c in d.runtime().Status(pb.StatusRequest(), timeout=10).status.conditions}
        assert conditions["RuntimeReady"].status is True
        assert conditions["NetworkReady"].status is False and "bridge" in conditions["NetworkReady"].message
    finally:
        d.cleanup()


def test_check_finds_the_running_daemon(daemon):
    check = rktlet("check", *daemon.args)
    assert check.returncode == 1
    assert (f"FAIL instance: another rktlet (pid {daemon.process.pid}) is serving {daemon.socket}; stop it, or give "
            "this one another --socket, --root and --run-dir") in check.stdout.splitlines()


def test_config_dump_is_read_back_by_the_daemon():
    d = Daemon(extra_args=["--insecure-registry", "reg.example:5000", "--max-image-bytes", "512Mi",
                           "--stream-idle-timeout", "90s"])
    try:
        dumped = rktlet("config", *d.args)
        assert dumped.returncode == 0, dumped.stderr
        path = os.path.join(d.base, "rktlet.toml")
        with open(path, "w") as f:
            f.write(dumped.stdout)
        # Started with only --config: every value comes from the file.
        with open(d.log_path, "ab") as log:
            d.process = subprocess.Popen(twistd_command("--config", path), stdout=log, stderr=subprocess.STDOUT,
                                         env=daemon_env(), cwd=d.base)
        _wait_serving(d)
        info = d.runtime().Status(pb.StatusRequest(verbose=True), timeout=10).info
        effective = json.loads(info["config"])
        assert effective["socket"] == d.socket and effective["root"] == d.root
        assert effective["insecure-registry"] == ["reg.example:5000"]
        assert effective["max-image-bytes"] == 512 << 20 and effective["stream-idle-timeout"] == 90.0
        assert effective["log-level"] == "debug"
    finally:
        d.cleanup()


def _wait_serving(d: Daemon) -> None:
    import time

    import grpc

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert d.process.poll() is None, d.log()
        if os.path.exists(d.socket):
            try:
                d.runtime().Version(pb.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"rktlet did not serve:\n{d.log()}")


def test_help_of_the_command_and_of_the_twistd_plugin():
    result = rktlet("--help")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "Usage: rktlet [options]"
    assert "rktlet check [options]" in result.stdout and "Commands:" in result.stdout
    assert "twistd" not in result.stdout.splitlines()[0]
    plugin = twistd("--help")
    assert plugin.returncode == 0
    assert plugin.stdout.splitlines()[0].endswith("rktlet [options]")
    for text in (result.stdout, plugin.stdout):
        options = text.split("Options:", 1)[1]
        assert "  localhost" not in options and "named         HOST" not in options


def test_version_names_rktlet_and_the_programs_it_found():
    result = rktlet("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"rktlet {__version__}"
    assert any(line.startswith("runtime runc: runc version ") and line.endswith("/runc)") for line in lines), lines
    assert any(line.startswith("conmon: conmon version ") for line in lines), lines
    for plugin in ("bridge", "host-local", "portmap"):
        assert any(line.startswith(f"cni {plugin}: CNI {plugin} plugin") for line in lines), lines
    plugin = twistd("--version")
    assert plugin.stdout.splitlines()[0] == f"rktlet {__version__}"


def test_the_command_still_runs_the_daemon_with_its_options():
    d = Daemon(command=[sys.executable, "-m", "rktlet.cli"], extra_args=["--insecure-registry", "reg.example:5000"])
    try:
        d.start()
        info = d.runtime().Status(pb.StatusRequest(verbose=True), timeout=10).info
        effective = json.loads(info["config"])
        assert effective["root"] == d.root and effective["insecure-registry"] == ["reg.example:5000"]
        assert d.stop() in (0, -15)
        assert "Traceback" not in d.log()
    finally:
        d.cleanup()
