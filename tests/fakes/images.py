"""In-memory images: :class:`FakeImages` (the ``ImageLookup`` protocol of
:mod:`rktlet.pod.drivers`). Images are added by the test with the config
containers should see. Lookups and layer paths are the real
:class:`~rktlet.image.store.ImageStore`'s, on an index that is never
written to disk (so name rules — ids, 12+ hex prefixes, tags with their
registry defaults, digest references — cannot drift from the real ones)."""

from __future__ import annotations

import hashlib

from rktlet.image import reference
from rktlet.image.manifest import ImageConfig
from rktlet.image.store import ImageRecord, ImageStore

__all__ = ["FakeImages"]


class FakeImages:
    """Pulled images, in memory.

    :param root: the ``--root`` the layer paths are under (never touched).
    """

    def __init__(self, root: str = "/fake/root") -> None:
        self.store = ImageStore(root)  # its in-memory index only: no load, no save
        self.configs: dict[str, ImageConfig] = {}

    def add(self, name: str, config: ImageConfig | None = None, chain_ids: tuple[str, ...] = ()) -> ImageRecord:
        """An image tagged *name* (normalised as a pull would: ``busybox``
        is ``docker.io/library/busybox:latest``) with *config* (default:
        ``sh``, one layer); its id is derived from the name."""
        ref = reference.parse(name)
        image_id = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        chains = list(chain_ids) or ["sha256:" + hashlib.sha256(b"layer of " + name.encode()).hexdigest()]
        record = ImageRecord(id=image_id, repo_tags=[f"{ref.name}:{ref.tag}"], chain_ids=chains)
        self.store.images[image_id] = record
        self.configs[image_id] = config or ImageConfig(diff_ids=tuple(chains), cmd=("sh",))
        return record

    def find(self, name: str) -> ImageRecord | None:
        """The image *name* refers to, or None."""
        return self.store.find(name)

    def config(self, record: ImageRecord) -> ImageConfig:
        """The config the image was added with."""
        return self.configs[record.id]
