"""The CRI RuntimeService. Methods are named as the RPCs; those missing here
answer UNIMPLEMENTED (see ``dispatch.py``)."""

from __future__ import annotations

import json

import grpc

from rktlet.cri.proto import pb
from rktlet.cri.servicer import Servicer

_CGROUP_DRIVERS = {"cgroupfs": pb.CGROUPFS, "systemd": pb.SYSTEMD}


class RuntimeService(Servicer):
    """``runtime.v1.RuntimeService``."""

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        name, version, api_version = self._engine.version()
        return pb.VersionResponse(
            version="0.1.0",  # the CRI's own (unused) API version field, as kubelets expect
            runtime_name=name,
            runtime_version=version,
            runtime_api_version=api_version,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = self._on_reactor(context, self._engine.conditions)
        response = pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                    for c in conditions
                ]
            )
        )
        if request.verbose:
            info = self._on_reactor(context, self._engine.status_info)
            for key, value in info.items():
                response.info[key] = json.dumps(value)
        return response

    def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext) -> pb.RuntimeConfigResponse:
        driver = self._on_reactor(context, self._engine.cgroup_driver)
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=_CGROUP_DRIVERS[driver]))

    def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRuntimeConfigResponse:
        self._on_reactor(context, self._engine.update_pod_cidr, request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()
