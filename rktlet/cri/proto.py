"""The CRI v1 messages and service stubs, under short names.

``pb`` holds the messages and enums of ``runtime.v1``; ``pb_grpc`` the
generated servicer bases and stubs; ``SERVICES`` the two service descriptors.
"""

from collections.abc import Mapping
from typing import TypeVar

from rktlet.cri.api.runtime.v1 import api_pb2 as pb
from rktlet.cri.api.runtime.v1 import api_pb2_grpc as pb_grpc
from rktlet.errors import InvalidArgument

_T = TypeVar("_T")

RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]
SERVICES = (RUNTIME_SERVICE, IMAGE_SERVICE)



def enum_name(enum: object, value: int) -> str:
    """The name of *value* in the enum type *enum* (``pb.Signal`` …), or the
    number itself: proto3 enums are open, so a client may send any value."""
    try:
        return enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)


def known(mapping: Mapping[int, _T], value: int, field: str, enum: object) -> _T:
    """``mapping[value]`` for an enum *value* a client sent in *field*;
    a value rktlet does not know is INVALID_ARGUMENT naming the field."""
    try:
        return mapping[value]
    except KeyError:
        names = ", ".join(enum_name(enum, v) for v in mapping)
        raise InvalidArgument(f"{field}: unknown value {enum_name(enum, value)} (one of {names})") from None


__all__ = ["pb", "pb_grpc", "RUNTIME_SERVICE", "IMAGE_SERVICE", "SERVICES", "enum_name", "known"]
