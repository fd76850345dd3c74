"""The CRI ImageService. Methods are named as the RPCs; those missing here
answer UNIMPLEMENTED (see ``dispatch.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterator

import grpc

from rktlet.cri.proto import pb
from rktlet.cri.servicer import Servicer, paged
from rktlet.errors import InvalidArgument
from rktlet.image.registry import Credentials

if TYPE_CHECKING:
    from rktlet.cri.bridge import ReactorBridge
    from rktlet.image.store import ImageRecord
    from rktlet.pod.engine import Engine


def image_to_cri(record: ImageRecord) -> pb.Image:
    """An image record as the CRI ``Image`` message.

    The image's user becomes ``uid`` when numeric (``1000`` or ``1000:1000``)
    and ``username`` otherwise, as the kubelet's runAsNonRoot check expects.
    """
    image = pb.Image(
        id=record.id,
        repo_tags=record.repo_tags,
        repo_digests=record.repo_digests,
        size=record.size,
    )
    user = record.user.split(":", 1)[0]
    if user.isdigit():
        image.uid.value = int(user)
    elif user:
        image.username = user
    return image


def _image_name(spec: pb.ImageSpec, field: str) -> str:
    if not spec.image:
        raise InvalidArgument(f"{field}.image: an image reference or id is required")
    return spec.image


class ImageService(Servicer):
    """``runtime.v1.ImageService``."""

    # Image messages kept at most (the store's images, normally a few hundred).
    _CACHE_LIMIT = 20_000

    def __init__(self, engine: Engine, bridge: ReactorBridge) -> None:
        super().__init__(engine, bridge)
        # id → (record, its message): records are immutable, so a message
        # is good while the store holds the same record object. Worker
        # threads share it without a lock: entries are only replaced whole.
        self._messages: dict[str, tuple[ImageRecord, pb.Image]] = {}

    def _message(self, record: ImageRecord) -> pb.Image:
        entry = self._messages.get(record.id)
        if entry is None or entry[0] is not record:
            if len(self._messages) > self._CACHE_LIMIT:
                self._messages = {}
            entry = self._messages[record.id] = (record, image_to_cri(record))
        return entry[1]

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        name = _image_name(request.image, "image")
        credentials = Credentials.from_cri(request.auth) if request.HasField("auth") else None
        record = self._on_reactor(context, self._engine.images.pull, name, credentials)
        return pb.PullImageResponse(image_ref=record.id)

    def _images(self, f: pb.ImageFilter, context: grpc.ServicerContext) -> list[pb.Image]:
        # Image records are immutable and the store's index is replaced on
        # each change: read here, with no hop to the reactor.
        wanted = f.image.image
        if wanted:
            record = self._engine.images.find(wanted)
            records = [record] if record is not None else []
        else:
            records = self._engine.images.list()
        return [self._message(r) for r in records]

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=self._images(request.filter, context))

    def StreamImages(self, request: pb.StreamImagesRequest, context: grpc.ServicerContext) -> Iterator[pb.StreamImagesResponse]:
        return paged(self._images(request.filter, context), lambda page: pb.StreamImagesResponse(images=page))

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        name = _image_name(request.image, "image")

        record = self._engine.images.find(name)  # no hop: see _images
        if record is None:
            return pb.ImageStatusResponse()  # the CRI's answer for an absent image
        response = pb.ImageStatusResponse(image=self._message(record))
        if request.verbose:
            try:
                config = self._engine.images.config(record)  # the blob is read once, then cached
            except FileNotFoundError:
                return pb.ImageStatusResponse()  # removed meanwhile: absent now
            response.info["info"] = json.dumps(
                {
                    "imageSpec": config.raw,
                    "chainIDs": record.chain_ids,
                    "manifestDigest": record.manifest_digest,
                    "indexDigest": record.index_digest,
                    "source": record.source,
                    "pulledAt": record.pulled_at,
                }
            )
        return response

    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        name = _image_name(request.image, "image")
        self._on_reactor(context, self._engine.images.remove, name)
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        timestamp, mountpoint, used, inodes = self._on_reactor(context, self._engine.images.fs_usage)
        usage = pb.FilesystemUsage(
            timestamp=int(timestamp * 1e9),
            fs_id=pb.FilesystemIdentifier(mountpoint=mountpoint),
            used_bytes=pb.UInt64Value(value=used),
            inodes_used=pb.UInt64Value(value=inodes),
        )
        return pb.ImageFsInfoResponse(image_filesystems=[usage], container_filesystems=[usage])
