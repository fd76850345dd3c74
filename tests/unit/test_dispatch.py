"""Every RPC is registered; errors map to codes; unbuilt RPCs say UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import pytest

from rktlet import errors
from rktlet.cri import dispatch
from rktlet.cri.proto import RUNTIME_SERVICE, SERVICES, pb
from rktlet.cri.status import CODES, code_for


class Aborted(Exception):
    pass


class FakeContext:
    """The part of ``grpc.ServicerContext`` the dispatcher uses."""

    def __init__(self):
        self.code = None
        self.details = None

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted()

    def time_remaining(self):
        return None


def handler_for(service, implementation, name):
    generic = dispatch.generic_handler(service, implementation, pb)

    class Details(grpc.HandlerCallDetails):
        method = f"/{service.full_name}/{name}"
        invocation_metadata = ()

    return generic.service(Details())


def call(service, implementation, name, request=None):
    method = service.methods_by_name[name]
    handler = handler_for(service, implementation, name)
    request = request or getattr(pb, method.input_type.name)()
    context = FakeContext()
    try:
        if method.server_streaming:
            result = list(handler.unary_stream(request, context))
        else:
            result = handler.unary_unary(request, context)
    except Aborted:
        return None, context
    return result, context


def test_the_contract_has_43_rpcs():
    assert [len(s.methods) for s in SERVICES] == [37, 6]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_rpc_answers_unimplemented_naming_itself(service):
    for method in service.methods:
        _, context = call(service, object(), method.name)
        assert context.code == grpc.StatusCode.UNIMPLEMENTED
        assert f"{service.full_name}/{method.name}" in context.details


def test_implemented_rpc_is_called():
    class Impl:
        def Version(self, request, context):
            return pb.VersionResponse(runtime_name="x")

    result, context = call(RUNTIME_SERVICE, Impl(), "Version")
    assert result.runtime_name == "x" and context.code is None


def test_streaming_rpc_yields():
    class Impl:
        def StreamContainers(self, request, context):
            yield pb.StreamContainersResponse()
            yield pb.StreamContainersResponse()

    result, _ = call(RUNTIME_SERVICE, Impl(), "StreamContainers")
    assert len(result) == 2


@pytest.mark.parametrize("error_cls,code", list(CODES.items()))
def test_domain_errors_map_to_their_code(error_cls, code):
    class Impl:
        def ContainerStatus(self, request, context):
            raise error_cls("container c1: something")

    _, context = call(RUNTIME_SERVICE, Impl(), "ContainerStatus")
    assert context.code == code
    assert context.details == "container c1: something"


def test_unexpected_exception_is_internal_not_unknown():
    class Impl:
        def ContainerStatus(self, request, context):
            raise KeyError("boom")

    _, context = call(RUNTIME_SERVICE, Impl(), "ContainerStatus")
    assert context.code == grpc.StatusCode.INTERNAL
    assert "ContainerStatus" in context.details and "KeyError" in context.details
    assert "Traceback" not in context.details


def test_code_for_uses_the_class_hierarchy():
    class Special(errors.NotFound):
        pass

    assert code_for(Special("x")) == grpc.StatusCode.NOT_FOUND
    assert code_for(ValueError("x")) is None


def test_request_ids_names_key_fields():
    request = pb.CreateContainerRequest(
        pod_sandbox_id="p1", config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="web"))
    )
    assert dispatch.request_ids(request) == "pod_sandbox_id=p1 name=web"
    assert dispatch.request_ids(pb.PullImageRequest(image=pb.ImageSpec(image="busybox"))) == "image=busybox"
    assert dispatch.request_ids(pb.VersionRequest()) == ""


def test_request_id_fields_for_structured_logs():
    request = pb.StartContainerRequest(container_id="c1")
    assert dispatch.request_id_fields(request) == {"container_id": "c1"}
    request = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="web")))
    assert dispatch.request_id_fields(request) == {"name": "web"}
    assert dispatch.request_id_fields(pb.StopPodSandboxRequest(pod_sandbox_id="p1")) == {"pod_id": "p1"}


def test_a_failure_the_engine_logged_is_not_logged_again():
    from twisted.logger import globalLogPublisher

    from rktlet import logs

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for marked in (False, True):
            class Impl:
                def StartContainer(self, request, context):
                    error = errors.RuntimeFailure("runc start c1: exit status 1")
                    raise logs.mark_logged(error) if marked else error

            seen.clear()
            _, context = call(RUNTIME_SERVICE, Impl(), "StartContainer", pb.StartContainerRequest(container_id="c1"))
            assert context.code == grpc.StatusCode.INTERNAL
            failed = [e for e in seen if e.get("log_namespace") == "rktlet.cri" and e["log_level"].name == "error"]
            if marked:
                assert failed == []
            else:
                [event] = failed
                assert (event["container_id"], event["error"]) == ("c1", "runc start c1: exit status 1")
    finally:
        globalLogPublisher.removeObserver(seen.append)
