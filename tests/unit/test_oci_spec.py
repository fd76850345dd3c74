"""rktlet.oci.spec and rktlet.oci.seccomp: the OCI runtime spec built from a
CreateContainer request, against a fake host (no root, no runc).

The real-runc counterpart is tests/integration/test_oci_spec_runc.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from rktlet.errors import InvalidArgument
from rktlet.oci.cgroups import Layout
from rktlet.oci.container_config import (
    ContainerConfig,
    Device,
    ImageDefaults,
    Mount,
    PodContext,
    Profile,
    ResolvedUser,
    Resources,
    Security,
)
from rktlet.oci.seccomp import CLONE_NAMESPACE_FLAGS, default_profile, load_localhost
from rktlet.oci.spec import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_PATH,
    DEFAULT_READONLY_PATHS,
    HostInfo,
    build_spec,
    command_line,
)

HYBRID = Layout(
    mode="hybrid",
    v1={c: f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "cpuset", "memory", "devices", "pids")},
    unified="/sys/fs/cgroup/unified",
)
V2 = Layout(mode="v2", v1={}, unified="/sys/fs/cgroup")

MOUNTINFO = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"

SYS_RESOURCE = CAPABILITIES.index("CAP_SYS_RESOURCE")


def host(**changes) -> HostInfo:
    """This repo's typical host: kernel caps 0..40, no CAP_SYS_RESOURCE in
    the bounding set, hybrid cgroups, no AppArmor."""
    base = HostInfo(
        cap_last_cap=40,
        bounding=frozenset(range(41)) - {SYS_RESOURCE},
        cgroups=HYBRID,
        apparmor_enabled=False,
        apparmor_profiles=None,
        machine="x86_64",
        kernel_release="6.1.0-13-amd64",
        mountinfo=MOUNTINFO,
    )
    return replace(base, **changes)


def pod(**changes) -> PodContext:
    base = PodContext(
        namespaces={"net": "/run/rktlet/ns/net", "ipc": "/run/rktlet/ns/ipc", "uts": "/run/rktlet/ns/uts"},
        host=frozenset(),
        pid_mode="container",
        infra_pid=0,
        hostname="web-0",
        files={"/etc/resolv.conf": "/run/p/resolv.conf", "/etc/hosts": "/run/p/hosts", "/etc/hostname": "/run/p/hostname"},
        shm="/run/p/shm",
        cgroup_parent="/kubepods/besteffort/pod123",
    )
    return replace(base, **changes)


ROOT = ResolvedUser(uid=0, gid=0, additional_gids=())
IMAGE = ImageDefaults(entrypoint=("/bin/app",), cmd=("--serve",), env=("PATH=/bin", "LANG=C"))


def build(config=None, image=IMAGE, pod_context=None, user=ROOT, daemon_oom=0, host_info=None):
    config = config or ContainerConfig(name="app")
    return build_spec("c0ffee", config, image, pod_context or pod(), "/rootfs", user, daemon_oom, host_info or host())


def security(**kw) -> ContainerConfig:
    return ContainerConfig(name="app", security=Security(**kw))


def env_of(spec) -> dict[str, str]:
    return dict(item.split("=", 1) for item in spec["process"]["env"])


def mount_at(spec, destination):
    matches = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


# -- command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, args, expected",
    [
        (("/bin/sh", "-c"), ("echo hi",), ["/bin/sh", "-c", "echo hi"]),  # command + args
        (("/bin/sh",), (), ["/bin/sh"]),                                   # command alone: no image Cmd
        ((), ("--port", "80"), ["/bin/app", "--port", "80"]),              # args replace Cmd only
        ((), (), ["/bin/app", "--serve"]),                                 # Entrypoint + Cmd
    ],
)
def test_command_line_follows_the_kubelet(command, args, expected):
    config = ContainerConfig(name="app", command=command, args=args)
    assert command_line(config, IMAGE) == expected


def test_command_line_cmd_only_image():
    assert command_line(ContainerConfig(name="a"), ImageDefaults(cmd=("sh",))) == ["sh"]
    assert command_line(ContainerConfig(name="a", args=("ls",)), ImageDefaults(cmd=("sh",))) == ["ls"]


def test_command_line_empty_is_invalid():
    with pytest.raises(InvalidArgument, match="no command specified"):
        command_line(ContainerConfig(name="a"), ImageDefaults())


# -- process --------------------------------------------------------------------------


def test_env_merges_image_and_config_config_wins():
    config = ContainerConfig(name="a", envs=(("LANG", "en_US.UTF-8"), ("EXTRA", "1")))
    spec, _ = build(config)
    env = spec["process"]["env"]
    assert env[:2] == ["PATH=/bin", "LANG=en_US.UTF-8"]  # the image's order, the config's value
    assert env_of(spec) == {"PATH": "/bin", "LANG": "en_US.UTF-8", "EXTRA": "1", "HOSTNAME": "web-0"}
    assert "TERM" not in env_of(spec)


def test_env_defaults_path_term_and_hostname():
    spec, _ = build(ContainerConfig(name="a", tty=True), image=ImageDefaults(cmd=("sh",)))
    env = env_of(spec)
    assert env["PATH"] == DEFAULT_PATH
    assert env["TERM"] == "xterm"
    assert env["HOSTNAME"] == "web-0"
    assert spec["process"]["terminal"] is True
    spec, _ = build(ContainerConfig(name="a", tty=True, envs=(("TERM", "vt100"), ("HOSTNAME", "mine"))))
    assert env_of(spec)["TERM"] == "vt100" and env_of(spec)["HOSTNAME"] == "mine"


def test_env_invalid_name():
    with pytest.raises(InvalidArgument, match=r"envs\[0\]"):
        build(ContainerConfig(name="a", envs=(("A=B", "x"),)))


def test_cwd_user_and_basics():
    user = ResolvedUser(uid=1000, gid=1000, additional_gids=(10, 20), username="app", home="/home/app")
    spec, notes = build(ContainerConfig(name="a", working_dir="/srv"), user=user)
    assert spec["ociVersion"] == "1.0.2"
    assert spec["process"]["cwd"] == "/srv"
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    assert spec["root"] == {"path": "/rootfs", "readonly": False}
    assert spec["process"]["noNewPrivileges"] is False
    assert notes == []
    spec, _ = build(image=replace(IMAGE, working_dir="data"))
    assert spec["process"]["cwd"] == "/data"
    spec, _ = build()
    assert spec["process"]["cwd"] == "/"
    with pytest.raises(InvalidArgument, match="working_dir"):
        build(ContainerConfig(name="a", working_dir="relative"))


def test_readonly_rootfs_and_no_new_privs():
    spec, _ = build(security(readonly_rootfs=True, no_new_privs=True))
    assert spec["root"]["readonly"] is True
    assert spec["process"]["noNewPrivileges"] is True
    # the pod's files are then read-only too
    assert "ro" in mount_at(spec, "/etc/hosts")["options"]


def test_annotations_copied():
    spec, _ = build(ContainerConfig(name="a", annotations=(("io.kubernetes.pod", "x"),)))
    assert spec["annotations"] == {"io.kubernetes.pod": "x"}


# -- capabilities ---------------------------------------------------------------------


def caps(spec) -> list[str]:
    c = spec["process"]["capabilities"]
    assert c["bounding"] == c["effective"] == c["permitted"]
    assert c["inheritable"] == [] and c["ambient"] == []
    return c["bounding"]


def test_default_capabilities():
    assert sorted(caps(build()[0])) == sorted(DEFAULT_CAPABILITIES)
    assert len(DEFAULT_CAPABILITIES) == 14


def test_capabilities_add_drop_with_or_without_prefix():
    spec, _ = build(security(capabilities_add=("NET_ADMIN", "cap_sys_ptrace"), capabilities_drop=("CAP_MKNOD", "kill")))
    result = set(caps(spec))
    assert {"CAP_NET_ADMIN", "CAP_SYS_PTRACE"} <= result
    assert not {"CAP_MKNOD", "CAP_KILL"} & result
    assert result == set(DEFAULT_CAPABILITIES) - {"CAP_MKNOD", "CAP_KILL"} | {"CAP_NET_ADMIN", "CAP_SYS_PTRACE"}


def test_drop_all_then_add():
    assert caps(build(security(capabilities_drop=("ALL",)))[0]) == []
    assert caps(build(security(capabilities_drop=("ALL",), capabilities_add=("NET_BIND_SERVICE",)))[0]) == [
        "CAP_NET_BIND_SERVICE"
    ]


def test_add_all_minus_drop_and_bounding_set():
    spec, notes = build(security(capabilities_add=("ALL",), capabilities_drop=("SYS_ADMIN",)))
    result = caps(spec)
    assert "CAP_SYS_ADMIN" not in result
    assert "CAP_SYS_RESOURCE" not in result  # not in rktlet's bounding set here
    assert len(result) == 41 - 2
    assert any("CAP_SYS_RESOURCE" in n and "bounding" in n for n in notes)


def test_a_capability_the_kernel_lacks_is_left_out():
    spec, notes = build(security(capabilities_add=("CHECKPOINT_RESTORE",)), host_info=host(cap_last_cap=39))
    assert "CAP_CHECKPOINT_RESTORE" not in caps(spec)
    assert any("not known to this kernel" in n for n in notes)


def test_unknown_capability_is_invalid():
    with pytest.raises(InvalidArgument, match="capabilities_add: unknown capability 'CAP_FLY'"):
        build(security(capabilities_add=("CAP_FLY",)))


def test_privileged():
    spec, notes = build(security(privileged=True, seccomp=Profile("runtime_default"),
                                 masked_paths=("/proc/x",)))
    assert len(caps(spec)) == 40  # all 41 but CAP_SYS_RESOURCE
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert "seccomp" not in spec["linux"]
    assert "rw" in mount_at(spec, "/sys")["options"]
    assert "rw" in mount_at(spec, "/sys/fs/cgroup")["options"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any("privileged" in n for n in notes)


# -- masked / readonly paths --------------------------------------------------------------


def test_masked_and_readonly_defaults_when_none():
    spec, _ = build()
    assert spec["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/kcore" in DEFAULT_MASKED_PATHS and "/proc/sys" in DEFAULT_READONLY_PATHS
    assert "ro" in mount_at(spec, "/sys")["options"]


def test_empty_masked_and_readonly_are_honoured():
    spec, _ = build(security(masked_paths=(), readonly_paths=()))
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    spec, _ = build(security(masked_paths=("/proc/foo",), readonly_paths=("/proc/bar",)))
    assert spec["linux"]["maskedPaths"] == ["/proc/foo"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/bar"]


# -- oom_score_adj ------------------------------------------------------------------------


def test_oom_score_adj_clamped_with_a_note():
    config = ContainerConfig(name="a", resources=Resources(oom_score_adj=-998))
    spec, notes = build(config, daemon_oom=-500)
    assert spec["process"]["oomScoreAdj"] == -500
    assert len(notes) == 1 and "-998" in notes[0] and "-500" in notes[0]
    spec, notes = build(replace(config, resources=Resources(oom_score_adj=1000)), daemon_oom=0)
    assert spec["process"]["oomScoreAdj"] == 1000 and notes == []
    with pytest.raises(InvalidArgument, match="oom_score_adj"):
        build(replace(config, resources=Resources(oom_score_adj=1001)))


# -- mounts ----------------------------------------------------------------------------------


def test_mount_order_defaults_then_pod_files_then_config(tmp_path):
    (tmp_path / "data" / "cache").mkdir(parents=True)
    config = ContainerConfig(name="a", mounts=(
        Mount("/data/cache", str(tmp_path / "data" / "cache")),
        Mount("/data", str(tmp_path / "data"), readonly=True),
    ))
    spec, _ = build(config)
    order = [m["destination"] for m in spec["mounts"]]
    assert order == [
        "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
        "/etc/resolv.conf", "/etc/hosts", "/etc/hostname",
        "/data", "/data/cache",  # parents before children
    ]
    data = mount_at(spec, "/data")
    assert data == {"destination": "/data", "type": "bind", "source": str(tmp_path / "data"),
                    "options": ["rbind", "rprivate", "ro"]}
    assert mount_at(spec, "/data/cache")["options"] == ["rbind", "rprivate", "rw"]
    assert mount_at(spec, "/dev/shm")["source"] == "/run/p/shm"
    assert mount_at(spec, "/etc/hosts") == {"destination": "/etc/hosts", "type": "bind", "source": "/run/p/hosts",
                                            "options": ["rbind", "rprivate", "rw"]}
    assert mount_at(spec, "/proc")["type"] == "proc"
    assert mount_at(spec, "/sys/fs/cgroup")["type"] == "cgroup"
    assert "rootfsPropagation" not in spec["linux"]


def test_pod_files_not_mounted_when_the_config_mounts_them(tmp_path):
    mine = tmp_path / "resolv.conf"
    mine.write_text("nameserver 10.0.0.1\n")
    spec, _ = build(ContainerConfig(name="a", mounts=(Mount("/etc/resolv.conf", str(mine)),)))
    assert mount_at(spec, "/etc/resolv.conf")["source"] == str(mine)
    assert mount_at(spec, "/etc/hosts")["source"] == "/run/p/hosts"


def test_pod_files_absent_are_skipped():
    spec, _ = build(pod_context=pod(files={"/etc/hosts": "/run/p/hosts"}))
    assert mount_at(spec, "/etc/resolv.conf") is None and mount_at(spec, "/etc/hostname") is None


def test_shm_host_ipc_and_private():
    spec, _ = build(pod_context=pod(shm="", host=frozenset({"ipc"})))
    assert mount_at(spec, "/dev/shm")["source"] == "/dev/shm"
    spec, _ = build(pod_context=pod(shm=""))
    assert mount_at(spec, "/dev/shm")["type"] == "tmpfs"


def test_propagation_options_and_notes(tmp_path):
    # Host paths must exist, so the fake mount table describes dirs in tmp_path.
    shared_host = host()
    shared = tmp_path / "shared"
    slave = tmp_path / "slave"
    shared.mkdir()
    slave.mkdir()
    info = (f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
            f"60 27 0:50 / {shared} rw shared:7 - tmpfs tmpfs rw\n"
            f"61 27 0:51 / {slave} rw master:7 - tmpfs tmpfs rw\n")
    config = ContainerConfig(name="a", mounts=(
        Mount("/a", str(shared), propagation="rshared"),
        Mount("/b", str(slave), propagation="rslave"),
    ))
    spec, notes = build(config, host_info=replace(shared_host, mountinfo=info))
    assert mount_at(spec, "/a")["options"] == ["rbind", "rshared", "rw"]
    assert mount_at(spec, "/b")["options"] == ["rbind", "rslave", "rw"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    assert [n for n in notes if "propagat" in n] == []

    # a private host mount: the spec still asks, and a note says it won't propagate
    config = ContainerConfig(name="a", mounts=(Mount("/a", str(slave), propagation="rshared"),
                                              Mount("/b", str(tmp_path), propagation="rslave")))
    spec, notes = build(config, host_info=replace(shared_host, mountinfo=info))
    assert any(str(slave) in n and "not shared" in n for n in notes)
    assert any(str(tmp_path) in n and "neither shared nor a slave" in n for n in notes)

    spec, _ = build(ContainerConfig(name="a", mounts=(Mount("/b", str(slave), propagation="rslave"),)),
                    host_info=replace(shared_host, mountinfo=info))
    assert spec["linux"]["rootfsPropagation"] == "rslave"


def test_propagation_check_reads_the_live_mount_table(tmp_path):
    spec, notes = build(ContainerConfig(name="a", mounts=(Mount("/a", str(tmp_path), propagation="rshared"),)),
                        host_info=host(mountinfo=None))
    assert mount_at(spec, "/a")["options"] == ["rbind", "rshared", "rw"]
    with open("/proc/self/mountinfo") as f:
        live = f.read()
    _, expected = build(ContainerConfig(name="a", mounts=(Mount("/a", str(tmp_path), propagation="rshared"),)),
                        host_info=host(mountinfo=live))
    assert notes == expected


def test_missing_host_path_is_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(InvalidArgument, match=rf"mounts\[0\]\.host_path: {missing} does not exist"):
        build(ContainerConfig(name="a", mounts=(Mount("/x", missing),)))


@pytest.mark.parametrize("mount, field", [
    (Mount("relative", "/tmp"), "container_path"),
    (Mount("/x", "tmp"), "host_path"),
    (Mount("/x", "/tmp", propagation="shared"), "propagation"),
    (Mount("/x/../etc", "/tmp"), "container_path"),
])
def test_bad_mounts(mount, field):
    with pytest.raises(InvalidArgument, match=rf"mounts\[0\]\.{field}"):
        build(ContainerConfig(name="a", mounts=(mount,)))


def test_config_mount_replaces_a_default(tmp_path):
    spec, _ = build(ContainerConfig(name="a", mounts=(Mount("/dev/shm", str(tmp_path)),)))
    assert mount_at(spec, "/dev/shm")["source"] == str(tmp_path)


# -- namespaces -------------------------------------------------------------------------------


def ns(spec) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


def test_namespaces_join_the_pod():
    spec, _ = build(pod_context=pod(pid_mode="pod", infra_pid=4242))
    assert ns(spec) == {
        "mount": None,
        "network": "/run/rktlet/ns/net",
        "ipc": "/run/rktlet/ns/ipc",
        "uts": "/run/rktlet/ns/uts",
        "pid": "/proc/4242/ns/pid",
    }
    assert "hostname" not in spec  # the pod's UTS namespace already has it


def test_namespaces_host_modes():
    spec, _ = build(pod_context=pod(namespaces={}, host=frozenset({"net", "ipc", "pid"}), pid_mode="node"))
    assert ns(spec) == {"mount": None}  # host net, ipc, pid; UTS follows the host network
    assert "hostname" not in spec
    spec, _ = build(pod_context=pod(namespaces={"ipc": "/i"}, host=frozenset({"net"}), pid_mode="node"))
    assert ns(spec) == {"mount": None, "ipc": "/i"}


def test_namespaces_new_when_not_pinned():
    spec, _ = build(pod_context=pod(namespaces={}, pid_mode="container"))
    assert ns(spec) == {"mount": None, "network": None, "ipc": None, "uts": None, "pid": None}
    assert spec["hostname"] == "web-0"


def test_cgroup_namespace_only_on_v2():
    assert "cgroup" not in ns(build()[0])
    assert ns(build(host_info=host(cgroups=V2))[0])["cgroup"] is None


def test_pid_mode_pod_needs_infra():
    with pytest.raises(InvalidArgument, match="infra"):
        build(pod_context=pod(pid_mode="pod", infra_pid=0))
    with pytest.raises(InvalidArgument, match="pid_mode"):
        build(pod_context=pod(pid_mode="weird"))


# -- cgroups and resources ------------------------------------------------------------------------


def test_cgroups_path():
    assert build()[0]["linux"]["cgroupsPath"] == "/kubepods/besteffort/pod123/c0ffee"
    assert build(pod_context=pod(cgroup_parent="/"))[0]["linux"]["cgroupsPath"] == "/c0ffee"


def test_resources():
    config = ContainerConfig(name="a", resources=Resources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit=64 << 20, memory_swap_limit=64 << 20,
        cpuset_cpus="0-1", cpuset_mems="0",
    ))
    resources = build(config)[0]["linux"]["resources"]
    assert resources["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}
    assert resources["memory"] == {"limit": 64 << 20, "swap": 64 << 20}


def test_resources_unset_are_omitted():
    resources = build()[0]["linux"]["resources"]
    assert set(resources) == {"devices"}


def test_swap_without_limit_is_dropped():
    spec, notes = build(ContainerConfig(name="a", resources=Resources(memory_swap_limit=1 << 30)))
    assert "memory" not in spec["linux"]["resources"]
    assert any("memory_swap_limit" in n for n in notes)


def test_hugepages():
    config = ContainerConfig(name="a", resources=Resources(hugepage_limits=(("2MB", 4 << 20), ("1GB", 0))))
    with_hugetlb = host(cgroups=replace(HYBRID, v1={**HYBRID.v1, "hugetlb": "/sys/fs/cgroup/hugetlb"}))
    spec, notes = build(config, host_info=with_hugetlb)
    assert spec["linux"]["resources"]["hugepageLimits"] == [
        {"pageSize": "2MB", "limit": 4 << 20}, {"pageSize": "1GB", "limit": 0},
    ]
    assert notes == []
    spec, notes = build(config, host_info=host(cgroups=V2))
    assert len(spec["linux"]["resources"]["hugepageLimits"]) == 2
    # this machine: hugetlb only in the (unused) unified hierarchy
    spec, notes = build(config)
    assert "hugepageLimits" not in spec["linux"]["resources"]
    assert any("hugetlb" in n for n in notes)


def test_unified_only_on_v2():
    config = ContainerConfig(name="a", resources=Resources(unified=(("memory.high", "100M"),)))
    spec, notes = build(config)
    assert "unified" not in spec["linux"]["resources"]
    assert any("memory.high" in n and "hybrid" in n for n in notes)
    spec, notes = build(config, host_info=host(cgroups=V2))
    assert spec["linux"]["resources"]["unified"] == {"memory.high": "100M"}


# -- devices -------------------------------------------------------------------------------------


def test_default_device_rules():
    rules = build()[0]["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {(r.get("type"), r.get("major"), r.get("minor")) for r in rules[1:] if r["allow"]}
    for device in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]:
        assert ("c", *device) in allowed
    assert ("c", 136, None) in allowed
    assert {"allow": True, "type": "c", "access": "m"} in rules  # mknod only
    assert "devices" not in build()[0]["linux"]


def test_config_devices():
    info = os.stat("/dev/null")
    config = ContainerConfig(name="a", devices=(Device("/dev/mynull", "/dev/null", "rw"),))
    spec, _ = build(config)
    assert spec["linux"]["devices"] == [{
        "path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
        "fileMode": info.st_mode & 0o777, "uid": info.st_uid, "gid": info.st_gid,
    }]
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                         "access": "rw"}


def test_bad_devices(tmp_path):
    with pytest.raises(InvalidArgument, match=r"devices\[0\]\.host_path: /dev/nope-rktlet does not exist"):
        build(ContainerConfig(name="a", devices=(Device("/dev/x", "/dev/nope-rktlet"),)))
    with pytest.raises(InvalidArgument, match="not a device"):
        build(ContainerConfig(name="a", devices=(Device("/dev/x", str(tmp_path)),)))
    with pytest.raises(InvalidArgument, match="permissions"):
        build(ContainerConfig(name="a", devices=(Device("/dev/x", "/dev/null", "rx"),)))


# -- sysctls -------------------------------------------------------------------------------------


def test_sysctls_pod_then_container():
    config = ContainerConfig(name="a", sysctls=(("net.ipv4.ping_group_range", "0 0"), ("kernel.shmmax", "1")))
    spec, _ = build(config, pod_context=pod(sysctls={"net.ipv4.ping_group_range": "1 1", "kernel.msgmax": "9"}))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 0", "kernel.msgmax": "9", "kernel.shmmax": "1"}


def test_sysctls_refused_in_host_namespaces_or_host_wide():
    with pytest.raises(InvalidArgument, match="host's net namespace"):
        build(ContainerConfig(name="a", sysctls=(("net.ipv4.ip_forward", "1"),)),
              pod_context=pod(host=frozenset({"net"})))
    with pytest.raises(InvalidArgument, match="not namespaced"):
        build(ContainerConfig(name="a", sysctls=(("vm.swappiness", "1"),)))


# -- seccomp --------------------------------------------------------------------------------------


def test_seccomp_selection(tmp_path):
    assert "seccomp" not in build()[0]["linux"]  # not set: unconfined, as the CRI says
    assert "seccomp" not in build(security(seccomp=Profile("unconfined")))[0]["linux"]
    spec, _ = build(security(seccomp=Profile("runtime_default")))
    assert spec["linux"]["seccomp"] == default_profile("x86_64", "6.1.0-13-amd64")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    spec, _ = build(security(seccomp=Profile("localhost", str(profile))))
    assert spec["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}


def test_seccomp_localhost_missing_is_named(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(InvalidArgument, match=f"seccomp localhost profile {missing} does not exist"):
        build(security(seccomp=Profile("localhost", missing)))


def test_load_localhost_checks_and_converts(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidArgument, match=f"{bad} is not valid JSON"):
        load_localhost(str(bad))
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_MAYBE"}))
    with pytest.raises(InvalidArgument, match="defaultAction"):
        load_localhost(str(bad))
    with pytest.raises(InvalidArgument, match="absolute"):
        load_localhost("relative.json")
    docker_style = tmp_path / "docker.json"
    docker_style.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"name": "read", "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW", "comment": "x"},
        ],
    }))
    loaded = load_localhost(str(docker_style))
    assert loaded["syscalls"] == [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                                  {"names": ["write"], "action": "SCMP_ACT_ALLOW"}]
    if os.uname().machine == "x86_64":
        assert loaded["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]


def allowed_names(profile) -> set[str]:
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
            for name in rule["names"]}


def test_default_profile_shape():
    profile = default_profile("x86_64", "6.1.0")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = allowed_names(profile)
    for needed in ("read", "write", "openat", "execve", "mmap", "futex", "socket", "bind", "accept4",
                   "wait4", "exit_group", "rt_sigaction", "nanosleep", "clock_nanosleep", "getdents64",
                   "newfstatat", "statx", "setresuid", "capset", "prctl", "epoll_pwait", "setgroups"):
        assert needed in allowed, needed
    for blocked in ("kexec_load", "kexec_file_load", "reboot", "init_module", "finit_module", "delete_module",
                    "mount", "umount2", "pivot_root", "swapon", "swapoff", "bpf", "perf_event_open",
                    "keyctl", "add_key", "request_key", "unshare", "setns", "acct", "settimeofday",
                    "clock_settime", "adjtimex", "userfaultfd", "open_by_handle_at", "lookup_dcookie",
                    "quotactl", "vhangup", "iopl", "ioperm", "io_uring_setup", "clone", "clone3",
                    "personality", "fsopen", "move_mount", "open_tree"):
        assert blocked not in allowed, blocked
    names = [n for rule in profile["syscalls"] for n in rule["names"] if n != "personality"]
    assert len(names) == len(set(names))  # each named once


def test_default_profile_clone_clone3_personality():
    rules = default_profile("x86_64", "6.1.0")["syscalls"]
    clone = [r for r in rules if r["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    # every CLONE_NEW* bit but CLONE_NEWTIME (0x80 is the exit signal in clone(2))
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    assert [r for r in rules if r["names"] == ["clone3"]] == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    personas = sorted(r["args"][0]["value"] for r in rules if r["names"] == ["personality"])
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert default_profile("s390x", "6.1.0")["syscalls"][1]["args"][0]["index"] == 1


def test_default_profile_ptrace_from_4_8():
    assert "ptrace" in allowed_names(default_profile("x86_64", "4.8.0"))
    assert "ptrace" in allowed_names(default_profile("x86_64", "6.18.44-fc"))
    assert "ptrace" not in allowed_names(default_profile("x86_64", "4.4.0-210-generic"))
    assert default_profile("aarch64", "6.1")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


# -- AppArmor --------------------------------------------------------------------------------------


def test_apparmor_without_apparmor():
    spec, notes = build(security(apparmor=Profile("runtime_default")))
    assert "apparmorProfile" not in spec["process"]
    assert any("AppArmor" in n for n in notes)
    with pytest.raises(InvalidArgument, match="AppArmor profile k8s-nginx requested but AppArmor is not enabled"):
        build(security(apparmor=Profile("localhost", "k8s-nginx")))
    assert "apparmorProfile" not in build(security(apparmor=Profile("unconfined")))[0]["process"]


def test_apparmor_enabled():
    enabled = host(apparmor_enabled=True, apparmor_profiles=frozenset({"rktlet-default", "k8s-nginx"}))
    spec, _ = build(security(apparmor=Profile("runtime_default")), host_info=enabled)
    assert spec["process"]["apparmorProfile"] == "rktlet-default"
    spec, _ = build(security(apparmor=Profile("localhost", "localhost/k8s-nginx")), host_info=enabled)
    assert spec["process"]["apparmorProfile"] == "k8s-nginx"
    with pytest.raises(InvalidArgument, match="not loaded"):
        build(security(apparmor=Profile("localhost", "other")), host_info=enabled)
    spec, notes = build(security(apparmor=Profile("runtime_default")),
                        host_info=replace(enabled, apparmor_profiles=frozenset()))
    assert "apparmorProfile" not in spec["process"]
    assert any("rktlet-default is not loaded" in n for n in notes)


def test_apparmor_profiles_that_cannot_be_listed(monkeypatch):
    from rktlet.oci import spec as spec_module

    monkeypatch.setattr(spec_module, "_apparmor_profiles", lambda: None)
    unknown = host(apparmor_enabled=True, apparmor_profiles=None)
    spec, _ = build(security(apparmor=Profile("localhost", "k8s-nginx")), host_info=unknown)
    assert spec["process"]["apparmorProfile"] == "k8s-nginx"  # trusted; runc reports it if absent
    spec, notes = build(security(apparmor=Profile("runtime_default")), host_info=unknown)
    assert "apparmorProfile" not in spec["process"] and notes
    monkeypatch.setattr(spec_module, "_apparmor_profiles", lambda: frozenset({"rktlet-default"}))
    assert build(security(apparmor=Profile("runtime_default")), host_info=unknown)[0]["process"][
        "apparmorProfile"] == "rktlet-default"  # listed live, at each build


def test_host_probe_reads_this_machine():
    info = HostInfo.probe()
    assert info.cap_last_cap >= 36
    assert info.cgroups.mode in ("v1", "hybrid", "v2")
    assert info.bounding


def test_bad_container_id():
    with pytest.raises(InvalidArgument, match="container id"):
        build_spec("a/b", ContainerConfig(name="a"), IMAGE, pod(), "/r", ROOT, 0, host())
