"""Client-side conversion between the domain types and protobuf messages: requests out, responses in.

Imports only the generated code and ``server.types`` (NumPy): a client install needs neither FAISS,
pandas nor TensorFlow.
"""

from __future__ import annotations

from typing import Any

from server._proto import posters_pb2 as pb
from server.types import Hit, Item, ItemQuery, ItemsQuery, Query, SearchOptions, SearchResult, VectorQuery


def options_to_proto(o: SearchOptions) -> pb.SearchOptions:
    msg = pb.SearchOptions(
        k=o.k, candidate_ids=o.candidate_ids, exclude_ids=o.exclude_ids, nprobe=o.nprobe, exact=o.exact
    )
    if o.min_score is not None:
        msg.min_score = o.min_score
    return msg


def weighted_to_proto(items: tuple[tuple[int, float], ...]) -> list[pb.WeightedItem]:
    return [pb.WeightedItem(item_id=i, weight=w) for i, w in items]


def query_to_proto(q: Query) -> pb.Query:
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
        return pb.Query(
            vector=pb.SearchByVectorRequest(vector=list(map(float, q.vector)), options=options_to_proto(q.options))
        )
    return pb.Query(image=pb.SearchByImageRequest(image=q.data, options=options_to_proto(q.options)))


def item_from_proto(m: Any) -> Item:
    return Item(m.item_id, m.title, tuple(m.genres), m.poster, m.imdb_id, m.tmdb_id)


def result_from_proto(r: pb.SearchResponse) -> SearchResult:
    return SearchResult([Hit(item_from_proto(n), n.score) for n in r.neighbors], r.bundle_version, r.exact)
