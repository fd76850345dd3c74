"""The CRI ImageService. Methods are named as the RPCs; those missing here
answer UNIMPLEMENTED (see ``dispatch.py``)."""

from __future__ import annotations

from rktlet.cri.servicer import Servicer


class ImageService(Servicer):
    """``runtime.v1.ImageService``."""
