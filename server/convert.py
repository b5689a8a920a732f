"""Server-side conversion between protobuf messages and the domain types: requests in, responses out.
With the servicer registration (``server.service``) and the client (``server.client``), the only
code that touches generated protobuf classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server._proto import posters_pb2 as pb
from server.errors import InvalidArgument
from server.types import (
    ImageQuery,
    IndexSummary,
    Item,
    ItemQuery,
    ItemsQuery,
    Query,
    SearchOptions,
    SearchResult,
    VectorQuery,
)

if TYPE_CHECKING:
    from indexer.bundle import Manifest
    from server.reloader import ReloadStatus

DEFAULT_WEIGHT = 1.0


# ---- requests: proto -> domain (server side) ------------------------------
def options_from_proto(o: pb.SearchOptions) -> SearchOptions:
    return SearchOptions(
        k=o.k,
        candidate_ids=tuple(o.candidate_ids),
        exclude_ids=tuple(o.exclude_ids),
        min_score=o.min_score if o.HasField("min_score") else None,
        nprobe=o.nprobe,
        exact=o.exact,
    )


def _weighted(items: Any) -> tuple[tuple[int, float], ...]:
    return tuple((w.item_id, w.weight if w.HasField("weight") else DEFAULT_WEIGHT) for w in items)


def item_query(req: pb.SimilarToItemRequest) -> ItemQuery:
    return ItemQuery(req.item_id, options_from_proto(req.options))


def items_query(req: pb.SimilarToItemsRequest) -> ItemsQuery:
    return ItemsQuery(_weighted(req.positive), _weighted(req.negative), options_from_proto(req.options))


def vector_query(req: pb.SearchByVectorRequest) -> VectorQuery:
    return VectorQuery(req.vector, options_from_proto(req.options))


def image_query(req: pb.SearchByImageRequest) -> ImageQuery:
    return ImageQuery(req.image, options_from_proto(req.options))


def query_from_proto(q: pb.Query, position: int) -> Query:
    kind = q.WhichOneof("query")
    if kind == "item":
        return item_query(q.item)
    if kind == "items":
        return items_query(q.items)
    if kind == "vector":
        return vector_query(q.vector)
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
    )


def result_to_proto(result: SearchResult) -> pb.SearchResponse:
    response = pb.SearchResponse(bundle_version=result.bundle_version, exact=result.exact)
    add = response.neighbors.add
    for item, score in result.hits:
        add(
            item_id=item.item_id,
            score=score,
            title=item.title,
            genres=item.genres,
            poster=item.poster,
            imdb_id=item.imdb_id,
            tmdb_id=item.tmdb_id,
        )
    return response


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
    )
