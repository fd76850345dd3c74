"""rktlet.oci.users: reading files inside a container root without leaving
it, and the kubelet's rules for the container's user (temp dirs holding
etc/passwd and etc/group; no root needed)."""

from __future__ import annotations

import os

import pytest

from rktlet.errors import InvalidArgument
from rktlet.oci.container_config import ResolvedUser, Security
from rktlet.oci.users import MAX_SYMLINKS, read_in_root, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1234:1234:app user:/home/app:/bin/sh
nohome:x:2000:2001::
broken line
+nisuser::::::
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
wheel:x:10:root,app
app:x:1234:
staff:x:50:app,daemon
web:x:3000:
nogroup:x:65534:
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return str(tmp_path)


# -- read_in_root -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A root dir next to an 'outside' secret the links try to reach."""
    outside = tmp_path / "secret"
    outside.write_text("host secret")
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("inside\n")
    (r / "secret").write_text("root's own secret")
    return r, outside


def test_read_plain_file(tree):
    r, _ = tree
    assert read_in_root(str(r), "/etc/passwd") == b"inside\n"
    assert read_in_root(str(r), "etc//./passwd") == b"inside\n"
    assert read_in_root(str(r), "/etc/missing") is None
    assert read_in_root(str(r), "/etc") is None  # a directory
    assert read_in_root(str(r), "/etc/passwd/x") is None  # not a directory
    assert read_in_root(str(r / "nope"), "/etc/passwd") is None


def test_absolute_symlink_stays_inside(tree):
    r, outside = tree
    os.symlink(str(outside), r / "etc" / "abs")  # the host's path, looked up inside the root: absent
    assert read_in_root(str(r), "/etc/abs") is None
    os.symlink("/secret", r / "etc" / "rooted")  # absolute targets start at the root
    assert read_in_root(str(r), "/etc/rooted") == b"root's own secret"
    os.symlink("/etc/passwd", r / "etc" / "alias")
    assert read_in_root(str(r), "/etc/alias") == b"inside\n"


def test_dotdot_never_climbs_above_root(tree):
    r, _ = tree
    assert read_in_root(str(r), "/../../../secret") == b"root's own secret"
    os.symlink("../../../../secret", r / "etc" / "up")
    assert read_in_root(str(r), "/etc/up") == b"root's own secret"
    os.symlink("../..", r / "etc" / "updir")
    assert read_in_root(str(r), "/etc/updir/etc/passwd") == b"inside\n"
    assert read_in_root(str(r), "/etc/updir/secret") == b"root's own secret"


def test_symlinked_directory(tree):
    r, outside = tree
    os.symlink(str(outside.parent), r / "hostdir")  # points at the dir holding root/
    assert read_in_root(str(r), "/hostdir/secret") is None  # that dir does not exist inside the root
    os.symlink("etc", r / "etc2")
    assert read_in_root(str(r), "/etc2/passwd") == b"inside\n"


def test_symlink_loops_and_limit(tree):
    r, _ = tree
    os.symlink("b", r / "a")
    os.symlink("a", r / "b")
    assert read_in_root(str(r), "/a") is None
    os.symlink("self", r / "self")
    assert read_in_root(str(r), "/self") is None
    # a chain of exactly MAX_SYMLINKS links resolves; one more does not
    for i in range(MAX_SYMLINKS + 1):
        os.symlink(f"l{i + 1}" if i < MAX_SYMLINKS else "/etc/passwd", r / f"l{i}")
    assert read_in_root(str(r), "/l1") == b"inside\n"   # 40 links
    assert read_in_root(str(r), "/l0") is None           # 41 links


def test_special_files_are_not_read(tree):
    r, _ = tree
    os.mkfifo(r / "fifo")
    assert read_in_root(str(r), "/fifo") is None  # never blocks on a FIFO
    os.symlink("/dev/zero", r / "zero")  # /dev/zero inside the root does not exist
    assert read_in_root(str(r), "/zero") is None


def test_size_limit(tree):
    r, _ = tree
    (r / "big").write_bytes(b"x" * 100)
    assert read_in_root(str(r), "/big", limit=100) == b"x" * 100
    with pytest.raises(InvalidArgument, match="larger than 99 bytes"):
        read_in_root(str(r), "/big", limit=99)


# -- resolve_user -----------------------------------------------------------------------------


def test_nothing_set_is_root(root):
    assert resolve_user(root, "", Security()) == ResolvedUser(0, 0, (10,), "root", "/root")


def test_empty_root_without_files(tmp_path):
    assert resolve_user(str(tmp_path), "", Security()) == ResolvedUser(0, 0, (), "", "/")
    assert resolve_user(str(tmp_path), "1000", Security()) == ResolvedUser(1000, 0, (), "", "/")
    with pytest.raises(InvalidArgument, match="'app' not found in the image's /etc/passwd"):
        resolve_user(str(tmp_path), "app", Security())


def test_image_user_by_name(root):
    assert resolve_user(root, "app", Security()) == ResolvedUser(1234, 1234, (10, 50), "app", "/home/app")


def test_image_user_by_uid(root):
    assert resolve_user(root, "1234", Security()) == ResolvedUser(1234, 1234, (10, 50), "app", "/home/app")
    # a uid passwd does not know is fine: gid 0, no name, home /
    assert resolve_user(root, "4321", Security()) == ResolvedUser(4321, 0, (), "", "/")


def test_image_user_with_group(root):
    # The supplementary groups are /etc/group memberships; passwd's own gid
    # is not added when another primary group is chosen (as with Docker).
    assert resolve_user(root, "app:web", Security()) == ResolvedUser(1234, 3000, (10, 50), "app", "/home/app")
    assert resolve_user(root, "4321:77", Security()) == ResolvedUser(4321, 77, (), "", "/")
    assert resolve_user(root, "1234:50", Security()).additional_gids == (10,)  # primary left out
    assert resolve_user(root, "daemon:", Security()) == ResolvedUser(1, 1, (50,), "daemon", "/usr/sbin")


def test_image_user_unknown_names(root):
    with pytest.raises(InvalidArgument, match=r"'ghost' not found in the image's /etc/passwd"):
        resolve_user(root, "ghost", Security())
    with pytest.raises(InvalidArgument, match=r"group 'ghosts' not found in the image's /etc/group"):
        resolve_user(root, "app:ghosts", Security())
    with pytest.raises(InvalidArgument, match="no user"):
        resolve_user(root, ":web", Security())


def test_run_as_user_wins(root):
    security = Security(run_as_user=1234)
    assert resolve_user(root, "nobody:web", security) == ResolvedUser(1234, 1234, (10, 50), "app", "/home/app")
    security = Security(run_as_user=1234, run_as_group=3000, supplemental_groups=(50, 60, 60, 3000))
    assert resolve_user(root, "nobody", security) == ResolvedUser(1234, 3000, (10, 50, 60), "app", "/home/app")
    assert resolve_user(root, "app", Security(run_as_user=0)) == ResolvedUser(0, 0, (10,), "root", "/root")
    assert resolve_user(root, "app", Security(run_as_user=5555)) == ResolvedUser(5555, 0, (), "", "/")


def test_run_as_username(root):
    assert resolve_user(root, "nobody", Security(run_as_username="app")) == ResolvedUser(
        1234, 1234, (10, 50), "app", "/home/app")
    assert resolve_user(root, "", Security(run_as_username="app", run_as_group=7)).gid == 7
    assert resolve_user(root, "", Security(run_as_username="nohome")) == ResolvedUser(2000, 2001, (), "nohome", "/")
    with pytest.raises(InvalidArgument, match=r"run_as_username: user 'ghost' not found in the image's /etc/passwd"):
        resolve_user(root, "", Security(run_as_username="ghost"))


def test_supplemental_groups_policy_merge_or_strict(root):
    # Merge (the default): the image's /etc/group memberships, then the given groups.
    assert resolve_user(root, "app", Security(supplemental_groups=(77,))).additional_gids == (10, 50, 77)
    # Strict: only the given groups.
    strict = Security(supplemental_groups=(77,), supplemental_groups_policy="strict")
    assert resolve_user(root, "app", strict).additional_gids == (77,)


def test_supplemental_groups_only(root):
    assert resolve_user(root, "4321", Security(supplemental_groups=(1, 2, 1, 0))).additional_gids == (1, 2)


def test_run_as_group_alone_is_invalid(root):
    with pytest.raises(InvalidArgument, match="run_as_group"):
        resolve_user(root, "app", Security(run_as_group=5))


def test_out_of_range_ids(root):
    with pytest.raises(InvalidArgument, match="run_as_user"):
        resolve_user(root, "", Security(run_as_user=-1))
    with pytest.raises(InvalidArgument, match="supplemental_groups"):
        resolve_user(root, "", Security(supplemental_groups=(2**32,)))
    # a uid too large to be one is not a number: looked up as a name
    with pytest.raises(InvalidArgument, match="not found"):
        resolve_user(root, str(2**32), Security())


def test_passwd_through_a_symlink_escape(tmp_path):
    """A hostile image links /etc/passwd to the host's: the root's own
    file (here: none) is what counts."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    os.symlink("/etc/passwd", r / "etc" / "passwd")  # points at itself inside the root
    os.symlink("../../../../../../etc/group", r / "etc" / "group")
    with pytest.raises(InvalidArgument, match="'root' not found"):
        resolve_user(str(r), "root", Security())  # the host's passwd (which has root) is not read
    assert resolve_user(str(r), "", Security()) == ResolvedUser(0, 0, (), "", "/")
