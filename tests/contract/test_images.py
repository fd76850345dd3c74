"""The ``ImageLookup`` contract (:mod:`rktlet.pod.drivers`): FakeImages and
the ImageManager over an ImageStore in a temporary dir, filled through the
store's own API (no registry, no root: the real variant always runs)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from twisted.internet import reactor

from rktlet.image import reference
from rktlet.image.manifest import ImageConfig
from rktlet.image.store import ImageRecord
from rktlet.pod.drivers import ImageLookup
from tests.contract.variants import VARIANTS
from tests.fakes import FakeImages

LAYERS = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)


class FakeWorld:
    def __init__(self, root: str) -> None:
        self.fake = FakeImages(root)
        self.images: ImageLookup = self.fake

    def add(self, name: str, **config: tuple[str, ...] | str) -> ImageRecord:
        return self.fake.add(name, ImageConfig(diff_ids=LAYERS, **config), chain_ids=LAYERS)


class RealWorld:
    def __init__(self, root: str) -> None:
        from rktlet.image.manager import ImageManager
        from rktlet.image.store import ImageStore

        self.store = ImageStore(root)
        self.store.load()
        self.images: ImageLookup = ImageManager(reactor, self.store, registry=None, threadpool=None)

    def add(self, name: str, **config: tuple[str, ...] | str) -> ImageRecord:
        keys = {"cmd": "Cmd", "entrypoint": "Entrypoint", "env": "Env", "user": "User", "working_dir": "WorkingDir",
                "stop_signal": "StopSignal"}
        doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": list(LAYERS)},
               "config": {keys[k]: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
        blob = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        self.store.put_blob(digest, blob)
        ref = reference.parse(name)
        return self.store.put_image(ImageRecord(id=digest, repo_tags=[f"{ref.name}:{ref.tag}"], chain_ids=list(LAYERS)))


@pytest.fixture(params=VARIANTS)
def world(request, tmp_path):
    return FakeWorld(str(tmp_path)) if request.param == "fake" else RealWorld(str(tmp_path))


def test_find_by_tag_id_and_long_enough_prefix(world):
    record = world.add("busybox", cmd=("sh",))
    other = world.add("registry.test/app:v1", cmd=("app",))
    assert world.images.find("busybox") == record
    assert world.images.find("docker.io/library/busybox:latest") == record
    assert world.images.find("registry.test/app:v1") == other
    assert world.images.find(record.id) == record
    assert world.images.find(record.id.removeprefix("sha256:")[:12]) == record
    assert world.images.find(record.id.removeprefix("sha256:")[:11]) is None
    assert world.images.find("registry.test/app:v2") is None
    assert world.images.find("") is None


def test_config_gives_what_containers_default_to(world):
    record = world.add("registry.test/app:v1", entrypoint=("/app",), cmd=("--serve",), env=("A=1",), user="1000:1000",
                       working_dir="/srv", stop_signal="SIGQUIT")
    config = world.images.config(record)
    assert (config.entrypoint, config.cmd, config.env) == (("/app",), ("--serve",), ("A=1",))
    assert (config.user, config.working_dir, config.stop_signal) == ("1000:1000", "/srv", "SIGQUIT")
    assert record.chain_ids == list(LAYERS)


def test_each_layer_has_a_directory_of_its_own(world):
    world.add("busybox")
    dirs = [world.images.store.layer_diff_dir(chain) for chain in LAYERS]
    assert all(os.path.isabs(d) for d in dirs) and len(set(dirs)) == len(dirs)
