"""Python client for the PosterSimilarity service (plain domain types in and out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.client import convert
from server.types import Item, ItemsResult, PostersResult, Query, SearchOptions, SearchResult

DEFAULT_TARGET = "127.0.0.1:50051"
IMAGE_QUERY_MODES: dict[str, pb.ImageQueryMode] = {  # SearchByImageRequest.mode by name
    "auto": pb.IMAGE_QUERY_MODE_AUTO,
    "whole": pb.IMAGE_QUERY_MODE_WHOLE,
    "locate": pb.IMAGE_QUERY_MODE_LOCATE,
}
_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class Box(NamedTuple):
    """A region of an uploaded image in pixels (after EXIF orientation): x0 <= x < x1, y0 <= y < y1."""

    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class LocatedResult:
    """A search answer and, per hit, the region of the uploaded image that matched it (``Neighbor.query_box``,
    filled by SearchByImage in LOCATE/AUTO mode); None for whole-image matches and non-image queries."""

    result: SearchResult
    boxes: tuple[Box | None, ...]


@dataclass(frozen=True)
class QueryStatus:
    """One BatchSearch query's status: OK, or the error that query alone got, with its google.rpc details."""

    code: grpc.StatusCode
    message: str
    details: tuple[any_pb2.Any, ...] = ()


@dataclass(frozen=True)
class BatchOutcome:
    """One BatchSearch call: results (empty for a failed query) and statuses in request order."""

    results: list[LocatedResult]
    statuses: tuple[QueryStatus, ...]
    bundle_version: str


@dataclass(frozen=True)
class FindPage:
    """One page of FindItems."""

    items: list[Item]
    total: int  # matches in all pages
    next_page_token: str  # "" on the last page
    bundle_version: str


def _image_mode(mode: str) -> pb.ImageQueryMode:
    if mode not in IMAGE_QUERY_MODES:
        raise ValueError(f"image query mode expected one of {sorted(IMAGE_QUERY_MODES)}, got {mode!r}")
    return IMAGE_QUERY_MODES[mode]


def _located(response: pb.SearchResponse) -> LocatedResult:
    boxes = tuple(
        Box(n.query_box.x0, n.query_box.y0, n.query_box.x1, n.query_box.y1) if n.HasField("query_box") else None
        for n in response.neighbors
    )
    return LocatedResult(convert.result_from_proto(response), boxes)


class BatchQueryError(grpc.RpcError):
    """A query of ``PosterClient.batch`` that failed alone (the call succeeded): ``code()`` and ``details()``
    like any gRPC error, and the failing ``position`` (use ``batch_outcome`` for every query's status)."""

    def __init__(self, position: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.position = position
        self._code = code
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context: Any, callback: Any) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


class PosterClient:
    """``with PosterClient("127.0.0.1:50051") as c: c.similar(1, SearchOptions(k=5))``.

    Errors are ``grpc.RpcError`` with the server's status code and message.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        tls_ca: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        timeout: float = 30.0,
        server_name: str | None = None,
        max_message_bytes: int = 12 * 1024 * 1024,
        packed_vectors: bool = True,
    ) -> None:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._metadata: tuple[tuple[str, str], ...] = ()
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls_ca.read_bytes(),
                private_key=client_key.read_bytes() if client_key else None,
                certificate_chain=client_cert.read_bytes() if client_cert else None,
            )
            if token:
                creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_BearerToken(token)))
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
            if token:  # plaintext (loopback): send the token as ordinary metadata
                self._metadata = (("authorization", f"Bearer {token}"),)
        self._stub = pb_grpc.PosterSimilarityStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        # vectors as SearchByVectorRequest.vector_f32le (packed float32); False: the repeated float field,
        # for servers older than vector_f32le (they would see an empty vector)
        self.packed_vectors = packed_vectors
        self._max_batch: int | None = None  # the server's BatchSearch limit, asked on the first batch()

    def _call(self, rpc: Any, request: Any) -> Any:
        return rpc(request, timeout=self.timeout, metadata=self._metadata or None)

    def similar(self, item_id: int, options: SearchOptions = SearchOptions()) -> SearchResult:
        req = pb.SimilarToItemRequest(item_id=item_id, options=convert.options_to_proto(options))
        return convert.result_from_proto(self._call(self._stub.SimilarToItem, req))

    def like(
        self,
        positive: Sequence[tuple[int, float]],
        negative: Sequence[tuple[int, float]] = (),
        options: SearchOptions = SearchOptions(),
    ) -> SearchResult:
        req = pb.SimilarToItemsRequest(
            positive=convert.weighted_to_proto(tuple(positive)),
            negative=convert.weighted_to_proto(tuple(negative)),
            options=convert.options_to_proto(options),
        )
        return convert.result_from_proto(self._call(self._stub.SimilarToItems, req))

    def vector(self, vector: Sequence[float], options: SearchOptions = SearchOptions()) -> SearchResult:
        req = convert.vector_request(vector, options, self.packed_vectors)
        return convert.result_from_proto(self._call(self._stub.SearchByVector, req))

    def image(self, data: bytes, options: SearchOptions = SearchOptions()) -> SearchResult:
        req = pb.SearchByImageRequest(image=data, options=convert.options_to_proto(options))
        return convert.result_from_proto(self._call(self._stub.SearchByImage, req))

    def batch(self, queries: Sequence[Query]) -> list[SearchResult]:
        """Results in query order. A list longer than the server's ``max_batch`` (asked once with
        GetIndexInfo, then cached) goes as several BatchSearch calls of at most ``max_batch`` queries each;
        then each call may be answered by a different bundle if the server reloads in between (see each
        result's ``bundle_version``), and a position named in an error is within its call."""
        queries = list(queries)
        size = self.max_batch()
        if size <= 0 or len(queries) <= size:
            return self._batch_call(queries)
        results: list[SearchResult] = []
        for start in range(0, len(queries), size):
            results.extend(self._batch_call(queries[start : start + size]))
        return results

    def max_batch(self) -> int:
        """The server's BatchSearch limit (GetIndexInfo.max_batch; 0: none announced), asked once per client."""
        if self._max_batch is None:
            self._max_batch = int(self._call(self._stub.GetIndexInfo, pb.GetIndexInfoRequest()).max_batch)
        return self._max_batch

    def _batch_call(self, queries: Sequence[Query]) -> list[SearchResult]:
        """One BatchSearch call; the first query that failed alone is raised as a BatchQueryError."""
        req = pb.BatchSearchRequest(queries=[convert.query_to_proto(q, self.packed_vectors) for q in queries])
        resp = self._call(self._stub.BatchSearch, req)
        for position, status in enumerate(resp.statuses):
            if status.code != grpc.StatusCode.OK.value[0]:
                code = _STATUS_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
                raise BatchQueryError(position, code, status.message)
        return [convert.result_from_proto(r) for r in resp.results]

    def find(self, text: str, limit: int = 0) -> list[Item]:
        resp = self._call(self._stub.FindItems, pb.FindItemsRequest(query=text, limit=limit))
        return [convert.item_from_proto(i) for i in resp.items]

    def items(self, item_ids: Sequence[int], strict: bool = False) -> list[Item]:
        """Items by id in request order; ids not in the bundle are left out (NOT_FOUND with ``strict``)."""
        resp = self._call(self._stub.GetItems, pb.GetItemsRequest(item_ids=list(item_ids), strict=strict))
        return [convert.item_from_proto(i) for i in resp.items]

    def posters(self, item_ids: Sequence[int]) -> PostersResult:
        """Poster thumbnails (JPEG bytes) stored in the bundle, by id; ids without one in ``missing_ids``."""
        return convert.posters_from_proto(
            self._call(self._stub.GetPosters, pb.GetPostersRequest(item_ids=list(item_ids)))
        )

    def image_located(self, data: bytes, options: SearchOptions = SearchOptions(), mode: str = "auto") -> LocatedResult:
        """SearchByImage with a query mode (``auto``, ``whole``, ``locate``), keeping each hit's matched region."""
        req = pb.SearchByImageRequest(image=data, options=convert.options_to_proto(options), mode=_image_mode(mode))
        return _located(self._call(self._stub.SearchByImage, req))

    def batch_outcome(self, queries: Sequence[Query], image_modes: Mapping[int, str] | None = None) -> BatchOutcome:
        """One BatchSearch call (not split: more than the server's ``max_batch`` is INVALID_ARGUMENT) with
        per-query statuses; ``image_modes`` maps positions of image queries to a query mode."""
        protos = [convert.query_to_proto(q, self.packed_vectors) for q in queries]
        for position, mode in (image_modes or {}).items():
            if not protos[position].HasField("image"):
                raise ValueError(f"image_modes expected positions of image queries, got {position}")
            protos[position].image.mode = _image_mode(mode)
        resp = self._call(self._stub.BatchSearch, pb.BatchSearchRequest(queries=protos))
        statuses = tuple(
            QueryStatus(_STATUS_BY_VALUE.get(s.code, grpc.StatusCode.UNKNOWN), s.message, tuple(s.details))
            for s in resp.statuses
        )
        return BatchOutcome([_located(r) for r in resp.results], statuses, resp.bundle_version)

    def find_page(self, text: str, page_size: int = 0, page_token: str = "", limit: int = 0) -> FindPage:
        """One page of FindItems with the total and the next page's token."""
        req = pb.FindItemsRequest(query=text, limit=limit, page_size=page_size, page_token=page_token)
        resp = self._call(self._stub.FindItems, req)
        return FindPage(
            [convert.item_from_proto(i) for i in resp.items], resp.total, resp.next_page_token, resp.bundle_version
        )

    def get_items(self, item_ids: Sequence[int], strict: bool = False) -> ItemsResult:
        """GetItems with the ids that are not in the bundle (``missing_ids``; NOT_FOUND with ``strict``)."""
        resp = self._call(self._stub.GetItems, pb.GetItemsRequest(item_ids=list(item_ids), strict=strict))
        return ItemsResult([convert.item_from_proto(i) for i in resp.items], tuple(resp.missing_ids))

    def info(self) -> dict[str, Any]:
        info = self._call(self._stub.GetIndexInfo, pb.GetIndexInfoRequest())
        out = {f.name: getattr(info, f.name) for f in info.DESCRIPTOR.fields if f.name != "manifest_json"}
        out["manifest"] = json.loads(info.manifest_json) if info.manifest_json else {}
        return out

    def health(self, service: str = "") -> str:
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_until_serving(self, timeout: float, service: str = "") -> None:
        """Block (health Watch stream, no polling) until the server reports SERVING; TimeoutError otherwise."""
        try:
            for response in self._health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            raise TimeoutError(f"server not SERVING within {timeout:.0f}s: {exc.code().name}") from exc
        raise TimeoutError("health stream ended before the server was SERVING")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PosterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
