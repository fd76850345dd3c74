"""rktlet.oci.cgroups without a real cgroup file system: layout detection
from sample mountinfo texts, path validation, and ensure/add_process/procs/
remove on fixture trees of plain directories and files (a fake ``mkdir``
gives new cpuset directories the empty control files the kernel would)."""

from __future__ import annotations

import os

import pytest

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci import cgroups
from rktlet.oci.cgroups import Layout, add_process, detect, ensure, layout_from_mountinfo, procs, remove, validate_path

# What a Debian host with this machine's layout shows (v1 + cgroup2 unified).
HYBRID = """\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpuset
36 31 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
38 31 0:35 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
39 31 0:36 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer,release_agent=/x
"""

# Older hosts: v1 only, no unified mount, one optional field missing.
V1_ONLY = """\
28 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""

# Pure v2 (Debian 12 with systemd, in a container: the cgroup namespace root).
PURE_V2 = """\
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
99 30 0:26 /some/where /mnt/other\\040place rw,relatime - cgroup2 cgroup2 rw
"""


def test_layout_hybrid():
    layout = layout_from_mountinfo(HYBRID)
    assert layout.mode == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["net_cls"] == layout.v1["net_prio"]
    assert layout.v1["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert layout.v1["freezer"] == "/sys/fs/cgroup/freezer"
    # Mount options are not controllers.
    for option in ("rw", "xattr", "release_agent=/x", "nsdelegate"):
        assert option not in layout.v1
    # One hierarchy per distinct mount point.
    assert len(cgroups._hierarchies(layout)) == 8


def test_layout_v1_only():
    layout = layout_from_mountinfo(V1_ONLY)
    assert layout.mode == "v1"
    assert layout.unified is None
    assert set(layout.v1) == {"cpu", "cpuacct", "cpuset", "memory"}
    assert "clone_children" not in layout.v1


def test_layout_pure_v2():
    layout = layout_from_mountinfo(PURE_V2)
    assert layout == Layout(mode="v2", v1={}, unified="/sys/fs/cgroup")
    assert cgroups._hierarchies(layout) == ["/sys/fs/cgroup"]


def test_layout_prefers_the_hierarchy_root():
    # A bind mount of a sub-tree comes first; the mount of the root wins.
    text = (
        "50 1 0:40 /kubepods /var/lib/x rw - cgroup cgroup rw,memory\n"
        "51 1 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "52 1 0:41 / /sys/fs/cgroup/memory2 rw - cgroup cgroup rw,memory\n"
    )
    assert layout_from_mountinfo(text).v1["memory"] == "/sys/fs/cgroup/memory"


def test_layout_named_hierarchies_only_is_v2():
    text = (
        "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "31 30 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
    )
    assert layout_from_mountinfo(text) == Layout(mode="v2", v1={}, unified="/sys/fs/cgroup")


def test_layout_none_mounted():
    with pytest.raises(RuntimeFailure, match="no cgroup"):
        layout_from_mountinfo("28 1 254:1 / / rw - ext4 /dev/vda1 rw\n")


def test_detect_reads_a_file(tmp_path):
    for text, mode in ((HYBRID, "hybrid"), (V1_ONLY, "v1"), (PURE_V2, "v2")):
        file = tmp_path / "mountinfo"
        file.write_text(text)
        assert detect(str(file)).mode == mode
    with pytest.raises(RuntimeFailure, match="nope"):
        detect(str(tmp_path / "nope"))


def test_detect_this_host():
    layout = detect()
    assert layout.mode in ("v1", "hybrid", "v2")


@pytest.mark.parametrize("path", ["/", "/kubepods", "/kubepods/besteffort/pod123", "/rktlet/abc-def_1.2"])
def test_validate_path_accepts(path):
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "absolute"),
        ("kubepods/pod1", "absolute"),
        ("/kubepods/", "empty path component"),
        ("/kubepods//pod1", "empty path component"),
        ("/kubepods/../etc", "'..'"),
        ("/kubepods/./pod1", "'.'"),
        ("/..", "'..'"),
        ("/a\nb", "control characters"),
        ("/" + "x" * 256, "longer than 255"),
        ("kubepods-besteffort-pod123.slice", "cgroupfs"),
        ("/kubepods.slice/kubepods-besteffort.slice", "cgroupfs"),
    ],
)
def test_validate_path_refuses(path, message):
    with pytest.raises(InvalidArgument, match="cgroup_parent") as info:
        validate_path(path)
    assert message in str(info.value)


def test_validate_path_field_name():
    with pytest.raises(InvalidArgument, match="^linux.cgroup_parent"):
        validate_path("relative", "linux.cgroup_parent")


# ---------------------------------------------------------------------------
# Fixture trees
# ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """Fake hierarchies: memory, cpu+cpuacct (one dir), cpuset, and a
    unified dir; new cpuset dirs get empty cpuset.cpus/mems like the kernel
    makes them, and rmdir takes control files along like the kernel does."""
    roots = {name: tmp_path / name for name in ("memory", "cpu,cpuacct", "cpuset", "unified")}
    for root in roots.values():
        root.mkdir()
    (roots["cpuset"] / "cpuset.cpus").write_text("0-3\n")
    (roots["cpuset"] / "cpuset.mems").write_text("0\n")
    real_mkdir = os.mkdir

    def kernel_like_mkdir(path, mode=0o777):
        real_mkdir(path, mode)
        if str(path).startswith(str(roots["cpuset"])):
            for name in ("cpuset.cpus", "cpuset.mems"):
                open(os.path.join(path, name), "w").close()

    real_rmdir = os.rmdir

    def kernel_like_rmdir(path):
        # The kernel removes a cgroup's control files along with it.
        for name in ("cpuset.cpus", "cpuset.mems", "cgroup.procs"):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
        real_rmdir(path)

    monkeypatch.setattr(cgroups.os, "mkdir", kernel_like_mkdir)
    monkeypatch.setattr(cgroups.os, "rmdir", kernel_like_rmdir)
    layout = Layout(
        mode="hybrid",
        v1={
            "memory": str(roots["memory"]),
            "cpu": str(roots["cpu,cpuacct"]),
            "cpuacct": str(roots["cpu,cpuacct"]),
            "cpuset": str(roots["cpuset"]),
        },
        unified=str(roots["unified"]),
    )
    return layout, roots


def test_ensure_creates_in_each_v1_hierarchy(tree):
    layout, roots = tree
    created = ensure(layout, "/kubepods/pod1")
    expected = []
    for name in ("memory", "cpu,cpuacct", "cpuset", "unified"):
        expected += [str(roots[name] / "kubepods"), str(roots[name] / "kubepods" / "pod1")]
    assert created == expected
    # Hybrid: the unified tree gets the levels too (runc puts containers there).
    # cpuset values inherited at every new level.
    for level in ("kubepods", "kubepods/pod1"):
        assert (roots["cpuset"] / level / "cpuset.cpus").read_text() == "0-3"
        assert (roots["cpuset"] / level / "cpuset.mems").read_text() == "0"
    # Existing levels are not reported again.
    assert ensure(layout, "/kubepods/pod1") == []
    assert ensure(layout, "/kubepods/pod2") == [
        str(roots[name] / "kubepods" / "pod2") for name in ("memory", "cpu,cpuacct", "cpuset", "unified")
    ]


def test_ensure_v2_uses_unified_only(tree):
    _, roots = tree
    layout = Layout(mode="v2", v1={}, unified=str(roots["unified"]))
    created = ensure(layout, "/rktlet/abc")
    assert created == [str(roots["unified"] / "rktlet"), str(roots["unified"] / "rktlet" / "abc")]
    assert list(roots["memory"].iterdir()) == []


def test_ensure_refuses_bad_paths(tree):
    layout, roots = tree
    with pytest.raises(InvalidArgument):
        ensure(layout, "/a/../../../etc")
    for root in roots.values():
        assert not any(p.is_dir() for p in root.iterdir())


def test_ensure_refuses_a_control_file_name(tree):
    layout, roots = tree
    with pytest.raises(InvalidArgument, match="control file"):
        ensure(layout, "/cpuset.cpus/x")


def test_ensure_rolls_back_on_failure(tree):
    layout, roots = tree
    # The cpuset parent has no cpuset.mems: copying fails after the memory
    # and cpu hierarchies got their directories, which must be removed.
    (roots["cpuset"] / "cpuset.mems").unlink()
    with pytest.raises(RuntimeFailure, match="cpuset"):
        ensure(layout, "/kubepods")
    assert not (roots["memory"] / "kubepods").exists()
    assert not (roots["cpu,cpuacct"] / "kubepods").exists()
    assert not (roots["cpuset"] / "kubepods").exists()


def test_add_process_and_procs(tree):
    layout, roots = tree
    ensure(layout, "/pod")
    for name in ("memory", "cpu,cpuacct", "cpuset"):
        (roots[name] / "pod" / "cgroup.procs").write_text("")
    add_process(layout, "/pod", 4242)
    for name in ("memory", "cpu,cpuacct", "cpuset"):
        assert (roots[name] / "pod" / "cgroup.procs").read_text() == "4242"
    assert procs(layout, "/pod") == [4242]
    assert procs(layout, "/absent") == []
    with pytest.raises(RuntimeFailure, match="cgroup.procs"):
        add_process(layout, "/absent", 1)


def test_remove_deepest_first_and_idempotent(tree):
    _, roots = tree
    layout = Layout(mode="v1", v1={"memory": str(roots["memory"])}, unified=None)
    created = ensure(layout, "/a/b/c")
    # Any order in; children are removed before parents.
    remove(list(created))
    assert list(roots["memory"].iterdir()) == []
    remove(created)  # absent dirs are fine


def test_remove_takes_child_cgroups_along(tree):
    _, roots = tree
    layout = Layout(mode="v1", v1={"memory": str(roots["memory"])}, unified=None)
    created = ensure(layout, "/pod")
    (roots["memory"] / "pod" / "container1").mkdir()
    remove(created)
    assert not (roots["memory"] / "pod").exists()


def test_remove_names_the_dir_it_cannot_remove(tree):
    _, roots = tree
    stuck = roots["memory"] / "stuck"
    stuck.mkdir()
    (stuck / "not-a-cgroup-file").write_text("x")  # plain dir: rmdir → ENOTEMPTY forever
    with pytest.raises(RuntimeFailure, match="stuck"):
        remove([str(stuck)], timeout=0.05)


def test_remove_never_kills_the_daemon(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "cgroup.procs").write_text(f"{os.getpid()}\n")
    (busy / "keeps-it-busy").write_text("")
    with pytest.raises(RuntimeFailure, match="daemon itself"):
        remove([str(busy)], timeout=1)
