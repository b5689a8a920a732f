"""The gRPC servicer: converts messages and delegates to the searcher. Nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server import convert
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.errors import InvalidArgument
from server.guard import CallGuard
from server.reloader import BundleManager

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PosterSimilarity"].full_name


class PosterSimilarityServicer(pb_grpc.PosterSimilarityServicer):
    def __init__(self, manager: BundleManager) -> None:
        self._manager = manager

    def _guard(self, context: grpc.ServicerContext) -> CallGuard:
        return CallGuard(context.is_active, context.time_remaining, self._manager.stopping)

    def SimilarToItem(self, request: pb.SimilarToItemRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        q = convert.item_query(request)
        return convert.result_to_proto(self._manager.require().similar_to_item(q.item_id, q.options))

    def SimilarToItems(self, request: pb.SimilarToItemsRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        q = convert.items_query(request)
        return convert.result_to_proto(self._manager.require().similar_to_items(q.positive, q.negative, q.options))

    def SearchByVector(self, request: pb.SearchByVectorRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        searcher = self._manager.require()
        q = convert.vector_query(request, searcher.dim)
        return convert.result_to_proto(searcher.search_vector(q.vector, q.options))

    def SearchByImage(self, request: pb.SearchByImageRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        q = convert.image_query(request)
        searcher = self._manager.require()
        return convert.result_to_proto(searcher.search_image(q.data, q.options, self._guard(context), q.mode))

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        searcher = self._manager.require()
        queries = [convert.query_or_error(q, i, searcher.dim) for i, q in enumerate(request.queries)]
        return convert.batch_to_proto(searcher.batch(queries, self._guard(context)), searcher.version)

    def FindItems(self, request: pb.FindItemsRequest, context: grpc.ServicerContext) -> pb.FindItemsResponse:
        searcher = self._manager.require()
        offset = convert.page_offset(request.page_token, searcher.version)
        page = searcher.find_items(request.query, max(request.limit, request.page_size), offset)
        return convert.title_page_to_proto(page, searcher.version)

    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext) -> pb.GetItemsResponse:
        searcher = self._manager.require()
        return convert.items_to_proto(searcher.get_items(list(request.item_ids), request.strict), searcher.version)

    def GetPosters(self, request: pb.GetPostersRequest, context: grpc.ServicerContext) -> pb.GetPostersResponse:
        searcher = self._manager.require()
        return convert.posters_to_proto(searcher.get_posters(list(request.item_ids)), searcher.version)

    def GetIndexInfo(self, request: pb.GetIndexInfoRequest, context: grpc.ServicerContext) -> pb.IndexInfo:
        searcher = self._manager.require()
        return convert.info_to_proto(searcher.info(), searcher.limits, searcher.manifest, self._manager.status())


class _Malformed:
    """Stands in for a request whose bytes do not parse, so the client gets INVALID_ARGUMENT, not INTERNAL."""

    def __init__(self, size: int, error: str) -> None:
        self.size, self.error = size, error


def _lenient(message_cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(len(data), str(exc))

    return parse


def _guarded(method: Callable, type_name: str) -> Callable:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            raise InvalidArgument(
                f"request expected a serialized {type_name}; got {request.size} bytes that do "
                f"not parse ({request.error})"
            )
        return method(request, context)

    return behaviour


def add_servicer(servicer: PosterSimilarityServicer, server: grpc.Server) -> None:
    """Register the servicer, with request parsing that reports malformed bytes as INVALID_ARGUMENT."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["PosterSimilarity"].methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name), method.input_type.full_name),
            request_deserializer=_lenient(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # registered methods: gRPC core matches them without a Python-side generic lookup (faster per call)
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
