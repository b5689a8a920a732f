"""Client-side conversion between the domain types and protobuf messages: requests out, responses in.

Imports only the generated code and ``server.types`` (NumPy): a client install needs neither FAISS,
pandas nor TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from server._proto import posters_pb2 as pb
from server.types import (
    Filter,
    Hit,
    Item,
    ItemQuery,
    ItemsQuery,
    PosterImage,
    PostersResult,
    Query,
    SearchOptions,
    SearchResult,
    VectorQuery,
)


def filter_to_proto(f: Filter) -> pb.Filter:
    msg = pb.Filter(
        genres_any=f.genres_any,
        genres_all=f.genres_all,
        genres_none=f.genres_none,
        allow_ids=f.allow_ids,
        deny_ids=f.deny_ids,
    )
    if f.year_min is not None:
        msg.year_min = f.year_min
    if f.year_max is not None:
        msg.year_max = f.year_max
    if f.min_ratings is not None:
        msg.min_ratings = f.min_ratings
    return msg


def options_to_proto(o: SearchOptions) -> pb.SearchOptions:
    msg = pb.SearchOptions(
        k=o.k,
        candidate_ids=o.candidate_ids,
        exclude_ids=o.exclude_ids,
        nprobe=o.nprobe,
        exact=o.exact,
        strict=o.strict,
        ef_search=o.ef_search,
        k_factor=o.k_factor,
    )
    if o.min_score is not None:
        msg.min_score = o.min_score
    if not o.filter.is_empty():
        msg.filter.CopyFrom(filter_to_proto(o.filter))
    return msg


def weighted_to_proto(items: tuple[tuple[int, float], ...]) -> list[pb.WeightedItem]:
    return [pb.WeightedItem(item_id=i, weight=w) for i, w in items]


PACKED_DTYPE = np.dtype("<f4")  # SearchByVectorRequest.vector_f32le: little-endian IEEE-754 float32


def vector_request(
    vector: Sequence[float] | np.ndarray, options: SearchOptions, packed: bool = True
) -> pb.SearchByVectorRequest:
    """A SearchByVector request: the vector as packed little-endian float32 bytes (``vector_f32le``, cheap to
    build and to parse), or with ``packed=False`` as the repeated ``vector`` field (servers before it)."""
    if packed:
        data = np.ascontiguousarray(vector, dtype=PACKED_DTYPE).reshape(-1).tobytes()
        return pb.SearchByVectorRequest(vector_f32le=data, options=options_to_proto(options))
    return pb.SearchByVectorRequest(vector=list(map(float, vector)), options=options_to_proto(options))


def query_to_proto(q: Query, packed_vectors: bool = True) -> pb.Query:
    if isinstance(q, ItemQuery):
        return pb.Query(item=pb.SimilarToItemRequest(item_id=q.item_id, options=options_to_proto(q.options)))
    if isinstance(q, ItemsQuery):
        return pb.Query(
            items=pb.SimilarToItemsRequest(
                positive=weighted_to_proto(q.positive),
                negative=weighted_to_proto(q.negative),
                options=options_to_proto(q.options),
            )
        )
    if isinstance(q, VectorQuery):
        return pb.Query(vector=vector_request(q.vector, q.options, packed_vectors))
    return pb.Query(image=pb.SearchByImageRequest(image=q.data, options=options_to_proto(q.options)))


def item_from_proto(m: Any) -> Item:
    return Item(m.item_id, m.title, tuple(m.genres), m.poster, m.imdb_id, m.tmdb_id, m.year, m.rating_count)


def result_from_proto(r: pb.SearchResponse) -> SearchResult:
    return SearchResult(
        [Hit(item_from_proto(n), n.score) for n in r.neighbors], r.bundle_version, r.exact, tuple(r.missing_ids)
    )


def posters_from_proto(r: pb.GetPostersResponse) -> PostersResult:
    return PostersResult([PosterImage(p.item_id, p.jpeg, p.width, p.height) for p in r.posters], tuple(r.missing_ids))
