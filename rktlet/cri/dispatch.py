"""Registers every RPC of a CRI service with one uniform wrapper.

Each RPC of the service descriptor gets a handler that

* calls the implementation's method of the same name, or answers
  ``UNIMPLEMENTED`` naming the RPC when there is none yet;
* turns domain errors into their status code (``status.py``) and any other
  exception into ``INTERNAL`` with the error logged — never ``UNKNOWN``,
  never a traceback to the caller;
* logs one debug line per call: method, key ids, duration, status code;
* reports each call's duration and status code to the metrics, when the
  daemon has them (``--metrics-address``; :mod:`rktlet.metrics.rpc`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from twisted.python.failure import Failure

from rktlet import logs
from rktlet.cri.status import code_for
from rktlet.errors import Unimplemented

log = logs.logger("rktlet.cri")

# Request fields worth naming in the per-call log line, in this order.
# (request field, log event field)
_ID_FIELDS = (("pod_sandbox_id", "pod_id"), ("container_id", "container_id"))


def request_id_fields(request: Message) -> dict[str, str]:
    """The key ids of a request as log event fields (``pod_id``,
    ``container_id``, ``image``, ``name``), those it has."""
    fields = {}
    for name, key in _ID_FIELDS:
        value = getattr(request, name, "")
        if value:
            fields[key] = value
    image = getattr(request, "image", None)
    if isinstance(image, Message) and getattr(image, "image", ""):
        fields["image"] = image.image
    config = getattr(request, "config", None)
    metadata = getattr(config, "metadata", None) if isinstance(config, Message) else None
    if metadata is not None and getattr(metadata, "name", ""):
        fields["name"] = metadata.name
    return fields


def request_ids(request: Message) -> str:
    """The key ids of a request for the log line (``pod_sandbox_id=…`` etc.)."""
    names = {key: name for name, key in _ID_FIELDS}
    return " ".join(f"{names.get(k, k)}={v}" for k, v in request_id_fields(request).items())


class _CallLog:
    """Times one call, maps its failure to a status, logs it and reports it
    to *metrics* (``observe(method, code, seconds)``) when there are any."""

    def __init__(self, method: str, request: Message, metrics: Any = None) -> None:
        self.method = method
        self.request = request
        self.metrics = metrics
        self.started = time.monotonic()
        self.code = grpc.StatusCode.OK

    def fail(self, error: BaseException, context: grpc.ServicerContext) -> None:
        code = code_for(error)
        if code is None:
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in {self.method}: {type(error).__name__}: {error}"
            log.failure("{method} failed unexpectedly", failure=Failure(error), method=self.method,
                        **request_id_fields(self.request))
        else:
            message = str(error) or f"{self.method}: {type(error).__name__}"
            # An error the engine logged where it happened (with its ids
            # and the program's own message) is not logged twice.
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE) and not logs.was_logged(error):
                log.error("{method} failed: {error}", method=self.method, error=message, code=code.name,
                          **request_id_fields(self.request))
        self.code = code
        context.abort(code, message)  # raises

    def done(self) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.method, self.code.name, time.monotonic() - self.started)
        if not logs.debug_enabled():
            return  # every call ends here: build nothing that is not written
        log.debug(
            "{method} {ids} {duration_ms:.1f}ms {code}",
            method=self.method,
            ids=request_ids(self.request),
            duration_ms=(time.monotonic() - self.started) * 1000,
            code=self.code.name,
            **request_id_fields(self.request),
        )


def _unimplemented(full_name: str) -> Callable[..., Any]:
    def rpc(request: Message, context: grpc.ServicerContext) -> Any:
        raise Unimplemented(f"rktlet does not implement {full_name} yet")

    return rpc


def _unary_handler(full_name: str, impl: Callable[..., Any], metrics: Any = None) -> Callable[..., Any]:
    def handle(request: Message, context: grpc.ServicerContext) -> Any:
        call = _CallLog(full_name, request, metrics)
        try:
            return impl(request, context)
        except Exception as e:
            call.fail(e, context)
        finally:
            call.done()

    return handle


def _stream_handler(full_name: str, impl: Callable[..., Any], metrics: Any = None) -> Callable[..., Iterator[Any]]:
    def handle(request: Message, context: grpc.ServicerContext) -> Iterator[Any]:
        call = _CallLog(full_name, request, metrics)
        try:
            yield from impl(request, context)
        except Exception as e:
            call.fail(e, context)
        finally:
            call.done()

    return handle


def method_full_name(method: MethodDescriptor) -> str:
    """``runtime.v1.RuntimeService/Version`` for a method descriptor."""
    return f"{method.containing_service.full_name}/{method.name}"


def generic_handler(
    service: ServiceDescriptor, implementation: object, messages: Any, metrics: Any = None
) -> grpc.GenericRpcHandler:
    """A gRPC handler serving every RPC of *service* from *implementation*.

    :param implementation: an object with a method per implemented RPC,
        named as in the proto (``Version(request, context)``); streaming
        RPCs return an iterator of responses.
    :param messages: the generated messages module (``api_pb2``).
    :param metrics: where each call's duration and status code are
        reported (:class:`rktlet.metrics.rpc.RpcMetrics`), or ``None``.
    """
    handlers = {}
    for method in service.methods:
        full_name = method_full_name(method)
        impl = getattr(implementation, method.name, None) or _unimplemented(full_name)
        request_cls = getattr(messages, method.input_type.name)
        response_cls = getattr(messages, method.output_type.name)
        if method.server_streaming:
            factory = grpc.unary_stream_rpc_method_handler
            behaviour = _stream_handler(full_name, impl, metrics)
        else:
            factory = grpc.unary_unary_rpc_method_handler
            behaviour = _unary_handler(full_name, impl, metrics)
        handlers[method.name] = factory(
            behaviour,
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
