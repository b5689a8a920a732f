"""Errors of the gateway: gRPC status -> HTTP status in one place, one JSON error body, never a traceback.

Body of every error (API paths; other paths get a small HTML page with the same message)::

    {"error": {"code": "NOT_FOUND", "http_status": 404, "message": "...", "details": [...], "request_id": "..."}}

``code`` is the gRPC status name (the upstream's, or the one the gateway chose for its own refusals),
``message`` the upstream's message verbatim, ``details`` the google.rpc details of the status
(``BadRequest`` field violations, ``ErrorInfo``...) as JSON objects with their ``@type``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)

GATEWAY_DOMAIN = "posters.web"  # ErrorInfo.domain of refusals made by the gateway itself (upstream: posters.v1)
API_PREFIX = "/api/"
MAX_INPUT_REPR = 80  # characters of an offending value quoted in a message
HTTP_CONTENT_TOO_LARGE = 413

# gRPC status -> HTTP status. Google's canonical mapping (google/rpc/code.proto) except where noted.
HTTP_STATUS_BY_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,  # the gateway's token for posters-serve is missing or wrong
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    # canonical 400; 409 here: the request is fine but the serving bundle cannot answer it (image search on
    # precomputed vectors), so a client can tell "fix your request" from "not with this bundle"
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    # upstream size limits (pixels, bytes) and busy slots alike; the gateway's own upload cap, checked before
    # the body is read, answers 413 with the same code
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # canonical 499 (client closed request); but the HTTP client is still waiting: the server stopped the work
    # (shutting down), so 503 like UNAVAILABLE: retry, perhaps elsewhere
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}
# HTTP status of the gateway's own refusals (routing, parsing) -> the code named in the body
GRPC_BY_HTTP_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# google.rpc detail types forwarded to clients; anything else (DebugInfo carries stack traces) is named, not shown
FORWARDED_DETAILS = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def http_status_for(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_GRPC.get(code, 500)


def grpc_code_for_http(status: int) -> grpc.StatusCode:
    if status in GRPC_BY_HTTP_STATUS:
        return GRPC_BY_HTTP_STATUS[status]
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


class GatewayError(Exception):
    """A refusal by the gateway itself (bad base64, bad options JSON, a missing report...), as a gRPC code."""

    def __init__(
        self, code: grpc.StatusCode, message: str, violations: Sequence[Violation] = (), http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.violations = tuple(violations)
        self.http_status = http_status or http_status_for(code)


class BodyTooLarge(HTTPException):
    """A request body over the gateway's cap (raised while the body streams in; an HTTPException so that
    FastAPI's body parsing passes it through instead of calling it a parse error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(HTTP_CONTENT_TOO_LARGE, too_large_message(limit))


def too_large_message(limit: int, got: int | None = None) -> str:
    got_text = f"{got} bytes" if got is not None else "more"
    return f"request body expected at most {limit} bytes, got {got_text}"


def detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    """One google.rpc detail as JSON (proto field names) with its ``@type``; unknown types by name only."""
    for cls in FORWARDED_DETAILS:
        if detail.Is(cls.DESCRIPTOR):
            message = cls()
            detail.Unpack(message)
            return {"@type": detail.type_url, **MessageToDict(message, preserving_proto_field_name=True)}
    return {"@type": detail.type_url}


def details_json(details: Iterable[any_pb2.Any]) -> list[dict[str, Any]]:
    return [detail_json(d) for d in details]


def rpc_error_details(exc: grpc.RpcError) -> list[dict[str, Any]]:
    """The structured details a failed call carried (grpc-status-details-bin), or none."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError as bad:  # trailer code/message disagreeing with the call's: keep the message only
        log.warning("ignored inconsistent status details: %s", bad)
        return []
    return details_json(status.details) if status is not None else []


def gateway_details(code: grpc.StatusCode, violations: Sequence[Violation]) -> list[dict[str, Any]]:
    """The details of a gateway refusal, shaped as the upstream's: ErrorInfo, and BadRequest for fields."""
    out = details_json([_packed(error_details_pb2.ErrorInfo(reason=code.name, domain=GATEWAY_DOMAIN))])
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        out.extend(details_json([_packed(bad)]))
    return out


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_payload(
    code: grpc.StatusCode, http_status: int, message: str, details: list[dict[str, Any]], request_id: str
) -> dict[str, Any]:
    return {
        "error": {
            "code": code.name,
            "http_status": http_status,
            "message": message,
            "details": details,
            "request_id": request_id,
        }
    }


def violations_from_pydantic(errors: Sequence[Any], prefix: str = "") -> list[Violation]:
    """Pydantic/FastAPI validation errors as field violations: ``options.k: expected ...; got 'x'``."""
    out: list[Violation] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        field = ".".join(filter(None, [prefix, *loc])) or "request"
        kind = err.get("type", "")
        text = str(err.get("msg", "invalid value")).replace("Input should be ", "expected ", 1)
        if kind == "missing":
            text = "expected a value, got none"
        elif kind == "extra_forbidden":
            text = "expected one of the documented fields, got an unknown field"
        if "input" in err and kind not in ("missing", "extra_forbidden"):
            shown = repr(err["input"])
            if len(shown) > MAX_INPUT_REPR:
                shown = shown[:MAX_INPUT_REPR] + "..."
            text = f"{text}; got {shown}"
        out.append(Violation(field, f"{field}: {text}"))
    return out


def violations_message(violations: Sequence[Violation]) -> str:
    if not violations:
        return "invalid request"
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return violations[0].description + more


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def wants_json(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == "/openapi.json"


def render_error(
    request: Request,
    code: grpc.StatusCode,
    http_status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error as JSON on API paths, as a small escaped HTML page elsewhere."""
    request_id = request_id_of(request)
    if wants_json(request.url.path):
        return JSONResponse(
            error_payload(code, http_status, message, details or [], request_id), http_status, headers=headers
        )
    return HTMLResponse(error_page(code.name, http_status, message, request_id), http_status, headers=headers)


def error_page(code: str, http_status: int, message: str, request_id: str) -> str:
    """A page naming the error; every value escaped."""
    esc = html.escape
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{http_status} {esc(code)}</title><link rel=stylesheet href=/static/style.css></head>"
        f"<body class=error-page><main><h1>{http_status} {esc(code)}</h1><p class=message>{esc(message)}</p>"
        f"<p class=muted>request id {esc(request_id)}</p><p><a href=/>Back to the posters</a></p></main></body></html>"
    )


def internal_message(request_id: str) -> str:
    return f"internal error in the gateway (request id {request_id}); the details are in its log"


# ---- handlers (registered by server.web.app) ---------------------------------------------------------------------


async def handle_rpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, grpc.RpcError)
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    status = http_status_for(code)
    if status >= 500:
        log.warning("upstream %s: %s", code.name, message, extra={"request_id": request_id_of(request)})
    return render_error(request, code, status, message or code.name, rpc_error_details(exc))


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return render_error(request, exc.code, exc.http_status, str(exc), gateway_details(exc.code, exc.violations))


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if hasattr(exc, "errors") else []
    violations = violations_from_pydantic(errors)
    code = grpc.StatusCode.INVALID_ARGUMENT
    return render_error(request, code, 400, violations_message(violations), gateway_details(code, violations))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = grpc_code_for_http(exc.status_code)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such page or endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.url.path} does not accept {request.method}"
    return render_error(request, code, exc.status_code, message, gateway_details(code, ()), headers=exc.headers)
