"""Python client for the PosterSimilarity service (plain domain types in and out)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.client import convert
from server.types import Item, PostersResult, Query, SearchOptions, SearchResult

DEFAULT_TARGET = "127.0.0.1:50051"


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
        req = pb.SearchByVectorRequest(vector=list(map(float, vector)), options=convert.options_to_proto(options))
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
        """One BatchSearch call."""
        req = pb.BatchSearchRequest(queries=[convert.query_to_proto(q) for q in queries])
        return [convert.result_from_proto(r) for r in self._call(self._stub.BatchSearch, req).results]

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
