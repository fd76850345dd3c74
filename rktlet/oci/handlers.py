"""Runtime handlers: rkt's stage1 flavors, as CRI RuntimeClass handlers.

Each handler names an OCI runtime binary. ``runc`` is the default (what an
empty ``runtime_handler`` means); more come from ``--runtime-handler``. The
pod annotation ``rkt.alpha.kubernetes.io/stage1-name-override`` — how rkt
users picked a stage1 per pod — selects a handler by name too.
"""

from __future__ import annotations

from typing import Mapping

from rktlet.errors import InvalidArgument

DEFAULT_HANDLER = "runc"
STAGE1_ANNOTATION = "rkt.alpha.kubernetes.io/stage1-name-override"


class Handlers:
    """The configured handlers.

    :param binaries: handler name → runtime binary (name on PATH or path).
    """

    def __init__(self, binaries: Mapping[str, str]) -> None:
        self.binaries = dict(binaries)

    @property
    def names(self) -> list[str]:
        """Handler names, the default first."""
        return [DEFAULT_HANDLER] + sorted(n for n in self.binaries if n != DEFAULT_HANDLER)

    def select(self, requested: str, annotations: Mapping[str, str]) -> str:
        """The handler for a pod: ``runtime_handler`` if given, else the
        stage1 annotation, else the default.

        :raises InvalidArgument: naming the unknown handler and the known ones.
        """
        name = requested or annotations.get(STAGE1_ANNOTATION, "") or DEFAULT_HANDLER
        if name not in self.binaries:
            source = "runtime_handler" if requested else f"annotation {STAGE1_ANNOTATION}"
            raise InvalidArgument(f"{source}: unknown runtime handler {name!r} (known: {', '.join(self.names)})")
        return name

    def binary(self, name: str) -> str:
        """The OCI runtime binary of handler *name*."""
        return self.binaries[name or DEFAULT_HANDLER]
