"""rktlet/mountinfo.py: escapes and the mount points below a directory."""

from __future__ import annotations

from rktlet.mountinfo import mount_points_under, unescape

TABLE = "\n".join([
    "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    "40 22 254:0 /usr/sbin/runc /run/rk/runtime/runc/c1/runc.Ab12 rw - ext4 /dev/vda rw",
    "41 22 0:50 / /run/rk/runtime/runc/c1 rw - tmpfs tmpfs rw",
    "42 41 0:51 / /run/rk/runtime/runc/c1/a\\040b rw - tmpfs tmpfs rw",
    "43 22 0:52 / /run/rk/runtime/runc/c10 rw - tmpfs tmpfs rw",
    "bad line",
])


def test_unescape():
    assert unescape("/a\\040b\\011c") == "/a b\tc"
    assert unescape("/plain") == "/plain"


def test_mount_points_under_a_directory_deepest_first():
    assert mount_points_under("/run/rk/runtime/runc/c1", TABLE) == [
        "/run/rk/runtime/runc/c1/a b",
        "/run/rk/runtime/runc/c1/runc.Ab12",
        "/run/rk/runtime/runc/c1",
    ]
    assert mount_points_under("/run/rk/runtime/runc/c1/", TABLE)[-1] == "/run/rk/runtime/runc/c1"
    assert mount_points_under("/nowhere", TABLE) == []


def test_mount_points_under_reads_this_process_table():
    assert "/" in mount_points_under("/")
