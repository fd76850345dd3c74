"""The CRI v1 messages and service stubs, under short names.

``pb`` holds the messages and enums of ``runtime.v1``; ``pb_grpc`` the
generated servicer bases and stubs; ``SERVICES`` the two service descriptors.
"""

from rktlet.cri.api.runtime.v1 import api_pb2 as pb
from rktlet.cri.api.runtime.v1 import api_pb2_grpc as pb_grpc

RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]
SERVICES = (RUNTIME_SERVICE, IMAGE_SERVICE)

__all__ = ["pb", "pb_grpc", "RUNTIME_SERVICE", "IMAGE_SERVICE", "SERVICES"]
