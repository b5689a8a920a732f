"""Domain errors -> gRPC status codes and google.rpc.Status with details: the one place that mapping lives.

Every error status carries, besides its message, ``google.rpc.ErrorInfo`` (reason = the status code
name, domain ``posters.v1``) and, for INVALID_ARGUMENT with a known field, ``google.rpc.BadRequest``
with a field violation; clients read them from the ``grpc-status-details-bin`` trailer
(``grpc_status.rpc_status.from_call`` in Python, ``@grpc/grpc-js`` metadata in Node.js).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from server.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SearchError,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "posters.v1"
STATUS_BY_ERROR: dict[type[SearchError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Cancelled: grpc.StatusCode.CANCELLED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: SearchError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_proto(exc: SearchError, code: grpc.StatusCode | None = None) -> status_pb2.Status:
    """The google.rpc.Status for a domain error: code, message, ErrorInfo, and BadRequest for a field."""
    code = code or status_for(exc)
    details = [_packed(error_details_pb2.ErrorInfo(reason=code.name, domain=ERROR_DOMAIN))]
    if code is grpc.StatusCode.INVALID_ARGUMENT and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=str(exc))
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    return status_pb2.Status(code=code.value[0], message=str(exc), details=details)
