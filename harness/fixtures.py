"""pytest fixtures for a real local registry holding the ready-made test images.

Import them into a conftest with ``from harness.fixtures import *``
(or list ``harness.fixtures`` in ``pytest_plugins``).

* ``registry`` (session): a running :class:`LocalRegistry`; skipped when not
  root or when ``docker-registry`` is not installed; always stopped at the end.
* ``pushed_images`` (session): the ready-made images pushed to it, as a dict
  of name -> :class:`PushedImage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import pytest

from harness.images import (
    BuiltImage,
    BuiltIndex,
    busybox_image,
    busybox_multiarch_index,
    host_architecture,
    multi_layer_image,
    named_user_image,
    push_image,
    web_image,
)
from harness.registry import LocalRegistry, registry_available

__all__ = ["registry", "pushed_images", "PushedImage", "push_ready_made_images"]


@dataclass(frozen=True)
class PushedImage:
    """An image (or index) pushed to the test registry.

    ``ref`` is ``127.0.0.1:PORT/REPO:TAG``, ``digest`` the manifest (or
    index) digest, ``ref_by_digest`` ``127.0.0.1:PORT/REPO@DIGEST``, and
    ``media_type`` the top manifest's media type.  ``str(p)`` is ``p.ref``.
    """

    ref: str
    digest: str
    repo: str
    tag: str
    media_type: str
    image: Union[BuiltImage, BuiltIndex]

    @property
    def ref_by_digest(self) -> str:
        """``127.0.0.1:PORT/REPO@sha256:...``."""
        return self.ref.rsplit(":", 1)[0] + "@" + self.digest

    @property
    def image_id(self) -> str:
        """Image ID (config digest); for an index, the host-platform child's."""
        if isinstance(self.image, BuiltIndex):
            return self.image.image_for(host_architecture()).image_id
        return self.image.image_id

    def __str__(self) -> str:
        return self.ref


#: name -> (repo, tag, builder) of the images pushed by ``pushed_images``.
READY_MADE = {
    "busybox": ("busybox", "latest", lambda: busybox_image("docker")),
    "busybox-oci": ("busybox-oci", "latest", lambda: busybox_image("oci")),
    "named-user": ("named-user", "latest", lambda: named_user_image("docker")),
    "web": ("web", "latest", lambda: web_image("docker")),
    "multi-layer": ("multi-layer", "latest", lambda: multi_layer_image("docker")),
    "multi-layer-zstd": ("multi-layer-zstd", "latest", lambda: multi_layer_image("oci", "zstd")),
    "busybox-multi": ("busybox-multi", "latest", lambda: busybox_multiarch_index("oci")),
}


def push_ready_made_images(reg: LocalRegistry) -> dict[str, PushedImage]:
    """Push every image of :data:`READY_MADE` to ``reg``; return name -> PushedImage.

    Names: ``busybox``, ``busybox-oci``, ``named-user``, ``web``,
    ``multi-layer``, ``multi-layer-zstd`` (OCI, zstd layers) and
    ``busybox-multi`` (OCI index, linux/amd64 + linux/arm64/v8).
    """
    pushed: dict[str, PushedImage] = {}
    for name, (repo, tag, build) in READY_MADE.items():
        image = build()
        digest = push_image(reg, repo, tag, image)
        pushed[name] = PushedImage(
            ref=reg.ref(repo, tag),
            digest=digest,
            repo=repo,
            tag=tag,
            media_type=image.manifest_media_type,
            image=image,
        )
    return pushed


@pytest.fixture(scope="session")
def registry() -> Iterator[LocalRegistry]:
    """A real ``docker-registry`` on 127.0.0.1, for the whole session."""
    reason = registry_available()
    if reason is not None:
        pytest.skip(f"local registry unavailable: {reason}")
    reg = LocalRegistry()
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def pushed_images(registry: LocalRegistry) -> dict[str, PushedImage]:
    """The ready-made images pushed to ``registry``: name -> :class:`PushedImage`."""
    return push_ready_made_images(registry)
