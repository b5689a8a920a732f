"""Server-side conversion between protobuf messages and the domain types: requests in, responses out.
With the servicer registration (``server.service``) and the client (``server.client``), the only
code that touches generated protobuf classes."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from server._proto import posters_pb2 as pb
from server.errors import InvalidArgument, SearchError
from server.process_stats import memory
from server.status import status_proto
from server.types import (
    EMPTY_FILTER,
    Filter,
    ImageQuery,
    IndexSummary,
    Item,
    ItemQuery,
    ItemsQuery,
    ItemsResult,
    PostersResult,
    Query,
    SearchOptions,
    SearchResult,
    TitlePage,
    VectorQuery,
)

if TYPE_CHECKING:
    from indexer.bundle import Manifest
    from server.reloader import ReloadStatus

DEFAULT_WEIGHT = 1.0
PACKED_DTYPE = np.dtype("<f4")  # SearchByVectorRequest.vector_f32le: little-endian IEEE-754 float32
PACKED_FIELD = "vector_f32le"
PAGE_TOKEN_SEPARATOR = "@"
INDEX_KINDS = {
    "flat": pb.INDEX_KIND_FLAT,
    "ivf": pb.INDEX_KIND_IVF,
    "ivf-sq8": pb.INDEX_KIND_IVF,
    "ivf-fp16": pb.INDEX_KIND_IVF,
    "ivf-pq": pb.INDEX_KIND_IVF,
    "hnsw": pb.INDEX_KIND_HNSW,
    "hnsw-sq8": pb.INDEX_KIND_HNSW,
}
IMAGE_MODES = {
    pb.IMAGE_QUERY_MODE_UNSPECIFIED: "auto",
    pb.IMAGE_QUERY_MODE_AUTO: "auto",
    pb.IMAGE_QUERY_MODE_WHOLE: "whole",
    pb.IMAGE_QUERY_MODE_LOCATE: "locate",
}


# ---- requests: proto -> domain (server side) ------------------------------
def filter_from_proto(f: pb.Filter) -> Filter:
    return Filter(
        genres_any=tuple(f.genres_any),
        genres_all=tuple(f.genres_all),
        genres_none=tuple(f.genres_none),
        year_min=f.year_min if f.HasField("year_min") else None,
        year_max=f.year_max if f.HasField("year_max") else None,
        min_ratings=f.min_ratings if f.HasField("min_ratings") else None,
        allow_ids=tuple(f.allow_ids),
        deny_ids=tuple(f.deny_ids),
    )


def options_from_proto(o: pb.SearchOptions) -> SearchOptions:
    return SearchOptions(
        k=o.k,
        candidate_ids=tuple(o.candidate_ids),
        exclude_ids=tuple(o.exclude_ids),
        min_score=o.min_score if o.HasField("min_score") else None,
        nprobe=o.nprobe,
        exact=o.exact,
        filter=filter_from_proto(o.filter) if o.HasField("filter") else EMPTY_FILTER,
        strict=o.strict,
        ef_search=o.ef_search,
        k_factor=o.k_factor,
    )


def _weighted(items: Any) -> tuple[tuple[int, float], ...]:
    return tuple((w.item_id, w.weight if w.HasField("weight") else DEFAULT_WEIGHT) for w in items)


def item_query(req: pb.SimilarToItemRequest) -> ItemQuery:
    return ItemQuery(req.item_id, options_from_proto(req.options))


def items_query(req: pb.SimilarToItemsRequest) -> ItemsQuery:
    return ItemsQuery(_weighted(req.positive), _weighted(req.negative), options_from_proto(req.options))


def request_vector(req: pb.SearchByVectorRequest, dim: int | None = None) -> Sequence[float] | np.ndarray:
    """The query vector of either form: ``vector`` (repeated float) or ``vector_f32le`` (packed bytes, read
    without a per-value Python object). Exactly one may be set; a packed length must be 4 x ``dim``
    (the serving bundle's dimension; None: checked by the searcher). The values are checked by the searcher."""
    packed = req.vector_f32le
    if not packed:
        return req.vector
    size = PACKED_DTYPE.itemsize
    if len(req.vector):
        raise InvalidArgument(
            f"expected exactly one of vector and {PACKED_FIELD}, got both ({len(req.vector)} floats in vector "
            f"and {len(packed)} bytes in {PACKED_FIELD})",
            PACKED_FIELD,
        )
    if len(packed) % size:
        raise InvalidArgument(
            f"{PACKED_FIELD} expected little-endian float32 values ({size} bytes each), got {len(packed)} bytes, "
            f"not a multiple of {size}",
            PACKED_FIELD,
        )
    if dim is not None and len(packed) != dim * size:
        raise InvalidArgument(
            f"{PACKED_FIELD} dimension expected {dim} ({dim * size} bytes of float32), "
            f"got {len(packed) // size} ({len(packed)} bytes)",
            PACKED_FIELD,
        )
    return np.frombuffer(packed, dtype=PACKED_DTYPE)


def vector_query(req: pb.SearchByVectorRequest, dim: int | None = None) -> VectorQuery:
    return VectorQuery(request_vector(req, dim), options_from_proto(req.options))


def image_query(req: pb.SearchByImageRequest) -> ImageQuery:
    return ImageQuery(req.image, options_from_proto(req.options), IMAGE_MODES.get(req.mode, "auto"))


def query_or_error(q: pb.Query, position: int, dim: int | None = None) -> Query | SearchError:
    """A BatchSearch query, or the error that position alone gets (nothing set, a malformed packed vector)."""
    try:
        return query_from_proto(q, position, dim)
    except InvalidArgument as exc:
        return exc


def query_from_proto(q: pb.Query, position: int, dim: int | None = None) -> Query:
    kind = q.WhichOneof("query")
    if kind == "item":
        return item_query(q.item)
    if kind == "items":
        return items_query(q.items)
    if kind == "vector":
        try:
            return vector_query(q.vector, dim)
        except InvalidArgument as exc:  # named by position, as the searcher names its per-query errors
            raise InvalidArgument(f"query {position}: {exc}", f"queries[{position}].{exc.field}") from None
    if kind == "image":
        return image_query(q.image)
    raise InvalidArgument(f"query {position}: expected one of item, items, vector, image; got none set")


# ---- responses: domain -> proto (server side) -----------------------------
def item_to_proto(item: Item) -> pb.Item:
    return pb.Item(
        item_id=item.item_id,
        title=item.title,
        genres=item.genres,
        poster=item.poster,
        imdb_id=item.imdb_id,
        tmdb_id=item.tmdb_id,
        year=item.year,
        rating_count=item.rating_count,
    )


def result_to_proto(result: SearchResult) -> pb.SearchResponse:
    response = pb.SearchResponse(
        bundle_version=result.bundle_version, exact=result.exact, missing_ids=result.missing_ids
    )
    add = response.neighbors.add
    for item, score, box in result.hits:
        neighbor = add(
            item_id=item.item_id,
            score=score,
            title=item.title,
            genres=item.genres,
            poster=item.poster,
            imdb_id=item.imdb_id,
            tmdb_id=item.tmdb_id,
            year=item.year,
            rating_count=item.rating_count,
        )
        if box is not None:
            neighbor.query_box.CopyFrom(pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
    return response


def batch_to_proto(outcomes: list[SearchResult | SearchError], version: str) -> pb.BatchSearchResponse:
    """Per-query results and statuses (an error's result is empty; its status says why)."""
    response = pb.BatchSearchResponse(bundle_version=version)
    for outcome in outcomes:
        if isinstance(outcome, SearchError):
            response.results.add(bundle_version=version)
            response.statuses.append(status_proto(outcome))
        else:
            response.results.append(result_to_proto(outcome))
            response.statuses.add(code=grpc.StatusCode.OK.value[0])
    return response


def items_to_proto(result: ItemsResult, version: str) -> pb.GetItemsResponse:
    return pb.GetItemsResponse(
        items=[item_to_proto(i) for i in result.items], bundle_version=version, missing_ids=result.missing_ids
    )


def posters_to_proto(result: PostersResult, version: str) -> pb.GetPostersResponse:
    return pb.GetPostersResponse(
        posters=[pb.Poster(item_id=p.item_id, jpeg=p.jpeg, width=p.width, height=p.height) for p in result.posters],
        missing_ids=result.missing_ids,
        bundle_version=version,
    )


def page_token(version: str, offset: int) -> str:
    """An opaque page token: where the next page starts, for the bundle that issued it."""
    return base64.urlsafe_b64encode(f"{version}{PAGE_TOKEN_SEPARATOR}{offset}".encode()).decode()


def page_offset(token: str, version: str) -> int:
    """The offset a page token names; InvalidArgument for a malformed token or one of another bundle."""
    if not token:
        return 0
    try:
        issued_by, _, offset = base64.urlsafe_b64decode(token.encode()).decode().rpartition(PAGE_TOKEN_SEPARATOR)
        value = int(offset)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidArgument(
            f"page_token expected a token from a previous FindItemsResponse, got {token[:40]!r}", "page_token"
        ) from None
    if issued_by != version:
        raise InvalidArgument(
            f"page_token expected a token of the serving bundle {version}, got one of {issued_by[:60]!r} "
            "(the index was reloaded: start from the first page)",
            "page_token",
        )
    return value


def title_page_to_proto(page: TitlePage, version: str) -> pb.FindItemsResponse:
    return pb.FindItemsResponse(
        items=[item_to_proto(i) for i in page.items],
        bundle_version=version,
        next_page_token=page_token(version, page.next_offset) if page.next_offset is not None else "",
        total=page.total,
    )


def info_to_proto(info: IndexSummary, limits: Any, manifest: Manifest, status: ReloadStatus) -> pb.IndexInfo:
    return pb.IndexInfo(
        bundle_version=info.bundle_version,
        model=info.model,
        dimension=info.dimension,
        index_type=info.index_type,
        item_count=info.item_count,
        failure_count=info.failure_count,
        default_nprobe=info.default_nprobe,
        neighbour_table_k=info.neighbour_table_k,
        image_search=info.image_search,
        loaded_at=info.loaded_at,
        max_k=limits.max_k,
        max_batch=limits.max_batch,
        max_image_bytes=limits.max_image_bytes,
        max_image_pixels=limits.max_image_pixels,
        manifest_json=manifest.to_json(),
        desired_version=status.desired_version,
        reload_failures=status.reload_failures,
        last_reload_error=status.last_error,
        previous_bundle_version=status.previous_version,
        previous_model=status.previous_model,
        previous_dimension=status.previous_dimension,
        index_kind=INDEX_KINDS.get(info.index_type, pb.INDEX_KIND_UNSPECIFIED),
        loaded_time=timestamp_pb2.Timestamp(seconds=int(info.loaded_at), nanos=int(info.loaded_at % 1 * 1e9)),
        genres=info.genres,
        year_min=info.year_min,
        year_max=info.year_max,
        has_ratings=info.has_ratings,
        has_posters=info.has_posters,
        max_posters=limits.max_posters,
        thumbnail_width=info.thumbnail_width,
        thumbnail_height=info.thumbnail_height,
        process_id=os.getpid(),
        process_rss_bytes=memory().rss_bytes,
    )
