"""Image volumes (KEP-4639, ``Mount.image``): an image pulled by PullImage,
mounted read-only into a container — merged layers, sub paths, refusals,
RemoveImage while in use, and nothing left mounted after removal."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.containers import container_config, create, start, status
from harness.images import Dir, File, Layer, Symlink, build_image, push_image
from harness.pods import pod_config, run_pod

VOLUME = "/mnt/volume"


@pytest.fixture(scope="module")
def volume_image(registry) -> str:
    """An image of plain content to mount: directories, a file, symbolic
    links that stay inside it and some that would leave it."""
    image = build_image([Layer([
        Dir("content"), File("content/hello.txt", b"hello from the image\n"),
        Dir("content/nested"), File("content/nested/deep.txt", b"deep\n"),
        Symlink("inside", "content/nested"),  # stays in the image
        Symlink("content/back", "../content"),  # climbs, but stays in the image
        Symlink("absolute", "/etc"),  # would be the host's (or the container's) /etc
        Symlink("up", "../../.."),  # climbs above the image's root
        File("afile", b"not a directory\n"),
    ])])
    push_image(registry, "volume-content", "v1", image)
    return registry.ref("volume-content", "v1")


def pull(daemon, image: str) -> str:
    return daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60).image_ref


@pytest.fixture
def pod(daemon, test_network, pushed_images, tmp_path):
    """A running pod with busybox pulled: (daemon, pod id, pod config, busybox ref)."""
    image = pushed_images["busybox"].ref
    pull(daemon, image)
    config = pod_config(log_directory=str(tmp_path / "logs"))
    return daemon, run_pod(daemon, config), config, image


def with_volume(name: str, image: str, volume: str, sub_path: str = "", readonly: bool = True,
                path: str = VOLUME, user_specified: str = "") -> pb.ContainerConfig:
    config = container_config(name, image, command=["sleep", "3600"])
    config.mounts.append(pb.Mount(container_path=path, readonly=readonly, image_sub_path=sub_path,
                                  image=pb.ImageSpec(image=volume, user_specified_image=user_specified)))
    return config


def run(daemon, cid: str, *cmd: str) -> tuple[int, bytes, bytes]:
    r = daemon.runtime().ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10), timeout=30)
    return r.exit_code, r.stdout, r.stderr


def volume_mounts(daemon) -> list[str]:
    """Mount points of image volumes under the daemon's dirs."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(daemon.base + "/") and "/volumes/" in p]


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def remove(daemon, cid: str) -> None:
    daemon.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)


def refused(daemon, pod_id, pod_cfg, config) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        create(daemon, pod_id, pod_cfg, config)
    return e.value


def test_the_image_is_mounted_read_only_merged_and_unmounted_on_removal(pod, pushed_images):
    daemon, pod_id, pod_cfg, busybox = pod
    multi = pushed_images["multi-layer"].ref
    image_id = pull(daemon, multi)
    cid = create(daemon, pod_id, pod_cfg, with_volume("reader", busybox, image_id, user_specified=multi))
    start(daemon, cid)
    # The layers merged as overlayfs merges them: the whiteout hides the
    # file, the opaque directory hides what was below it.
    assert run(daemon, cid, "cat", f"{VOLUME}/data/keep.txt", f"{VOLUME}/data/layer3.txt")[1] == b"keep\nthird layer\n"
    assert run(daemon, cid, "ls", f"{VOLUME}/data/olddir")[1].split() == [b"new.txt"]
    assert run(daemon, cid, "test", "-e", f"{VOLUME}/data/remove-me.txt")[0] == 1
    # Read-only, executable (not noexec), for root too.
    code, _, err = run(daemon, cid, "touch", f"{VOLUME}/written")
    assert code != 0 and b"Read-only file system" in err
    assert run(daemon, cid, "sh", "-c", f"echo x > {VOLUME}/data/keep.txt")[0] != 0
    assert run(daemon, cid, f"{VOLUME}/bin/busybox", "true")[0] == 0
    assert run(daemon, cid, "grep", f" {VOLUME} ", "/proc/self/mounts")[1].split()[3].startswith(b"ro")
    # ContainerStatus names the image by id and digest (what PullImage
    # answered), keeps what the pod's author wrote, and the mount point.
    m = [m for m in status(daemon, cid).status.mounts if m.container_path == VOLUME][0]
    assert (m.image.image, m.image.image_ref, m.image.user_specified_image) == (image_id, image_id, multi)
    assert m.readonly and m.host_path.startswith(daemon.run_dir + "/") and m.image_sub_path == ""
    assert volume_mounts(daemon) == [m.host_path]
    # Nothing is written through to the layers.
    assert not os.path.exists(os.path.join(m.host_path, "written"))
    bundle = os.path.dirname(os.path.dirname(m.host_path))
    remove(daemon, cid)
    wait_until(lambda: not volume_mounts(daemon) and not os.path.exists(bundle), "the image volume unmounted")
    assert pull(daemon, multi) == image_id  # its layers are fine


def test_sub_paths_mount_a_directory_of_the_image(pod, volume_image):
    daemon, pod_id, pod_cfg, busybox = pod
    image_id = pull(daemon, volume_image)
    config = with_volume("sub", busybox, image_id, sub_path="content")
    config.mounts.append(pb.Mount(container_path="/mnt/linked", readonly=True, image_sub_path="inside",
                                  image=pb.ImageSpec(image=image_id)))
    config.mounts.append(pb.Mount(container_path="/mnt/climbing", readonly=True, image_sub_path="content/back/nested",
                                  image=pb.ImageSpec(image=volume_image)))  # by tag: resolved to the same image
    cid = create(daemon, pod_id, pod_cfg, config)
    start(daemon, cid)
    assert run(daemon, cid, "cat", f"{VOLUME}/hello.txt")[1] == b"hello from the image\n"
    assert run(daemon, cid, "test", "-e", f"{VOLUME}/content")[0] == 1  # the sub path, not the image's root
    assert run(daemon, cid, "cat", "/mnt/linked/deep.txt", "/mnt/climbing/deep.txt")[1] == b"deep\ndeep\n"
    assert run(daemon, cid, "touch", f"{VOLUME}/x")[0] != 0
    mounts = {m.container_path: m for m in status(daemon, cid).status.mounts}
    assert mounts[VOLUME].image_sub_path == "content" and mounts[VOLUME].host_path.endswith("/content")
    assert mounts["/mnt/linked"].host_path.endswith("/content/nested")  # the link resolved in the image
    assert mounts["/mnt/climbing"].image.image == image_id
    assert len(volume_mounts(daemon)) == 3
    remove(daemon, cid)
    wait_until(lambda: not volume_mounts(daemon), "the image volumes unmounted")


@pytest.mark.parametrize("sub_path, code, words", [
    ("missing", grpc.StatusCode.NOT_FOUND, "'missing' does not exist in the image"),
    ("content/missing/deeper", grpc.StatusCode.NOT_FOUND, "content/missing is missing"),
    ("afile", grpc.StatusCode.INVALID_ARGUMENT, "'afile' is not a directory"),
    ("absolute", grpc.StatusCode.INVALID_ARGUMENT, "absolute symbolic link"),
    ("up", grpc.StatusCode.INVALID_ARGUMENT, "climbs above the image's root"),
    ("content/../../etc", grpc.StatusCode.INVALID_ARGUMENT, "climbs above the image's root"),
    ("/etc", grpc.StatusCode.INVALID_ARGUMENT, "must be relative"),
])
def test_bad_sub_paths_are_refused_naming_them_and_leave_nothing(pod, volume_image, sub_path, code, words):
    daemon, pod_id, pod_cfg, busybox = pod
    image_id = pull(daemon, volume_image)
    e = refused(daemon, pod_id, pod_cfg, with_volume("bad", busybox, image_id, sub_path=sub_path))
    assert e.code() == code and "config.mounts[0].image_sub_path" in e.details() and words in e.details(), e
    assert list(daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    assert volume_mounts(daemon) == []
    assert os.listdir(os.path.join(daemon.run_dir, "containers")) == []


def test_refusals_name_the_mount(pod, volume_image):
    daemon, pod_id, pod_cfg, busybox = pod
    image_id = pull(daemon, volume_image)
    e = refused(daemon, pod_id, pod_cfg, with_volume("rw", busybox, image_id, readonly=False))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.mounts[0].readonly must be true" in e.details()
    missing = volume_image.rsplit(":", 1)[0] + ":never-pulled"
    e = refused(daemon, pod_id, pod_cfg, with_volume("missing", busybox, missing))
    assert e.code() == grpc.StatusCode.NOT_FOUND and missing in e.details() and "pull it first" in e.details()
    both = with_volume("both", busybox, image_id)
    both.mounts[0].host_path = "/tmp"
    e = refused(daemon, pod_id, pod_cfg, both)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.mounts[0].host_path must be empty" in e.details()
    assert volume_mounts(daemon) == []


def test_remove_image_in_use_keeps_the_layers_until_the_container_goes(pod, volume_image, pushed_images):
    """As containerd: RemoveImage of an image an image volume uses succeeds
    (the kubelet's image GC keeps it: ContainerStatus names it), and its
    layers stay as long as the volume is mounted."""
    daemon, pod_id, pod_cfg, busybox = pod
    image_id = pull(daemon, volume_image)
    cid = create(daemon, pod_id, pod_cfg, with_volume("user", busybox, image_id, sub_path="content"))
    start(daemon, cid)
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)), timeout=30)
    assert not daemon.images().ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id)),
                                           timeout=10).HasField("image")
    assert run(daemon, cid, "cat", f"{VOLUME}/hello.txt")[1] == b"hello from the image\n"
    # Another removal's garbage collection keeps them too.
    other = pull(daemon, pushed_images["web"].ref)
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=other)), timeout=30)
    assert run(daemon, cid, "cat", f"{VOLUME}/nested/deep.txt")[1] == b"deep\n"
    assert status(daemon, cid).status.mounts[0].image.image == image_id
    remove(daemon, cid)
    wait_until(lambda: not volume_mounts(daemon), "the image volume unmounted")
    assert pull(daemon, volume_image) == image_id
