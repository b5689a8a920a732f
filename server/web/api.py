"""REST/JSON routes mirroring the RPCs of posters.v1.PosterSimilarity, over ``server.client.PosterClient``.

Each route converts JSON to the client's domain types, makes one call and converts the answer back; a
failed call raises ``grpc.RpcError``, which ``server.web.errors`` turns into the HTTP status and the JSON
error body. Routes are plain functions (run in the threadpool: the gRPC client blocks).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError

from server.client import PosterClient
from server.client.api import LocatedResult
from server.types import ImageQuery, ItemQuery, ItemsQuery, VectorQuery
from server.types import Query as DomainQuery
from server.web.errors import GatewayError, Violation, details_json, http_status_for, violations_from_pydantic
from server.web.models import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    MAX_TEXT_CHARS,
    BatchIn,
    BatchOut,
    ErrorBody,
    FindOut,
    HealthOut,
    ImageMode,
    InfoOut,
    ItemOut,
    ItemSearchIn,
    ItemsOut,
    ItemsSearchIn,
    PosterOut,
    PostersOut,
    QualityChartOut,
    QualityOut,
    QualitySectionOut,
    SearchOptionsIn,
    SearchOut,
    StatusOut,
    VectorSearchIn,
)
from server.web.quality import HOW_TO, QualityReports

API_PREFIX = "/api/v1"
IMAGE_PATH = f"{API_PREFIX}/search/image"
IMAGE_SEARCH_HEALTH = "posters.v1.PosterSimilarity.SearchByImage"
THUMBNAIL_CACHE = "private, max-age=300"
QUALITY_FILE_NAME = r"^[a-z0-9_]{1,64}\.(png|md)$"
MEDIA_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}

_ERROR_STATUSES = {
    400: "invalid request (INVALID_ARGUMENT): the message names the field",
    401: "posters-serve refused the gateway's token (UNAUTHENTICATED)",
    404: "unknown id or endpoint (NOT_FOUND)",
    409: "the serving bundle cannot answer this kind of query (FAILED_PRECONDITION)",
    413: "request body over the gateway's cap (RESOURCE_EXHAUSTED), refused before it is read",
    429: "over a server limit, or every slot busy (RESOURCE_EXHAUSTED): retry with backoff",
    500: "internal error, with a request id",
    501: "posters-serve does not implement this call (UNIMPLEMENTED)",
    503: "posters-serve unreachable, loading or shutting down (UNAVAILABLE, CANCELLED)",
    504: "the call's deadline passed (DEADLINE_EXCEEDED)",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERROR_STATUSES.items()
}

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


def client_of(request: Request) -> PosterClient:
    client: PosterClient = request.app.state.client
    return client


Client = Annotated[PosterClient, Depends(client_of)]
Ids = Annotated[
    list[int],
    Query(description="item ids (repeat the parameter: ?ids=1&ids=2)", min_length=1),
]


def _check_ids(ids: list[int], field: str) -> None:
    bad = [(n, i) for n, i in enumerate(ids) if not INT64_MIN <= i <= INT64_MAX]
    if bad:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}.{bad[0][0]}: expected an int64 id, got {bad[0][1]}",
            [Violation(f"{field}.{n}", f"{field}.{n}: expected an int64 id, got {i}") for n, i in bad],
        )


def _unlocated(result: Any) -> SearchOut:
    return SearchOut.of(LocatedResult(result, ()))


@router.get("/info", response_model=InfoOut, summary="GetIndexInfo: the serving bundle, limits and reload state")
def info(request: Request, client: Client) -> InfoOut:
    raw = client.info()
    fields = {name: raw[name] for name in InfoOut.model_fields if name in raw}
    fields["genres"] = list(raw.get("genres", ()))
    fields["gateway_max_image_bytes"] = request.app.state.config.max_image_bytes
    return InfoOut(**fields)


@router.get("/health", response_model=HealthOut, summary="posters-serve's health (503 when unreachable)")
def health(client: Client) -> HealthOut:
    status = client.health()
    try:
        image_search = client.health(IMAGE_SEARCH_HEALTH)
    except grpc.RpcError as exc:  # a server without per-service health for image search
        if exc.code() is not grpc.StatusCode.NOT_FOUND:
            raise
        image_search = "UNKNOWN"
    return HealthOut(status=status, image_search=image_search)


@router.post("/search/item", response_model=SearchOut, summary="SimilarToItem: posters most like one item")
def search_item(body: ItemSearchIn, client: Client) -> SearchOut:
    return _unlocated(client.similar(body.item_id, body.options.to_domain()))


@router.post(
    "/search/items",
    response_model=SearchOut,
    summary="SimilarToItems: more like these, less like those (weighted)",
)
def search_items(body: ItemsSearchIn, client: Client) -> SearchOut:
    positive, negative = body.weighted()
    return _unlocated(client.like(positive, negative, body.options.to_domain()))


@router.post("/search/vector", response_model=SearchOut, summary="SearchByVector: posters nearest an embedding")
def search_vector(body: VectorSearchIn, client: Client) -> SearchOut:
    return _unlocated(client.vector(body.vector, body.options.to_domain()))


def _options_from_form(text: str) -> SearchOptionsIn:
    try:
        return SearchOptionsIn.model_validate_json(text or "{}")
    except ValidationError as exc:
        violations = violations_from_pydantic(exc.errors(), prefix="options")
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, violations[0].description, violations) from None


@router.post(
    "/search/image",
    response_model=SearchOut,
    summary="SearchByImage: posters nearest an uploaded image (multipart/form-data)",
)
def search_image(
    client: Client,
    image: Annotated[UploadFile, File(description="the image file (JPEG, PNG, WebP...); at most the upload cap")],
    mode: Annotated[ImageMode, Form(description="whole, locate or auto (default)")] = "auto",
    options: Annotated[str, Form(description='SearchOptions as a JSON object, e.g. {"k": 12}')] = "{}",
) -> SearchOut:
    search_options = _options_from_form(options).to_domain()
    data = image.file.read()  # the body was capped by the middleware before it was read
    return SearchOut.of(client.image_located(data, search_options, mode))


def _decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        message = f"{field}: expected standard base64, got {len(text)} characters that are not"
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, [Violation(field, message)]) from None


def _domain_queries(body: BatchIn) -> tuple[list[DomainQuery], dict[int, str]]:
    queries: list[DomainQuery] = []
    modes: dict[int, str] = {}
    for n, q in enumerate(body.queries):
        if q.item is not None:
            queries.append(ItemQuery(q.item.item_id, q.item.options.to_domain()))
        elif q.items is not None:
            positive, negative = q.items.weighted()
            queries.append(ItemsQuery(positive, negative, q.items.options.to_domain()))
        elif q.vector is not None:
            queries.append(VectorQuery(tuple(q.vector.vector), q.vector.options.to_domain()))
        elif q.image is not None:
            data = _decode_base64(q.image.image_base64, f"queries.{n}.image.image_base64")
            queries.append(ImageQuery(data, q.image.options.to_domain()))
            modes[n] = q.image.mode
    return queries, modes


@router.post(
    "/search/batch",
    response_model=BatchOut,
    summary="BatchSearch: many queries of any kind; a failed query does not fail the call",
)
def search_batch(body: BatchIn, client: Client) -> BatchOut:
    queries, modes = _domain_queries(body)
    outcome = client.batch_outcome(queries, modes)
    return BatchOut(
        results=[SearchOut.of(r) for r in outcome.results],
        statuses=[
            StatusOut(
                code=s.code.name,
                http_status=http_status_for(s.code),
                message=s.message,
                details=details_json(s.details),
            )
            for s in outcome.statuses
        ],
        bundle_version=outcome.bundle_version,
    )


@router.get("/find", response_model=FindOut, summary="FindItems: items by title words (typos tolerated)")
def find(
    client: Client,
    q: Annotated[str, Query(description="words of the title, e.g. 'star quest 1999'", max_length=MAX_TEXT_CHARS)],
    limit: Annotated[int, Query(ge=INT32_MIN, le=INT32_MAX, description="at most this many; 0: 20")] = 0,
    page_size: Annotated[int, Query(ge=INT32_MIN, le=INT32_MAX, description="items per page; 0: limit")] = 0,
    page_token: Annotated[str, Query(description="next_page_token of the previous page", max_length=1024)] = "",
) -> FindOut:
    page = client.find_page(q, page_size=page_size, page_token=page_token, limit=limit)
    return FindOut(
        items=[ItemOut.of(i) for i in page.items],
        total=page.total,
        next_page_token=page.next_page_token,
        bundle_version=page.bundle_version,
    )


@router.get("/items", response_model=ItemsOut, summary="GetItems: items by id, in request order")
def items(
    client: Client,
    ids: Ids,
    strict: Annotated[bool, Query(description="unknown ids are NOT_FOUND instead of missing_ids")] = False,
) -> ItemsOut:
    _check_ids(ids, "ids")
    return ItemsOut.of(client.get_items(ids, strict=strict))


@router.get("/posters", response_model=PostersOut, summary="GetPosters: thumbnails by id, as base64 JSON")
def posters(client: Client, ids: Ids) -> PostersOut:
    _check_ids(ids, "ids")
    result = client.posters(ids)
    return PostersOut(
        posters=[
            PosterOut(item_id=p.item_id, width=p.width, height=p.height, jpeg_base64=base64.b64encode(p.jpeg).decode())
            for p in result.posters
        ],
        missing_ids=list(result.missing_ids),
    )


@router.get(
    "/thumbnails/{item_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "the JPEG thumbnail"}},
    summary="GetPosters for one item: the JPEG itself (for <img src>)",
)
def thumbnail(client: Client, item_id: Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX)]) -> Response:
    result = client.posters([item_id])
    if not result.posters:
        raise GatewayError(
            grpc.StatusCode.NOT_FOUND,
            f"item {item_id} expected to have a poster thumbnail, got none (unknown id, or none stored in the bundle)",
        )
    return Response(result.posters[0].jpeg, media_type="image/jpeg", headers={"cache-control": THUMBNAIL_CACHE})


def _reports(request: Request) -> QualityReports:
    reports: QualityReports = request.app.state.quality
    return reports


@router.get("/quality", response_model=QualityOut, summary="The served bundle's eval/analyze reports, if written")
def quality(request: Request, client: Client) -> QualityOut:
    version = str(client.info()["bundle_version"])
    reports = _reports(request)
    sections = [
        QualitySectionOut(
            name=s.name,  # type: ignore[arg-type]
            markdown=s.markdown,
            charts=[QualityChartOut(name=c, url=f"{API_PREFIX}/quality/{s.name}/{c}") for c in s.charts],
            modified_at=s.modified_at,
        )
        for s in reports.sections(version)
    ]
    return QualityOut(bundle_version=version, configured=reports.configured, sections=sections, how_to=HOW_TO)


@router.get(
    "/quality/{section}/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "text/markdown": {}}, "description": "a chart or a report"}},
    summary="One file of a report, by its fixed name (as listed by /quality)",
)
def quality_file(
    request: Request,
    client: Client,
    section: Annotated[str, Path(pattern=r"^(eval|analyze)$")],
    name: Annotated[str, Path(pattern=QUALITY_FILE_NAME)],
) -> Response:
    version = str(client.info()["bundle_version"])
    path = _reports(request).file(version, section, name)
    if path is None:
        raise GatewayError(
            grpc.StatusCode.NOT_FOUND,
            f"{section} report file expected one of the listed names for bundle {version}, got {name!r}",
        )
    media_type = MEDIA_TYPES[path.suffix]
    return Response(path.read_bytes(), media_type=media_type, headers={"cache-control": "no-cache"})
