"""One interceptor for the service's methods: request ids, bearer-token auth, admission
control, domain error -> status mapping (the one place it happens), metrics, access log."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from server.admission import Admission
from server.errors import SearchError, Unauthenticated
from server.metrics import Metrics
from server.status import status_for, status_proto

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"
AUTH_SCHEME = "bearer"  # compared case-insensitively (RFC 7235)
MAX_REQUEST_ID_CHARS = 64


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class ServiceInterceptor(grpc.ServerInterceptor):
    """Wraps the unary methods under ``/<service>/``; other services (health, reflection) pass through."""

    def __init__(
        self,
        service_name: str,
        token: str | None = None,
        metrics: Metrics | None = None,
        access_log: bool = False,
        admission: Admission | None = None,
    ) -> None:
        if token is not None and not token.strip():
            raise ValueError("token expected a non-empty string (an empty token would turn auth off)")
        self._prefix = f"/{service_name}/"
        self._token = token.strip().encode() if token else None
        self._metrics = metrics
        self._access_log = access_log
        self._admission = admission
        self._wrapped: dict[str, Any] = {}  # method -> wrapped handler (handlers are static per method)

    def _check_auth(self, metadata: Sequence[tuple[str, Any]]) -> None:
        if self._token is None:
            return
        values = [v for k, v in metadata if k == AUTHORIZATION_KEY]
        if len(values) > 1:
            raise Unauthenticated(f"expected one authorization header, got {len(values)}")
        given = values[0] if values and isinstance(values[0], str) else ""
        scheme, _, credentials = given.strip().partition(" ")
        if scheme.lower() != AUTH_SCHEME:
            raise Unauthenticated(
                "authorization metadata expected 'Bearer <token>'; got "
                + ("none" if not given else f"scheme {scheme[:20]!r}")
            )
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise Unauthenticated("authorization metadata expected the server's bearer token; got a different token")

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.startswith(self._prefix):
            return handler
        wrapped = self._wrap(details.method[len(self._prefix) :], handler)
        self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = tuple(context.invocation_metadata() or ())
            request_id = next((v for k, v in metadata if k == REQUEST_ID_KEY and isinstance(v, str)), "")[
                :MAX_REQUEST_ID_CHARS
            ]
            if request_id:  # echo the client's id; otherwise one is made only when something is logged
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            code = grpc.StatusCode.OK
            try:
                self._check_auth(metadata)
                with self._admission.admit(method) if self._admission else contextlib.nullcontext():
                    return inner(request, context)
            except SearchError as exc:
                code = status_for(exc)
                if code is grpc.StatusCode.UNAVAILABLE:
                    request_id = request_id or _new_request_id()
                    log.warning("%s unavailable: %s", method, exc, extra={"request_id": request_id})
                context.abort_with_status(rpc_status.to_status(status_proto(exc, code)))
            except Exception:
                code = grpc.StatusCode.INTERNAL
                request_id = request_id or _new_request_id()
                log.exception("%s failed", method, extra={"request_id": request_id})
                context.abort(code, f"internal error (request id {request_id})")
            finally:
                elapsed = time.perf_counter() - started
                if self._metrics is not None:
                    self._metrics.observe(method, code.name, elapsed)
                if self._access_log:
                    request_id = request_id or _new_request_id()
                    log.info(
                        "%s %s %.2fms",
                        method,
                        code.name,
                        elapsed * 1000,
                        extra={
                            "request_id": request_id,
                            "method": method,
                            "code": code.name,
                            "ms": round(elapsed * 1000, 3),
                        },
                    )

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
