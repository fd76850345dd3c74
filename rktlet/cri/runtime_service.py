"""The CRI RuntimeService. Methods are named as the RPCs; those missing here
answer UNIMPLEMENTED (see ``dispatch.py``)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Iterator

import grpc

from rktlet.cri import container_convert, metrics_convert, sandbox_convert, stats_convert
from rktlet.cri.bridge import ReactorBridge
from rktlet.cri.proto import pb
from rktlet.cri.servicer import Servicer, paged
from rktlet.cri.streaming_rpcs import StreamingRPCs
from rktlet.errors import Unimplemented

if TYPE_CHECKING:
    from rktlet.pod.engine import Engine

_CGROUP_DRIVERS = {"cgroupfs": pb.CGROUPFS, "systemd": pb.SYSTEMD}
_NO_CHECKPOINTS = (
    "rktlet does not implement runtime.v1.RuntimeService/{rpc}: checkpoint and restore need CRIU, "
    "which rktlet does not drive"
)
_EVENT_TYPES = {
    "created": pb.CONTAINER_CREATED_EVENT,
    "started": pb.CONTAINER_STARTED_EVENT,
    "stopped": pb.CONTAINER_STOPPED_EVENT,
    "deleted": pb.CONTAINER_DELETED_EVENT,
}


class RuntimeService(StreamingRPCs, Servicer):
    """``runtime.v1.RuntimeService``."""

    def __init__(self, engine: Engine, bridge: ReactorBridge) -> None:
        super().__init__(engine, bridge)
        self._summaries = container_convert.SummaryCache()

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        name, version, api_version = self._engine.version()
        return pb.VersionResponse(
            version="0.1.0",  # the CRI's own (unused) API version field, as kubelets expect
            runtime_name=name,
            runtime_version=version,
            runtime_api_version=api_version,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = self._engine.conditions()  # read here: the kubelet asks every few seconds
        response = pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                    for c in conditions
                ]
            )
        )
        # Every handler applies SupplementalGroupsPolicy (rktlet resolves
        # the groups itself, from the image's /etc/group).
        response.features.supplemental_groups_policy = True
        if not self._engine.runtime_features_known:
            self._on_reactor(context, self._engine.runtime_features)  # only in the daemon's first moments
        for name in self._engine.handler_names():  # fixed at start-up
            features = self._engine.handler_features(name)
            handler = response.runtime_handlers.add(name=name)
            if features is not None:
                handler.features.recursive_read_only_mounts = features.recursive_read_only_mounts
                handler.features.user_namespaces = features.user_namespaces
        if request.verbose:
            info = self._on_reactor(context, self._engine.status_info)
            for key, value in info.items():
                response.info[key] = json.dumps(value)
        return response

    def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext) -> pb.RuntimeConfigResponse:
        driver = self._engine.cgroup_driver()  # a constant
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=_CGROUP_DRIVERS[driver]))

    def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRuntimeConfigResponse:
        self._on_reactor(context, self._engine.update_pod_cidr, request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- pod sandboxes ---------------------------------------------------------

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext) -> pb.RunPodSandboxResponse:
        spec = sandbox_convert.sandbox_spec(request)
        sandbox = self._on_reactor(context, self._engine.sandboxes.run, spec)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext) -> pb.StopPodSandboxResponse:
        self._on_reactor(context, self._engine.stop_pod, request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: grpc.ServicerContext
    ) -> pb.RemovePodSandboxResponse:
        self._on_reactor(context, self._engine.remove_pod, request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext
    ) -> pb.PodSandboxStatusResponse:
        # The time is taken first: the statuses below are at least that new.
        # The kubelet with EventedPLEG takes the pod's container statuses from
        # this answer (not from ContainerStatus calls) when it has a timestamp.
        timestamp = time.time_ns()
        # Served here, from the snapshots: no hop to the reactor.
        sandbox = self._engine.sandboxes.status(request.pod_sandbox_id)
        containers = self._engine.containers.list(sandbox_prefix=sandbox.id) if self._engine.containers else []
        info = self._engine.sandboxes.verbose_info(sandbox) if request.verbose else None
        response = pb.PodSandboxStatusResponse(
            status=sandbox_convert.sandbox_status(sandbox),
            containers_statuses=[container_convert.container_status(c) for c in containers],
            timestamp=timestamp,
        )
        if info is not None:
            response.info["info"] = json.dumps(info)
        return response

    def _pod_sandboxes(self, f: pb.PodSandboxFilter, context: grpc.ServicerContext) -> list[pb.PodSandbox]:
        state = sandbox_convert.STATE_NAMES.get(f.state.state) if f.HasField("state") else None
        if f.HasField("state") and state is None:
            return []  # a state rktlet does not know (proto3 enums are open) matches nothing
        sandboxes = self._engine.sandboxes.list(f.id, state, dict(f.label_selector))  # snapshots, no hop
        return [sandbox_convert.sandbox_summary(s) for s in sandboxes]

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext) -> pb.ListPodSandboxResponse:
        return pb.ListPodSandboxResponse(items=self._pod_sandboxes(request.filter, context))

    def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamPodSandboxesResponse]:
        items = self._pod_sandboxes(request.filter, context)
        return paged(items, lambda page: pb.StreamPodSandboxesResponse(pod_sandboxes=page))

    # -- containers ------------------------------------------------------------

    def CreateContainer(self, request: pb.CreateContainerRequest, context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        config, log_path = container_convert.container_config(request)
        c = request.config
        container = self._on_reactor(
            context, self._engine.containers.create, request.pod_sandbox_id, config, c.image.image,
            c.metadata.attempt, container_convert.fingerprint(request), dict(c.labels), dict(c.annotations), log_path,
            container_convert.stop_signal(c), c.image.user_specified_image,
        )
        return pb.CreateContainerResponse(container_id=container.id)

    def StartContainer(self, request: pb.StartContainerRequest, context: grpc.ServicerContext) -> pb.StartContainerResponse:
        self._on_reactor(context, self._engine.containers.start, request.container_id)
        return pb.StartContainerResponse()

    def StopContainer(self, request: pb.StopContainerRequest, context: grpc.ServicerContext) -> pb.StopContainerResponse:
        self._on_reactor(context, self._engine.containers.stop, request.container_id, max(request.timeout, 0))
        return pb.StopContainerResponse()

    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext) -> pb.RemoveContainerResponse:
        self._on_reactor(context, self._engine.containers.remove, request.container_id)
        return pb.RemoveContainerResponse()

    def _containers(self, f: pb.ContainerFilter, context: grpc.ServicerContext) -> list[pb.Container]:
        state = container_convert.STATE_NAMES.get(f.state.state) if f.HasField("state") else None
        if f.HasField("state") and state is None:
            return []  # CONTAINER_UNKNOWN or a value rktlet does not know: no container is in it
        selector = dict(f.label_selector)
        containers = self._engine.containers.list(f.id, f.pod_sandbox_id, state, selector)  # snapshots, no hop
        complete = not (f.id or f.pod_sandbox_id or state or selector)
        return self._summaries.summaries(containers, complete)

    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(containers=self._containers(request.filter, context))

    def StreamContainers(
        self, request: pb.StreamContainersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamContainersResponse]:
        items = self._containers(request.filter, context)
        return paged(items, lambda page: pb.StreamContainersResponse(containers=page))

    def GetContainerEvents(self, request: pb.GetEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.ContainerEventResponse]:
        subscription = self._on_reactor(context, self._engine.containers.events.subscribe)
        context.add_callback(subscription.close)
        for event in subscription:
            response = pb.ContainerEventResponse(
                container_id=event.container_id,
                container_event_type=_EVENT_TYPES[event.kind],
                created_at=event.created_at,
                containers_statuses=[container_convert.container_status(c) for c in event.containers],
            )
            if event.sandbox is not None:
                response.pod_sandbox_status.CopyFrom(sandbox_convert.sandbox_status(event.sandbox))
            yield response

    def ContainerStatus(self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        # Served here, from the container's snapshot: no hop to the reactor.
        container = self._engine.containers.status(request.container_id)
        response = pb.ContainerStatusResponse(status=container_convert.container_status(container))
        if request.verbose:
            response.info["info"] = self._engine.containers.verbose_json(container)
        return response

    def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdateContainerResourcesResponse:
        resources = container_convert.resources(request.linux, "linux")
        self._on_reactor(context, self._engine.containers.update_resources, request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: grpc.ServicerContext
    ) -> pb.ReopenContainerLogResponse:
        self._on_reactor(context, self._engine.containers.reopen_log, request.container_id)
        return pb.ReopenContainerLogResponse()

    def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdatePodSandboxResourcesResponse:
        resources = self._on_reactor(
            context, self._engine.containers.linux_resources, container_convert.resources(request.resources)
        )
        self._on_reactor(context, self._engine.sandboxes.update_resources, request.pod_sandbox_id, resources)
        return pb.UpdatePodSandboxResourcesResponse()

    # -- checkpointing: needs CRIU, which rktlet does not drive ------------------

    def CheckpointContainer(self, request: pb.CheckpointContainerRequest, context: grpc.ServicerContext) -> None:
        raise Unimplemented(_NO_CHECKPOINTS.format(rpc="CheckpointContainer"))

    def CheckpointPod(self, request: pb.CheckpointPodRequest, context: grpc.ServicerContext) -> None:
        raise Unimplemented(_NO_CHECKPOINTS.format(rpc="CheckpointPod"))

    def RestorePod(self, request: pb.RestorePodRequest, context: grpc.ServicerContext) -> None:
        raise Unimplemented(_NO_CHECKPOINTS.format(rpc="RestorePod"))

    # -- statistics -----------------------------------------------------------

    def _container_stats(self, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> list[pb.ContainerStats]:
        # Read here, from snapshots: blocking is fine on a worker thread.
        figures = self._engine.stats.container_stats(*args, **kwargs)
        return [stats_convert.container_stats(f) for f in figures]

    def ContainerStats(self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext) -> pb.ContainerStatsResponse:
        [stats] = self._container_stats(context, request.container_id, one=True)
        return pb.ContainerStatsResponse(stats=stats)

    def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListContainerStatsResponse:
        f = request.filter
        return pb.ListContainerStatsResponse(
            stats=self._container_stats(context, f.id, f.pod_sandbox_id, dict(f.label_selector))
        )

    def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamContainerStatsResponse]:
        f = request.filter
        items = self._container_stats(context, f.id, f.pod_sandbox_id, dict(f.label_selector))
        return paged(items, lambda page: pb.StreamContainerStatsResponse(container_stats=page))

    def _pod_figures(self, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> list:
        return self._engine.stats.pod_stats(*args, **kwargs)

    def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: grpc.ServicerContext) -> pb.PodSandboxStatsResponse:
        [figures] = self._pod_figures(context, request.pod_sandbox_id, one=True)
        return pb.PodSandboxStatsResponse(stats=stats_convert.pod_stats(figures))

    def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        figures = self._pod_figures(context, f.id, dict(f.label_selector))
        return pb.ListPodSandboxStatsResponse(stats=[stats_convert.pod_stats(x) for x in figures])

    def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamPodSandboxStatsResponse]:
        f = request.filter
        items = [stats_convert.pod_stats(x) for x in self._pod_figures(context, f.id, dict(f.label_selector))]
        return paged(items, lambda page: pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=page))

    def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: grpc.ServicerContext
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=metrics_convert.DESCRIPTORS)

    def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxMetricsResponse:
        figures = self._on_reactor(context, self._engine.stats.pod_metrics)
        return pb.ListPodSandboxMetricsResponse(pod_metrics=[metrics_convert.pod_metrics(x) for x in figures])

    def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamPodSandboxMetricsResponse]:
        items = [metrics_convert.pod_metrics(x) for x in self._on_reactor(context, self._engine.stats.pod_metrics)]
        return paged(items, lambda page: pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=page))
