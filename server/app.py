"""Assemble a gRPC server: servicer, interceptor, health, reflection, TLS."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server import reflection, runtime
from server.admission import Admission, AdmissionLimits
from server.interceptors import ServiceInterceptor
from server.metrics import Metrics
from server.reloader import BundleManager
from server.searcher import Searcher
from server.service import SERVICE_NAME, PosterSimilarityServicer, add_servicer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
MESSAGE_OVERHEAD_BYTES = 1024 * 1024  # room for fields around the largest allowed image
# Health of image search alone: NOT_SERVING while the model loads (index queries are answered before it)
# and for bundles whose embedder this server cannot rebuild.
IMAGE_SEARCH_HEALTH = f"{SERVICE_NAME}.SearchByImage"


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (the bound port is returned)
    admission: AdmissionLimits = AdmissionLimits()  # calls of each cost class at once; threads follow
    tls: TlsConfig | None = None
    token: str | None = None  # bearer token required on every PosterSimilarity call
    access_log: bool = False
    reuse_port: bool = False  # SO_REUSEPORT: several processes listen on the port (posters-serve --processes)


def _credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]  # checked by server.tls before we get here
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=tls.client_ca.read_bytes(), require_client_auth=True)


def create_server(
    manager: BundleManager,
    config: ServerConfig,
    metrics: Metrics | None = None,
    health_servicer: health.HealthServicer | None = None,
    admission: Admission | None = None,
) -> tuple[grpc.Server, int]:
    """Build (not start) the server and bind it; returns (server, bound port).

    Applies the process-wide serving settings (``server.runtime``). Health is NOT_SERVING until
    the manager has a bundle, then SERVING; it has threads of its own (``AdmissionLimits.threads``
    reserves them), so it answers while every search slot is busy.
    """
    runtime.apply()
    max_message = manager.limits.max_image_bytes + MESSAGE_OVERHEAD_BYTES
    admission = admission or Admission(config.admission)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.admission.threads, thread_name_prefix="rpc"),
        interceptors=[ServiceInterceptor(SERVICE_NAME, config.token, metrics, config.access_log, admission)],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", int(config.reuse_port)),
        ],
    )
    add_servicer(PosterSimilarityServicer(manager), server)
    health_servicer = health_servicer or health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def on_bundle(searcher: Searcher) -> None:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        image_ready = searcher.image_embedder is not None
        health_servicer.set(
            IMAGE_SEARCH_HEALTH,
            health_pb2.HealthCheckResponse.SERVING if image_ready else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        if metrics is not None:
            metrics.on_bundle(searcher)

    for name in ("", SERVICE_NAME, IMAGE_SEARCH_HEALTH):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    manager.add_listener(on_bundle)
    if manager.current is not None:
        on_bundle(manager.current)
    if metrics is not None:
        metrics.watch(manager, admission)
    reflection.enable(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    address = f"{config.host}:{config.port}"
    if config.tls is not None:
        port = server.add_secure_port(address, _credentials(config.tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port
