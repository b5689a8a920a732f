"""The gateway's outer layer (pure ASGI): request ids, the Host check, the body-size cap before the body is
read, security headers on every response, and unexpected exceptions turned into a 500 without a traceback."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable

import grpc
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.web.errors import (
    HTTP_CONTENT_TOO_LARGE,
    BodyTooLarge,
    error_page,
    error_payload,
    gateway_details,
    internal_message,
    too_large_message,
    wants_json,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's id is kept only if it looks like one
REQUEST_ID_CHARS = 16
# Everything the pages need comes from this origin; uploads are previewed from blob: URLs, thumbnails may be
# data: URLs; no inline script or style, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "geolocation=(), microphone=(), payment=(), usb=()"),
)


def new_request_id(headers: Headers) -> str:
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if REQUEST_ID_PATTERN.match(given) else uuid.uuid4().hex[:REQUEST_ID_CHARS]


def host_name(host_header: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:8080`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class GatewayMiddleware:
    """See the module docstring. ``limit_for(path)`` is the body cap of a path in bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit_for = limit_for
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = new_request_id(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in out:
                        out[name] = value
                out[REQUEST_ID_HEADER] = request_id
            await send(message)

        async def refuse(code: grpc.StatusCode, status: int, message: str) -> None:
            await _respond(send_with_headers, path, code, status, message, request_id)

        host = host_name(headers.get("host", "")).lower()
        if self.allowed_hosts and host not in self.allowed_hosts:
            await refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                400,
                f"Host header expected one of {sorted(self.allowed_hosts)}, got {host[:64]!r}",
            )
            return
        limit = self.limit_for(path)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await refuse(
                    grpc.StatusCode.INVALID_ARGUMENT, 400, f"Content-Length expected digits, got {declared[:32]!r}"
                )
                return
            if int(declared) > limit:  # before a byte of the body is read
                await refuse(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, HTTP_CONTENT_TOO_LARGE, too_large_message(limit, int(declared))
                )
                return
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body without Content-Length, or one longer than declared
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_capped, send_with_headers)
        except BodyTooLarge:  # raised outside a route (a route's is answered by the HTTPException handler)
            if not started:
                await refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, HTTP_CONTENT_TOO_LARGE, too_large_message(limit))
        except Exception:  # the last line of defence: log it, answer 500 without a traceback
            log.exception("%s %s failed", scope.get("method"), path, extra={"request_id": request_id})
            if not started:
                await refuse(grpc.StatusCode.INTERNAL, 500, internal_message(request_id))


async def _respond(send: Send, path: str, code: grpc.StatusCode, status: int, message: str, request_id: str) -> None:
    if wants_json(path):
        details = gateway_details(code, ())
        body = json.dumps(error_payload(code, status, message, details, request_id)).encode()
        content_type = b"application/json"
    else:
        body = error_page(code.name, status, message, request_id).encode()
        content_type = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
