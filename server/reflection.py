"""Server reflection, both versions: ``grpc.reflection.v1alpha`` (what grpcio-reflection ships) and
``grpc.reflection.v1`` (what current grpcurl, Postman and buf curl ask for first).

The two protocols are the same messages under two package names, so one servicer answers both: v1 is
registered as a generic handler whose (de)serializers are v1alpha's message classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as messages

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_METHOD = "ServerReflectionInfo"


def enable(server: grpc.Server, service_names: Sequence[str]) -> None:
    """Reflection for ``service_names`` plus both reflection services themselves."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=messages.ServerReflectionRequest.FromString,
        response_serializer=messages.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {V1_METHOD: handler}),))
