"""The one table that maps rktlet's domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from rktlet import errors

CODES: dict[type[errors.RktletError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DigestMismatch: grpc.StatusCode.DATA_LOSS,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.RuntimeFailure: grpc.StatusCode.INTERNAL,
    errors.StartupError: grpc.StatusCode.INTERNAL,
}


def code_for(error: BaseException) -> grpc.StatusCode | None:
    """The status code for a domain error, or ``None`` for anything else
    (an unexpected exception: a bug, reported as INTERNAL and logged)."""
    for cls in type(error).__mro__:
        code = CODES.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return None
