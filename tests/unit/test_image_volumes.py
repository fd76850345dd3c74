"""Image volumes without root: the CRI's checks of ``Mount.image``, sub
path resolution inside an image (a directory tree with links), the status
message, and the engine on in-memory drivers (tests/unit/pod_world.py):
the read-only overlay over the image's layers, its layers kept from image
GC, undone on failure, unmounted on removal and by start-up recovery."""

from __future__ import annotations

import os

import pytest

from rktlet.cri import container_convert
from rktlet.cri.proto import pb
from rktlet.errors import InvalidArgument, NotFound
from rktlet.oci import image_volumes
from rktlet.oci.container_config import ContainerConfig, Mount
from rktlet.pod import recovery
from tests.unit.pod_world import done

# -- the CRI's checks -----------------------------------------------------------------------


def request(**mount: object) -> pb.CreateContainerRequest:
    r = pb.CreateContainerRequest(pod_sandbox_id="p")
    r.config.metadata.name = "c"
    r.config.image.image = "busybox"
    r.config.mounts.append(pb.Mount(container_path="/mnt/v", **mount))
    return r


def test_an_image_volume_becomes_a_mount_with_its_image():
    config, _ = container_convert.container_config(request(
        readonly=True, image=pb.ImageSpec(image="sha256:" + "a" * 64, user_specified_image="data:v1"),
        image_sub_path="etc"))
    m = config.mounts[0]
    assert (m.image, m.image_sub_path, m.user_specified_image, m.readonly, m.host_path) == \
        ("sha256:" + "a" * 64, "etc", "data:v1", True, "")


@pytest.mark.parametrize("mount, words", [
    (dict(readonly=False, image=pb.ImageSpec(image="data")), "config.mounts[0].readonly must be true"),
    (dict(readonly=True, host_path="/tmp", image=pb.ImageSpec(image="data")), "config.mounts[0].host_path must be empty"),
    (dict(readonly=True, image=pb.ImageSpec()), "config.mounts[0].image.image is required"),
    (dict(readonly=True, host_path="/tmp", image_sub_path="etc"), "config.mounts[0].image_sub_path is for image volumes"),
    (dict(readonly=True, image=pb.ImageSpec(image="data"), image_sub_path="/etc"), "must be relative"),
    (dict(readonly=True, image=pb.ImageSpec(image="data"), image_sub_path="a/../../etc"), "climbs above"),
    (dict(readonly=True, image=pb.ImageSpec(image="data"), image_sub_path="a\0b"), "NUL"),
    (dict(readonly=True, image=pb.ImageSpec(image="data"), image_sub_path="a/" * 2049), "over the limit"),
])
def test_bad_image_volumes_are_refused_naming_the_field(mount, words):
    with pytest.raises(InvalidArgument) as e:
        container_convert.container_config(request(**mount))
    assert words in str(e.value)


def test_an_empty_image_spec_beside_a_host_path_is_a_host_path_mount():
    config, _ = container_convert.container_config(request(host_path="/tmp", image=pb.ImageSpec()))
    assert (config.mounts[0].host_path, config.mounts[0].image) == ("/tmp", "")


@pytest.mark.parametrize("sub_path", ["", "etc", "a/b/", "./a", "a/../b", "a/.."])
def test_sub_paths_that_stay_inside_pass_as_given(sub_path):
    assert image_volumes.check_sub_path(sub_path, "f") == sub_path


def test_the_status_names_the_image_by_id_and_digest():
    image_id = "sha256:" + "b" * 64
    m = container_convert._mount_status({
        "container_path": "/mnt/v", "host_path": "/run/x/volumes/0/etc", "readonly": True, "propagation": "private",
        "image": "data:v1", "image_ref": image_id, "user_specified_image": "data:v1", "image_sub_path": "etc"})
    assert (m.image.image, m.image.image_ref, m.image.user_specified_image, m.image_sub_path) == \
        (image_id, image_id, "data:v1", "etc")
    plain = container_convert._mount_status({"container_path": "/d", "host_path": "/h", "readonly": False,
                                             "propagation": "private"})
    assert not plain.HasField("image") and plain.image_sub_path == ""


# -- sub paths resolved inside an image --------------------------------------------------------


@pytest.fixture
def image_root(tmp_path) -> str:
    """A mounted image, as a directory tree."""
    root = tmp_path / "image"
    (root / "content" / "nested").mkdir(parents=True)
    (root / "content" / "nested" / "deep.txt").write_text("deep")
    (root / "afile").write_text("x")
    (tmp_path / "outside").mkdir()
    links = {"inside": "content/nested", "content/back": "../content", "absolute": "/etc", "up": "../..",
             "sneaky": "content/../../outside", "loop1": "loop2", "loop2": "loop1", "tofile": "afile",
             "dangling": "content/nothing"}
    for name, target in links.items():
        os.symlink(target, root / name)
    return str(root)


@pytest.mark.parametrize("sub_path, found", [
    ("", ""), ("content", "content"), ("content/nested/", "content/nested"), ("inside", "content/nested"),
    ("content/back/nested", "content/nested"), ("inside/..", "content"), ("./content//nested", "content/nested"),
])
def test_sub_paths_resolve_inside_the_image(image_root, sub_path, found):
    assert image_volumes.resolve_sub_path(image_root, sub_path, "f") == os.path.join(image_root, found).rstrip("/")


@pytest.mark.parametrize("sub_path, error, words", [
    ("missing", NotFound, "'missing' does not exist in the image"),
    ("content/missing/x", NotFound, "content/missing is missing"),
    ("dangling", NotFound, "content/nothing is missing"),
    ("afile", InvalidArgument, "is not a directory"),
    ("tofile", InvalidArgument, "is not a directory"),
    ("afile/x", InvalidArgument, "afile is not a directory"),
    ("absolute", InvalidArgument, "absolute symbolic link (/etc)"),
    ("up", InvalidArgument, "climbs above the image's root"),
    ("sneaky", InvalidArgument, "climbs above the image's root"),
    ("content/../..", InvalidArgument, "climbs above the image's root"),
    ("loop1", InvalidArgument, "more than 40 symbolic links"),
])
def test_sub_paths_that_leave_or_miss_are_refused_naming_them(image_root, sub_path, error, words):
    with pytest.raises(error) as e:
        image_volumes.resolve_sub_path(image_root, sub_path, "config.mounts[2].image_sub_path")
    assert f"config.mounts[2].image_sub_path {sub_path!r}" in str(e.value) and words in str(e.value)


def test_a_bundle_is_whole_only_with_its_image_volumes_mounted(tmp_path):
    bundle = str(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    os.makedirs(image_volumes.mount_point(bundle, 3))
    os.makedirs(os.path.join(image_volumes.volumes_dir(bundle), image_volumes.EMPTY_LOWER))
    mounted = {os.path.join(bundle, "rootfs")}
    assert not recovery.bundle_whole(bundle, mounted.__contains__)
    mounted.add(image_volumes.mount_point(bundle, 3))
    assert recovery.bundle_whole(bundle, mounted.__contains__)


# -- the engine ---------------------------------------------------------------------------------


def volume_config(*volumes: tuple[str, str]) -> ContainerConfig:
    return ContainerConfig(name="app", mounts=tuple(
        Mount(f"/mnt/v{i}", "", True, image=image, image_sub_path=sub) for i, (image, sub) in enumerate(volumes)))


def test_an_image_volume_is_a_read_only_overlay_of_its_layers_kept_until_removal(world, pod):
    data = world.images.add("data:v1", chain_ids=("sha256:" + "1" * 64, "sha256:" + "2" * 64))
    c = world.create(pod, config=volume_config(("data:v1", "")))
    target = image_volumes.mount_point(c.bundle, 0)
    empty = os.path.join(image_volumes.volumes_dir(c.bundle), image_volumes.EMPTY_LOWER)
    layers = [world.images.store.layer_diff_dir(chain) for chain in reversed(data.chain_ids)]
    assert world.host.mounts[target].options == f"lowerdir={':'.join(layers + [empty])}"  # top first, no upper
    assert c.mounts[0]["host_path"] == target and c.mounts[0]["image_ref"] == data.id
    assert world.stored(world.container_record(c.id))["mounts"][0]["image_chain_ids"] == data.chain_ids
    assert set(data.chain_ids) <= set(world.containers.layers_in_use())
    done(world.containers.remove(c.id))
    assert target not in world.host.mounts and not os.path.exists(c.bundle)
    assert not set(data.chain_ids) & set(world.containers.layers_in_use())


def test_a_volume_image_not_pulled_is_not_found_and_nothing_is_made(world, pod):
    with pytest.raises(NotFound, match=r"config.mounts\[0\].image: image 'nowhere:v1' .* not found: pull it first"):
        world.create(pod, config=volume_config(("nowhere:v1", "")))
    assert world.containers.list() == []
    assert not [t for t in world.host.mounts if t.startswith(os.path.join(world.run_dir, "containers"))]


def test_a_bad_sub_path_undoes_the_create(world, pod):
    world.images.add("data:v1")
    with pytest.raises(NotFound, match=r"config.mounts\[1\].image_sub_path 'etc' does not exist"):
        world.create(pod, config=volume_config(("data:v1", ""), ("data:v1", "etc")))
    assert world.containers.list() == []
    assert not [t for t in world.host.mounts if "/volumes/" in t or t.endswith("/rootfs")]
    assert os.listdir(os.path.join(world.run_dir, "containers")) == []


def test_start_up_unmounts_the_volumes_of_a_bundle_without_a_record(world, pod):
    world.images.add("data:v1")
    c = world.create(pod, config=volume_config(("data:v1", ""), ("data:v1", "")))
    os.unlink(world.container_record(c.id))  # CreateContainer cut short before its record
    again = world.restarted()
    assert not [t for t in again.host.mounts if t.startswith(c.bundle)] and not os.path.exists(c.bundle)


def test_a_created_container_whose_volume_was_unmounted_is_lost(world, pod):
    world.images.add("data:v1")
    c = world.create(pod, config=volume_config(("data:v1", "")))
    world.host.unmount(image_volumes.mount_point(c.bundle, 0))
    again = world.restarted()
    assert "bundle was lost" in again.containers.get(c.id).message
