"""Unpacked layers are real overlayfs lower layers.

The three layers of :func:`multi_layer_image` (busybox; files under /data;
whiteout + opaque directory) are unpacked each into its own directory with
:func:`rktlet.image.unpack.unpack_layer` and stacked with a real overlay
mount; the merged view must be exactly the image's file system, and busybox
must run in it.  Every mount is unmounted and every directory removed, pass
or fail.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rktlet.image.unpack import unpack_layer
from harness.images import (
    BUSYBOX_APPLETS,
    MULTI_LAYER_ABSENT,
    MULTI_LAYER_PRESENT,
    multi_layer_image,
)

pytestmark = pytest.mark.root

ROOT_ENTRIES = ["bin", "data", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "var"]


def _umount(path: Path) -> None:
    """Unmount *path* if mounted; lazily if it is busy, so nothing is left."""
    if not os.path.ismount(path):
        return
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


class Stack:
    """Unpacked layers of an image under one temporary directory."""

    def __init__(self, fmt: str, compression: str) -> None:
        self.image = multi_layer_image(format=fmt, compression=compression)
        self.base = Path(tempfile.mkdtemp(prefix="rktlet-unpack-overlay-"))
        self.mounts: list[Path] = []
        self.layers: list[Path] = []
        diff_ids = self.image.config_json["rootfs"]["diff_ids"]
        for i, layer in enumerate(self.image.layers):
            blob = self.base / f"blob-{i}"
            blob.write_bytes(layer.blob)
            target = self.base / f"layer-{i}"
            target.mkdir(mode=0o700)
            result = unpack_layer(str(blob), str(target))
            assert result.diff_id == layer.diff_id == diff_ids[i]
            self.layers.append(target)

    def mount(self, writable: bool) -> Path:
        merged = self.base / "merged"
        merged.mkdir()
        # overlayfs lists lowerdirs top first.
        options = "lowerdir=" + ":".join(str(p) for p in reversed(self.layers))
        if writable:
            (self.base / "upper").mkdir()
            (self.base / "work").mkdir()
            options += f",upperdir={self.base / 'upper'},workdir={self.base / 'work'}"
        self.mounts.append(merged)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                       check=True, capture_output=True)
        return merged

    def cleanup(self) -> None:
        try:
            for path in reversed(self.mounts):
                _umount(path)
        finally:
            shutil.rmtree(self.base, ignore_errors=False)


@pytest.fixture(params=[("docker", "gzip"), ("oci", "zstd"), ("oci", "none")], ids=lambda p: "-".join(p))
def stack(request) -> Iterator[Stack]:
    s = Stack(*request.param)
    try:
        yield s
    finally:
        s.cleanup()


def check_image_view(merged: Path) -> None:
    assert sorted(os.listdir(merged)) == ROOT_ENTRIES
    for path, content in MULTI_LAYER_PRESENT.items():
        assert (merged / path).read_bytes() == content, path
    for path in MULTI_LAYER_ABSENT:
        assert not os.path.lexists(merged / path), path
    # The whiteout hides; the opaque directory shows only the top layer.
    assert sorted(os.listdir(merged / "data")) == ["keep.txt", "layer3.txt", "olddir"]
    assert os.listdir(merged / "data" / "olddir") == ["new.txt"]
    # Hard links share an inode in the merged view too.
    busybox = os.lstat(merged / "bin" / "busybox")
    assert stat.S_IMODE(busybox.st_mode) == 0o755
    for applet in BUSYBOX_APPLETS:
        assert os.lstat(merged / "bin" / applet).st_ino == busybox.st_ino, applet
    assert busybox.st_nlink == 1 + len(BUSYBOX_APPLETS)
    assert stat.S_IMODE(os.lstat(merged).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(merged / "tmp").st_mode) == 0o1777


def run_in(merged: Path, *argv: str) -> str:
    proc = subprocess.run(["chroot", str(merged), *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_read_only_overlay_shows_exactly_the_image(stack: Stack) -> None:
    merged = stack.mount(writable=False)
    check_image_view(merged)
    assert run_in(merged, "/bin/busybox", "echo", "ok") == "ok\n"
    assert run_in(merged, "/bin/sh", "-c", "ls /data/olddir; cat /data/keep.txt") == "new.txt\nkeep\n"


def test_writable_overlay_over_unpacked_layers(stack: Stack) -> None:
    merged = stack.mount(writable=True)
    check_image_view(merged)
    assert run_in(merged, "/bin/sh", "-c",
                  "echo hi > /data/new && rm /data/keep.txt && ls /data") == "layer3.txt\nnew\nolddir\n"
    # The lower layers are untouched; the change lives in the upper dir.
    assert (stack.layers[1] / "data" / "keep.txt").read_bytes() == b"keep\n"
    whiteout = os.lstat(stack.base / "upper" / "data" / "keep.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
