"""The start-up checks (rktlet.preflight) on a made-up machine: programs
answer from a table, /proc is a temporary directory, the disk is a number."""

from __future__ import annotations

import json
import os
import socket

import pytest

from rktlet import config, preflight
from rktlet.cri.socket_claim import claim_socket
from rktlet.oci.conmon.launch import REQUIRED_OPTIONS, Conmon
from rktlet.preflight import Host, Outcome, PreflightFailed, ProgramOutput, run_checks
from rktlet.preflight.programs import parse_version
from rktlet.tap import build_service

CONMON_HELP = "Usage:\n  conmon [OPTION…]\n" + "".join(f"  {o}   something\n" for o in REQUIRED_OPTIONS)
RUNC_FEATURES = json.dumps({"ociVersionMin": "1.0.0", "mountOptions": ["ro", "rro", "bind"]})


class Programs:
    """Answers program runs from a table keyed by (program name, arguments);
    CNI plugins answer VERSION from their supported versions."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, ...], ProgramOutput] = {
            ("runc", "--version"): ProgramOutput(b"runc version 1.1.5\ncommit: x\n"),
            ("runc", "features"): ProgramOutput(RUNC_FEATURES.encode()),
            ("conmon", "--version"): ProgramOutput(b"conmon version 2.1.6\n"),
            ("conmon", "--help"): ProgramOutput(CONMON_HELP.encode()),
        }
        self.cni_versions = ["0.4.0", "1.0.0"]
        self.calls: list[list[str]] = []

    def __call__(self, argv, env, stdin=b"") -> ProgramOutput:
        self.calls.append(list(argv))
        name = os.path.basename(argv[0])
        if env.get("CNI_COMMAND") == "VERSION":
            return ProgramOutput(json.dumps({"cniVersion": "1.0.0", "supportedVersions": self.cni_versions}).encode())
        if len(argv) == 1:
            return ProgramOutput(f"CNI {name} plugin v1.1.1\n".encode())
        return self.answers.get((name, *argv[1:]), ProgramOutput(b"", b"unknown command\n", 1))


class Machine:
    """A made-up machine in *tmp*: a PATH with runc and conmon, CNI plugin
    and conf dirs, a /proc, cgroup v2 with every controller, 50 GiB free."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.cni_bin = tmp / "cni"
        self.proc = tmp / "proc"
        self.cgroup = tmp / "cgroup"
        for d in (self.bin, self.cni_bin, self.proc / "self" / "ns", self.cgroup, tmp / "net.d"):
            d.mkdir(parents=True)
        for program in ("runc", "conmon"):
            self.install(self.bin / program)
        for plugin in ("bridge", "host-local", "portmap"):
            self.install(self.cni_bin / plugin)
        for ns in ("net", "ipc", "uts", "pid", "mnt", "user"):
            (self.proc / "self" / "ns" / ns).write_text("")
        (self.proc / "filesystems").write_text("nodev\ttmpfs\nnodev\tcgroup2\nnodev\toverlay\n\text4\n")
        (self.proc / "self" / "status").write_text("Name:\tpython\nSeccomp:\t0\nSeccomp_filters:\t0\n")
        (self.cgroup / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
        self.mounts = {"/": "ext4", str(self.cgroup): "cgroup2"}
        self.free_bytes = 50 << 30
        self.programs = Programs()
        self.config_flags = {
            "socket": str(tmp / "run" / "rktlet.sock"),
            "root": str(tmp / "root"),
            "run-dir": str(tmp / "run"),
            "cni-conf-dir": str(tmp / "net.d"),
            "cni-bin-dir": str(self.cni_bin),
        }
        self.host = Host(
            euid=0, proc=str(self.proc), kernel_release="6.1.0-18-amd64", modules=str(tmp / "modules"),
            path=str(self.bin), run=self.programs, statvfs=self.statvfs, access=lambda path, mode: True,
            pidfd_supported=lambda: True, char_device=lambda path: True,
        )

    @staticmethod
    def install(path) -> None:
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)

    def statvfs(self, path: str) -> os.statvfs_result:
        blocks = self.free_bytes // 4096
        return os.statvfs_result((4096, 4096, blocks * 2, blocks, blocks, 10**6, 10**6 // 2, 10**6 // 2, 0, 255))

    def write_mountinfo(self) -> None:
        lines = []
        for i, (point, fstype) in enumerate(self.mounts.items()):
            source = "cgroup2" if fstype == "cgroup2" else "/dev/sda1"
            lines.append(f"{20 + i} 1 0:{i} / {point} rw,relatime shared:1 - {fstype} {source} rw")
        (self.proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")

    def config(self, **flags) -> config.Config:
        return config.load({**self.config_flags, **flags})

    def check(self, **flags) -> preflight.Report:
        self.write_mountinfo()
        return run_checks(self.config(**flags), self.host)


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


def outcome(report: preflight.Report, name: str) -> preflight.Result:
    [result] = [r for r in report.results if r.name == name]
    return result


def test_everything_there_passes(machine):
    report = machine.check()
    assert report.exit_status == 0, report.lines()
    names = [r.name for r in report.results]
    assert names == ["root", "runtime runc", "runtime runc features", "conmon", "cni", "cgroups", "overlayfs",
                     "root filesystem", "kernel", "namespaces", "pidfd", "seccomp", "devices", "disk", "socket", "instance"]
    assert all(line.startswith("ok   ") for line in report.lines())
    assert "runc version 1.1.5" in outcome(report, "runtime runc").message
    assert outcome(report, "runtime runc features").message == (
        "recursive read-only mounts (rro) supported, idmapped mounts not supported")
    cni = outcome(report, "cni").message
    assert "'rkt.kubernetes.io'" in cni and "default" in cni and str(machine.cni_bin / "host-local") in cni


def test_not_root_is_the_only_finding(machine):
    machine.host.euid = 1000
    report = machine.check()
    assert [r.line for r in report.results] == [
        "root: rktlet must run as root (it creates namespaces, mounts and cgroups); running as uid 1000; "
        "start it as root (sudo, or its systemd unit)"
    ]
    assert report.exit_status == 1
    assert machine.programs.calls == []  # nothing else was looked at


def test_missing_runc_fails_naming_the_fix(machine):
    (machine.bin / "runc").unlink()
    report = machine.check()
    result = outcome(report, "runtime runc")
    assert result.outcome is Outcome.FAIL
    assert result.line == (f"runtime runc: runc not found on PATH ({machine.bin}); install runc (Debian: apt-get "
                           "install runc) or point --runtime at the runtime's path")
    assert report.exit_status == 1
    assert report.lines()[1] == "FAIL " + result.line


def test_runtime_given_as_a_missing_path(machine):
    report = machine.check(runtime=str(machine.tmp / "nowhere" / "runc"))
    assert outcome(report, "runtime runc").line == (
        f"runtime runc: {machine.tmp}/nowhere/runc not found; install runc (Debian: apt-get install runc) or point "
        "--runtime at the runtime's path")


def test_old_runc_fails_and_a_runtime_without_features_warns(machine):
    machine.programs.answers[("runc", "--version")] = ProgramOutput(b"runc version 1.0.3\n")
    result = outcome(machine.check(), "runtime runc")
    assert result.outcome is Outcome.FAIL and "runc 1.0.3; rktlet needs runc 1.1 or newer" in result.line
    machine.programs.answers[("runc", "--version")] = ProgramOutput(b"runc version 1.1.5\n")
    del machine.programs.answers[("runc", "features")]
    report = machine.check()
    features = outcome(report, "runtime runc features")
    assert features.outcome is Outcome.WARN and "features: unknown command" in features.line
    assert report.exit_status == 2


def test_missing_extra_handler_only_warns(machine):
    report = machine.check(**{"runtime-handler": ["crun=/nowhere/crun"]})
    result = outcome(report, "runtime crun")
    assert result.outcome is Outcome.WARN
    assert result.line == "runtime crun: /nowhere/crun not found; point --runtime-handler crun=PATH at the " \
                          "runtime's path"
    assert report.exit_status == 2


def test_conmon_missing_or_lacking_an_option(machine):
    (machine.bin / "conmon").unlink()
    assert outcome(machine.check(), "conmon").line == (
        f"conmon: conmon not found on PATH ({machine.bin}); install conmon (Debian: apt-get install conmon)")
    machine.install(machine.bin / "conmon")
    machine.programs.answers[("conmon", "--help")] = ProgramOutput(CONMON_HELP.replace("--persist-dir", "").encode())
    result = outcome(machine.check(), "conmon")
    assert result.outcome is Outcome.FAIL and "lacks the option(s) --persist-dir" in result.line


def test_conmon_options_are_the_ones_rktlet_passes():
    """REQUIRED_OPTIONS (what the check looks for) covers every option in
    the argv rktlet gives conmon."""
    short = {"-b": "--bundle", "-c": "--cid", "-u": "--cuuid", "-n": "--name", "-r": "--runtime",
             "-l": "--log-path", "-p": "--container-pidfile", "-t": "--terminal", "-i": "--stdin"}
    runtime = type("Runtime", (), {"binary": "/usr/sbin/runc", "global_args": ["--root=/x"]})()
    conmon = Conmon(object(), runtime, "/usr/bin/conmon", exits_dir="/x/exits", socket_dir="/x/s")
    paths = conmon.paths("c1", "/x/bundle")
    argv = conmon._argv("c1", paths, "/x/log", tty=True, stdin=True, stdin_once=False, name="n")
    used = {short.get(a, a.split("=")[0]) for a in argv[1:] if a.startswith("-")}
    assert used <= set(REQUIRED_OPTIONS), used - set(REQUIRED_OPTIONS)


def test_missing_cni_plugin_warns_naming_it(machine):
    (machine.cni_bin / "bridge").unlink()
    report = machine.check()
    result = outcome(report, "cni")
    assert result.outcome is Outcome.WARN
    assert result.line.startswith("cni: plugin(s) bridge of network 'rkt.kubernetes.io' (rktlet's default, written "
                                  f"into {machine.tmp}/net.d at start) not found in {machine.cni_bin}; install them")
    assert report.exit_status == 2


def test_cni_checks_the_configured_network_and_its_ipam(machine):
    (machine.tmp / "net.d" / "10-mine.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "mine",
        "plugins": [{"type": "bridge", "ipam": {"type": "static"}}, {"type": "portmap"}],
    }))
    result = outcome(machine.check(), "cni")
    assert result.outcome is Outcome.WARN and "plugin(s) static of network 'mine'" in result.line
    machine.install(machine.cni_bin / "static")
    machine.programs.cni_versions = ["0.3.1", "0.4.0"]
    result = outcome(machine.check(), "cni")
    assert result.outcome is Outcome.WARN and "do not support its cniVersion 1.0.0" in result.line
    (machine.tmp / "net.d" / "10-mine.conflist").write_text("{not json")
    result = outcome(machine.check(), "cni")
    assert result.outcome is Outcome.WARN and "network configuration unusable" in result.line


def test_too_old_kernel_fails(machine):
    machine.host.kernel_release = "3.10.0-1160.el7.x86_64"
    report = machine.check()
    assert outcome(report, "kernel").line == (
        "kernel: Linux 3.10.0-1160.el7.x86_64 is too old: rktlet needs 4.0 or newer (overlayfs with several lower "
        "layers); upgrade the kernel")
    assert report.exit_status == 1


def test_kernel_features(machine):
    machine.host.pidfd_supported = lambda: False
    (machine.proc / "self" / "ns" / "ipc").unlink()
    (machine.proc / "self" / "status").write_text("Name:\tpython\n")
    report = machine.check()
    assert outcome(report, "pidfd").outcome is Outcome.WARN
    assert "polling /proc" in outcome(report, "pidfd").line
    assert outcome(report, "namespaces").outcome is Outcome.FAIL
    assert "lacks ipc namespaces" in outcome(report, "namespaces").line
    assert outcome(report, "seccomp").outcome is Outcome.WARN


def test_a_missing_device_node_warns_with_the_command_that_makes_it(machine):
    machine.host.char_device = lambda path: not path.endswith("/full")
    report = machine.check()
    result = outcome(report, "devices")
    assert result.outcome is Outcome.WARN and "/dev/full missing" in result.line
    assert "mknod -m 666 /dev/full c 1 7" in result.line
    assert report.exit_status == 2


def test_cgroups(machine):
    (machine.cgroup / "cgroup.controllers").write_text("cpu io pids\n")
    result = outcome(machine.check(), "cgroups")
    assert result.outcome is Outcome.FAIL and "controller(s) memory missing" in result.line
    (machine.cgroup / "cgroup.controllers").write_text("cpu memory pids\n")
    result = outcome(machine.check(), "cgroups")
    assert result.outcome is Outcome.WARN and "controller(s) cpuset, io missing" in result.line
    del machine.mounts[str(machine.cgroup)]
    result = outcome(machine.check(), "cgroups")
    assert result.outcome is Outcome.FAIL and "no cgroup file systems are mounted" in result.line


def test_cgroup_v1_layout(machine):
    del machine.mounts[str(machine.cgroup)]
    machine.write_mountinfo()
    v1 = "".join(f"{40 + i} 1 0:{40 + i} / /sys/fs/cgroup/{c} rw - cgroup cgroup rw,{c}\n"
                 for i, c in enumerate(("cpu,cpuacct", "memory", "pids", "devices", "freezer", "cpuset", "blkio")))
    with open(machine.proc / "self" / "mountinfo", "a") as f:
        f.write(v1)
    result = run_checks(machine.config(), machine.host, checks=(preflight.runner.system.check_cgroups,))
    assert result.results[-1].outcome is Outcome.OK and result.results[-1].message.startswith("v1 (v1 controllers)")


def test_overlayfs(machine):
    (machine.proc / "filesystems").write_text("nodev\ttmpfs\n\text4\n")
    result = outcome(machine.check(), "overlayfs")
    assert result.outcome is Outcome.FAIL and "modprobe overlay" in result.line
    module_dir = machine.tmp / "modules" / "6.1.0-18-amd64" / "kernel" / "fs" / "overlayfs"
    module_dir.mkdir(parents=True)
    (module_dir / "overlay.ko.xz").write_text("")
    assert outcome(machine.check(), "overlayfs").outcome is Outcome.OK
    machine.mounts[str(machine.tmp)] = "overlay"
    result = outcome(machine.check(), "root filesystem")
    assert result.outcome is Outcome.FAIL and f"--root {machine.tmp}/root is on overlayfs" in result.line


def test_low_disk(machine):
    machine.free_bytes = 10 << 20
    report = machine.check()
    result = outcome(report, "disk")
    assert result.outcome is Outcome.FAIL
    assert result.line.startswith(f"disk: only 10.0 MiB free, 500000 inodes under {machine.tmp}: rktlet needs at "
                                  "least 64.0 MiB")
    assert report.exit_status == 1
    machine.free_bytes = 500 << 20
    assert outcome(machine.check(), "disk").outcome is Outcome.WARN


def test_socket_path_unwritable(machine):
    machine.host.access = lambda path, mode: False
    result = outcome(machine.check(), "socket")
    assert result.line == (f"socket: cannot create {machine.tmp}/run/rktlet.sock: {machine.tmp} is not writable; "
                           "run as root or choose another --socket")
    assert result.outcome is Outcome.FAIL


def test_socket_path_under_a_file_too_long_or_taken(machine):
    (machine.tmp / "file").write_text("")
    result = outcome(machine.check(socket=str(machine.tmp / "file" / "s.sock")), "socket")
    assert result.outcome is Outcome.FAIL and f"{machine.tmp}/file is not a directory" in result.line
    long_path = str(machine.tmp / ("x" * 120) / "s.sock")
    result = outcome(machine.check(socket=long_path), "socket")
    assert result.outcome is Outcome.FAIL and "longer than the 107" in result.line
    result = outcome(machine.check(socket=str(machine.tmp / "file")), "socket")
    assert result.outcome is Outcome.FAIL and "exists and is not a socket" in result.line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: the injected-access test covers it")
def test_socket_directory_without_write_permission(machine):
    locked = machine.tmp / "locked"
    locked.mkdir(mode=0o500)
    machine.host = Host(**{**machine.host.__dict__, "access": Host().access})
    result = outcome(machine.check(socket=str(locked / "s.sock")), "socket")
    assert result.outcome is Outcome.FAIL and f"{locked} is not writable" in result.line


def test_another_rktlet_holding_the_lock(machine):
    machine.check()  # nothing there yet
    path = machine.config_flags["socket"]
    claim = claim_socket(path)
    try:
        result = outcome(machine.check(), "instance")
        assert result.line == (f"instance: another rktlet (pid {os.getpid()}) is serving {path}; stop it, or give "
                               "this one another --socket, --root and --run-dir")
    finally:
        claim.release()
    assert outcome(machine.check(), "instance").outcome is Outcome.OK
    claim_socket(path).release()  # the check took no lock of its own


def test_socket_answering_without_the_lock(machine):
    path = machine.config_flags["socket"]
    os.makedirs(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        result = outcome(machine.check(), "instance")
        assert result.outcome is Outcome.FAIL and f"something is serving {path}" in result.line
    # The same socket file with nobody listening is stale: the daemon replaces it.
    assert outcome(machine.check(), "instance").outcome is Outcome.OK


def test_a_broken_check_is_a_failure_not_a_crash(machine):
    def check_broken(config, host):
        raise KeyError("boom")

    report = run_checks(machine.config(), machine.host, checks=(check_broken,))
    assert report.results[-1].line == "broken: the check itself failed: KeyError: 'boom'; report this as a bug"


def test_daemon_refuses_with_the_same_lines(machine):
    (machine.bin / "runc").unlink()
    machine.free_bytes = 1 << 20
    report = machine.check()
    with pytest.raises(PreflightFailed) as e:
        build_service(machine.config(), reactor=object(), host=machine.host)
    assert str(e.value).splitlines() == [r.line for r in report.failures]
    assert [r.name for r in report.failures] == ["runtime runc", "disk"]
    assert not os.path.exists(machine.config_flags["socket"] + ".lock")


def test_make_service_prints_one_line_per_failure(monkeypatch, capsys, machine):
    from rktlet import tap

    (machine.bin / "runc").unlink()
    report = machine.check()

    def refuse(config):
        raise PreflightFailed(report.failures)

    monkeypatch.setattr(tap, "build_service", refuse)
    options = tap.Options()
    options.parseOptions([])
    with pytest.raises(SystemExit) as e:
        tap.makeService(options)
    assert e.value.code == 1
    assert capsys.readouterr().err == "".join(f"rktlet: {r.line}\n" for r in report.failures)


def test_version_lines(machine):
    text = preflight.version_text(machine.config(), machine.host)
    assert text.splitlines() == [
        "rktlet 0.1.0",
        f"runtime runc: runc version 1.1.5 ({machine.bin}/runc)",
        f"conmon: conmon version 2.1.6 ({machine.bin}/conmon)",
        f"cni bridge: CNI bridge plugin v1.1.1 ({machine.cni_bin}/bridge)",
        f"cni portmap: CNI portmap plugin v1.1.1 ({machine.cni_bin}/portmap)",
        f"cni host-local: CNI host-local plugin v1.1.1 ({machine.cni_bin}/host-local)",
    ]
    (machine.bin / "conmon").unlink()
    assert "conmon: not found" in preflight.version_text(machine.config(), machine.host).splitlines()


@pytest.mark.parametrize("line,parsed", [
    ("runc version 1.1.5+ds1", ("runc", (1, 1, 5))),
    ("crun version 1.8.1", ("crun", (1, 8, 1))),
    ("runc version v1.2", ("runc", (1, 2, 0))),
    ("conmon version 2.1.6", ("conmon", (2, 1, 6))),
    ("something else", None),
])
def test_parse_version(line, parsed):
    assert parse_version(line) == parsed


def test_programs_are_run_with_a_bounded_output_and_time(tmp_path):
    from rktlet.preflight.host import OUTPUT_LIMIT, run_program

    out = run_program(["/bin/sh", "-c", "head -c 400000 /dev/zero; echo oops >&2; exit 3"], {"PATH": "/usr/bin:/bin"})
    assert len(out.stdout) == OUTPUT_LIMIT and out.stderr == b"oops\n" and out.exit_code == 3
    slow = run_program(["/bin/sh", "-c", "sleep 30"], {"PATH": "/usr/bin:/bin"}, timeout=0.2)
    assert slow.exit_code is None and "did not answer within 0.2s" in slow.error
    missing = run_program([str(tmp_path / "absent")], {})
    assert missing.exit_code is None and "cannot run" in missing.first_line()
