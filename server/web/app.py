"""``create_app(config) -> FastAPI``: the REST API, the pages and their static files, errors, middleware."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from server.client import PosterClient
from server.web import api
from server.web.config import GRPC_MESSAGE_SLACK_BYTES, MULTIPART_SLACK_BYTES, WebConfig
from server.web.errors import (
    GatewayError,
    handle_gateway_error,
    handle_http_exception,
    handle_rpc_error,
    handle_validation_error,
)
from server.web.middleware import GatewayMiddleware
from server.web.models import INT64_MAX, INT64_MIN
from server.web.quality import QualityReports

log = logging.getLogger(__name__)

TITLE = "Poster similarity: REST gateway"
VERSION = "1.0.0"
DESCRIPTION = (
    "REST/JSON in front of posters-serve (gRPC, `posters.v1.PosterSimilarity`): one endpoint per RPC with the "
    'same fields and the same validation. Errors: `{"error": {"code", "http_status", "message", '
    '"details", "request_id"}}` with the gRPC status name, the server\'s message and its google.rpc details; '
    "INVALID_ARGUMENT 400, UNAUTHENTICATED 401, NOT_FOUND 404, FAILED_PRECONDITION 409, RESOURCE_EXHAUSTED 429 "
    "(413 for the gateway's upload cap), INTERNAL 500, UNIMPLEMENTED 501, UNAVAILABLE and CANCELLED 503, "
    "DEADLINE_EXCEEDED 504."
)
STATIC_PACKAGE = "server.web"
STATIC_FOLDER = "static"
# Served by these fixed names only (never a path from the request).
STATIC_FILES: dict[str, str] = {
    "style.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "browse.js": "text/javascript; charset=utf-8",
    "quality.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGES = {"/": "index.html", "/quality": "quality.html", "/docs": "docs.html"}
STATIC_CACHE = "no-cache"  # revalidate: a new version of the page is picked up at once


def _read_static(name: str) -> bytes:
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER, name).read_bytes()


def body_limit(config: WebConfig) -> Any:
    """Body cap by path: image uploads get the image cap plus multipart framing, everything else the JSON cap."""
    image_limit = config.max_image_bytes + MULTIPART_SLACK_BYTES

    def limit_for(path: str) -> int:
        return image_limit if path == api.IMAGE_PATH else config.max_json_bytes

    return limit_for


def make_client(config: WebConfig) -> PosterClient:
    up = config.upstream
    return PosterClient(
        up.target,
        token=up.token,
        tls_ca=up.tls_ca,
        client_cert=up.tls_cert,
        client_key=up.tls_key,
        timeout=up.timeout,
        server_name=up.tls_server_name,
        max_message_bytes=max(config.max_image_bytes, config.max_json_bytes) + GRPC_MESSAGE_SLACK_BYTES,
    )


def _exact_bounds(node: Any) -> None:
    """FastAPI writes integer bounds as floats: 2^63 - 1 becomes 9.223372036854776e18 (= 2^63). Put the int64
    limits back exactly, so that a generator reading the document does not send 2^63."""
    if isinstance(node, dict):
        for key in ("maximum", "minimum"):
            value = node.get(key)
            if isinstance(value, float) and abs(value) >= float(INT64_MAX):
                node[key] = INT64_MAX if value > 0 else INT64_MIN
        for child in node.values():
            _exact_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_bounds(child)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document without FastAPI's 422: validation errors are 400 with the error body here."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _exact_bounds(schema)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(config: WebConfig, client: PosterClient | None = None) -> FastAPI:
    """The gateway app; ``client`` (tests) replaces the one made from ``config.upstream`` (closed at shutdown)."""
    config.validate()
    own_client = client is None
    upstream = client if client is not None else make_client(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own_client:
            upstream.close()

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's Swagger UI loads scripts from a CDN: /docs is our own page (CSP 'self')
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationId = the route function's name
    )
    app.state.config = config
    app.state.client = upstream
    app.state.quality = QualityReports(config.quality_dir)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    app.add_exception_handler(grpc.RpcError, handle_rpc_error)
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.include_router(api.router)
    _add_pages(app)

    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-request-id"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(GatewayMiddleware, limit_for=body_limit(config), allowed_hosts=config.allowed_hosts)
    return app


def _add_pages(app: FastAPI) -> None:
    pages = {path: _read_static(name) for path, name in PAGES.items()}
    static = {name: _read_static(name) for name in STATIC_FILES}

    def page_route(body: bytes) -> Any:
        def route() -> HTMLResponse:
            return HTMLResponse(body, headers={"cache-control": STATIC_CACHE})

        return route

    for path, body in pages.items():
        app.add_api_route(path, page_route(body), methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str, request: Request) -> Response:
        if name not in static:
            raise HTTPException(404, f"no static file named {name[:64]!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers={"cache-control": STATIC_CACHE})
