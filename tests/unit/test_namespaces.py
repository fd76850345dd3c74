"""Pure logic of rktlet.oci.namespaces: which namespace a sysctl belongs to,
sysctl name forms, /proc/net/dev parsing, and validation that must happen
before anything is created (no root needed: these fail before any syscall)."""

from __future__ import annotations

import re

import pytest

from rktlet.mountinfo import unescape
from rktlet.errors import InvalidArgument
from rktlet.oci import namespaces
from rktlet.oci.namespaces import create_pinned, parse_net_dev, sysctl_namespace, sysctl_path


@pytest.mark.parametrize(
    "name, kind",
    [
        # network: per-netns tables
        ("net.ipv4.ip_unprivileged_port_start", "net"),
        ("net.ipv4.ip_local_port_range", "net"),
        ("net.ipv4.tcp_syncookies", "net"),
        ("net.ipv4.ping_group_range", "net"),
        ("net.core.somaxconn", "net"),  # netns_core_table: per namespace
        ("net.core.optmem_max", "net"),
        ("net.ipv6.conf.all.disable_ipv6", "net"),
        ("net.ipv4.neigh.default.base_reachable_time_ms", "net"),
        ("net.netfilter.nf_conntrack_tcp_timeout_established", "net"),
        ("net/ipv4/ip_forward", "net"),
        ("net.ipv4.conf.eth0/100.forwarding", "net"),  # '/' stands for a literal dot
        ("net/ipv4/conf/eth0.100/forwarding", "net"),
        # network, but host-wide
        ("net.core.rmem_max", None),
        ("net.core.wmem_default", None),
        ("net.core.netdev_max_backlog", None),
        ("net.ipv4.tcp_mem", None),
        ("net.ipv4.route.max_size", None),
        ("net.ipv4.neigh.default.gc_thresh3", None),
        ("net.ipv6.neigh.default.gc_interval", None),
        ("net.netfilter.nf_conntrack_max", None),
        ("net.nf_conntrack_max", None),
        # IPC
        ("kernel.shmmax", "ipc"),
        ("kernel.shmall", "ipc"),
        ("kernel.shmmni", "ipc"),
        ("kernel.shm_rmid_forced", "ipc"),
        ("kernel.msgmax", "ipc"),
        ("kernel.msgmnb", "ipc"),
        ("kernel.msgmni", "ipc"),
        ("kernel.sem", "ipc"),
        ("kernel/sem", "ipc"),
        ("fs.mqueue.queues_max", "ipc"),
        ("fs/mqueue/msg_max", "ipc"),
        # UTS
        ("kernel.hostname", "uts"),
        ("kernel.domainname", "uts"),
        ("kernel/hostname", "uts"),
        # host-wide
        ("kernel.panic", None),
        ("kernel.ostype", None),
        ("vm.overcommit_memory", None),
        ("vm.max_map_count", None),
        ("fs.file-max", None),
        ("fs.mqueue", None),
        ("kernel.shmmax.extra", None),
        # malformed: never namespaced, never a path out of /proc/sys/net
        ("net/../kernel/panic", None),
        ("net..ipv4.ip_forward", None),
        ("net", None),
        ("", None),
        ("net.ipv4.ip_forward.", None),
    ],
)
def test_sysctl_namespace(name, kind):
    assert sysctl_namespace(name) == kind


def test_sysctl_path_forms():
    assert sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net/ipv4/ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path("net/ipv4/conf/eth0.100/rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    with pytest.raises(InvalidArgument, match="malformed"):
        sysctl_path("net/../../etc/passwd")


class _Boom(Exception):
    pass


@pytest.fixture
def no_syscalls(monkeypatch):
    """Make the namespace thread fail loudly if validation lets anything
    through: these tests must stop before a namespace is created."""

    def forbidden(*args, **kwargs):
        raise _Boom("validation should have refused before any thread ran")

    monkeypatch.setattr(namespaces, "_in_fresh_thread", forbidden)


@pytest.mark.parametrize(
    "paths, sysctls, message",
    [
        ({"net": "/x/net"}, {"kernel.panic": "1"}, "kernel.panic is not namespaced"),
        ({"net": "/x/net"}, {"vm.swappiness": "1"}, "not namespaced"),
        ({"net": "/x/net"}, {"net.core.rmem_max": "1"}, "not namespaced"),
        ({"ipc": "/x/ipc"}, {"net.ipv4.ip_forward": "1"}, "host's network namespace"),
        ({"net": "/x/net"}, {"kernel.shmmax": "1"}, "host's IPC namespace"),
        ({"net": "/x/net"}, {"kernel.hostname": "a"}, "host's UTS namespace"),
        ({"net": "/x/net"}, {"net/../kernel/panic": "1"}, "malformed"),
        ({"net": "/x/net"}, {"net.ipv4.ip_forward": "1\0"}, "NUL"),
        # the valid sysctl first: nothing is written before all are checked
        ({"net": "/x/net"}, {"net.ipv4.ip_forward": "1", "kernel.panic": "1"}, "kernel.panic"),
        ({}, {"net.ipv4.ip_forward": "1"}, "host's network namespace"),
    ],
)
def test_create_pinned_validates_first(no_syscalls, paths, sysctls, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        create_pinned(paths, sysctls=sysctls)


def test_create_pinned_hostname_checked_first(no_syscalls):
    with pytest.raises(InvalidArgument, match="hostname"):
        create_pinned({"uts": "/x/uts"}, hostname="h" * 65)
    with pytest.raises(InvalidArgument, match="hostname"):
        create_pinned({"uts": "/x/uts"}, hostname="a\0b")


def test_create_pinned_unknown_kind(no_syscalls):
    with pytest.raises(ValueError, match="mnt"):
        create_pinned({"mnt": "/x/mnt"})


def test_create_pinned_nothing_asked(no_syscalls):
    create_pinned({})  # nothing to create; no thread started


def test_run_in_namespace_unknown_kind():
    with pytest.raises(ValueError):
        namespaces.run_in_namespace("/proc/self/ns/net", "pid", lambda: None)


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0       0          0
  eth0: 987654321  654321    1    2    0     0          0        17 123456789  54321    3    4    0     0       0          0
veth-a.1:5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0
"""


def test_parse_net_dev():
    stats = parse_net_dev(NET_DEV)
    assert set(stats) == {"lo", "eth0", "veth-a.1"}
    assert stats["lo"] == {
        "rx_bytes": 1234, "rx_packets": 12, "rx_errors": 0, "rx_drop": 0,
        "tx_bytes": 1234, "tx_packets": 12, "tx_errors": 0, "tx_drop": 0,
    }
    assert stats["eth0"]["rx_bytes"] == 987654321
    assert stats["eth0"]["rx_errors"] == 1
    assert stats["eth0"]["rx_drop"] == 2
    assert stats["eth0"]["tx_bytes"] == 123456789
    assert stats["eth0"]["tx_packets"] == 54321
    assert stats["eth0"]["tx_errors"] == 3
    assert stats["eth0"]["tx_drop"] == 4
    # No space after the colon when the counter is wide: still parsed.
    assert stats["veth-a.1"]["rx_bytes"] == 5
    assert stats["veth-a.1"]["tx_drop"] == 12


def test_mountinfo_unescape():
    assert unescape(r"/run/a\040b") == "/run/a b"
    assert unescape(r"/run/x\134y") == "/run/x\\y"
    assert unescape("/plain") == "/plain"
