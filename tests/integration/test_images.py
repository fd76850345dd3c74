"""ImageService against the real registry, with real images (daemon process)."""

from __future__ import annotations

import json
import os

import grpc
import pytest

from rktlet.cri.proto import pb


def spec(ref):
    return pb.ImageSpec(image=str(ref))


def pull(daemon, ref, auth=None, timeout=60):
    request = pb.PullImageRequest(image=spec(ref))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return daemon.images().PullImage(request, timeout=timeout).image_ref


def status(daemon, name, verbose=False):
    return daemon.images().ImageStatus(pb.ImageStatusRequest(image=spec(name), verbose=verbose), timeout=10)


def test_pull_by_tag_list_status_remove(daemon, pushed_images):
    image = pushed_images["busybox"]
    image_id = pull(daemon, image.ref)
    assert image_id == image.image_id
    listed = daemon.images().ListImages(pb.ListImagesRequest(), timeout=10).images
    assert [i.id for i in listed] == [image_id]
    assert listed[0].repo_tags == [image.ref]
    assert listed[0].repo_digests == [f"{image.ref.rsplit(':', 1)[0]}@{image.digest}"]
    assert listed[0].size > 1_000_000
    for name in (image.ref, image_id, image_id[len("sha256:"):][:12], image.ref_by_digest):
        assert status(daemon, name).image.id == image_id, name
    verbose = json.loads(status(daemon, image.ref, verbose=True).info["info"])
    assert verbose["imageSpec"]["config"]["Cmd"] == ["sh"]
    assert verbose["source"].startswith("http://127.0.0.1:")
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=spec(image.ref)), timeout=10)
    assert not status(daemon, image.ref).HasField("image")
    assert daemon.images().ListImages(pb.ListImagesRequest(), timeout=10).images == []
    # Removing what is not there is not an error.
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=spec(image.ref)), timeout=10)
    layers = os.path.join(daemon.root, "images", "layers")
    assert os.listdir(layers) == []


def test_pull_by_digest_and_multi_arch_index(daemon, pushed_images):
    busybox = pushed_images["busybox"]
    assert pull(daemon, busybox.ref_by_digest) == busybox.image_id
    multi = pushed_images["busybox-multi"]
    image_id = pull(daemon, multi.ref)
    amd64 = multi.image.image_for("amd64")
    assert image_id == amd64.config_digest
    record = status(daemon, multi.ref).image
    assert record.repo_digests == [f"{multi.ref.rsplit(':', 1)[0]}@{multi.digest}"]


@pytest.mark.parametrize("name", ["busybox-oci", "multi-layer", "multi-layer-zstd", "named-user", "web"])
def test_pull_formats_and_compressions(daemon, pushed_images, name):
    image = pushed_images[name]
    assert pull(daemon, image.ref) == image.image_id


def test_user_from_image_config(daemon, pushed_images):
    pull(daemon, pushed_images["named-user"].ref)
    assert status(daemon, pushed_images["named-user"].ref).image.username == "app"


def test_missing_image_and_bad_reference(daemon, registry):
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, f"{registry.host}/no/such:image")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "MANIFEST_UNKNOWN" in e.value.details() or "NAME_UNKNOWN" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, "Not A Reference")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not A Reference" in e.value.details()


def test_image_fs_info(daemon, pushed_images):
    before = daemon.images().ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    assert before.fs_id.mountpoint == os.path.join(daemon.root, "images")
    pull(daemon, pushed_images["busybox"].ref)
    after = daemon.images().ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    assert after.used_bytes.value > before.used_bytes.value + 1_000_000
    assert after.inodes_used.value > before.inodes_used.value
