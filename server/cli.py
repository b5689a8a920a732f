"""``posters-serve``: serve k-nearest-poster queries from a published index root.

Binds 127.0.0.1 by default. Reloads the bundle when ROOT/CURRENT changes
(polling, or at once on SIGHUP); shuts down gracefully on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

# FAISS/OpenMP: each request runs single-threaded (faster for one query on 2 cores),
# and idle OpenMP threads must not spin. Must be set before faiss is imported.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
TOKEN_ENV = "POSTERS_TOKEN"
# FAISS uses BLAS (one matrix multiply reading the vectors once) when queries x dim reaches this:
# BatchSearch calls of >= 8 vector queries at d = 512, >= 4 at d = 1280 (8 queries at 60k x 1280: 52 ms
# instead of 204 ms). FAISS's default (128000) would need 100+ queries.
BLAS_THRESHOLD = 8 * 512


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posters-serve", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--index", type=Path, required=True, help="index root written by posters-index build")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (use 0.0.0.0 only behind TLS/auth)")
    p.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.add_argument("--workers", type=int, default=8, help="request threads")
    p.add_argument("--search-threads", type=int, default=1, help="FAISS threads per request")
    p.add_argument("--coalesce", action="store_true",
                   help="batch concurrent single queries on flat indexes into one FAISS call (measure first: "
                        "scripts/bench_concurrency.py; it did not pay off on 2 cores)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks of ROOT/CURRENT")
    p.add_argument("--no-image-search", action="store_true", help="do not load the CNN (SearchByImage disabled)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a client may ask for")
    p.add_argument("--max-batch", type=int, default=256, help="most queries in one BatchSearch")
    p.add_argument("--max-image-bytes", type=int, default=10 * 1024 * 1024, help="largest uploaded image")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="largest uploaded image in pixels")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates signed by it (mTLS)")
    p.add_argument("--token-file", type=Path,
                   help=f"require 'authorization: Bearer <token>' with the token in this file "
                        f"(or set ${TOKEN_ENV})")
    p.add_argument("--metrics-port", type=int, help="expose Prometheus metrics on 127.0.0.1:PORT/metrics")
    p.add_argument("--access-log", action="store_true", help="log every request (method, status, latency, id)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    p.add_argument("--grace", type=float, default=5.0, help="seconds to finish in-flight requests on shutdown")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    from grpc_health.v1 import health

    from server import logs
    from server.app import ServerConfig, TlsConfig, create_server
    from server.metrics import Metrics
    from server.reloader import BundleManager
    from server.searcher import SearchLimits

    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    logs.configure(logging.DEBUG if args.verbose else logging.INFO, json_lines=args.log_format == "json")
    log = logging.getLogger("posters-serve")
    if (args.tls_cert is None) != (args.tls_key is None):
        log.error("--tls-cert and --tls-key go together")
        return 2
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV) or None
    limits = SearchLimits(max_k=args.max_k, max_batch=args.max_batch, max_image_bytes=args.max_image_bytes,
                          max_image_pixels=args.max_image_pixels)
    manager = BundleManager(args.index, limits, image_search=not args.no_image_search,
                            threads=args.search_threads, poll_interval=args.poll, coalesce=args.coalesce)
    if not manager.reload():
        log.warning("no bundle loaded from %s yet (%s); health is NOT_SERVING until one is published",
                    args.index, manager.last_error or "no CURRENT")
    metrics = Metrics()
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    config = ServerConfig(host=args.host, port=args.port, workers=args.workers, tls=tls, token=token,
                          access_log=args.access_log)
    try:
        server, port = create_server(manager, config, metrics, health_servicer)
    except OSError as exc:
        log.error("%s", exc)
        return 2
    if args.metrics_port is not None:
        log.info("metrics on http://127.0.0.1:%d/metrics", metrics.serve_http(args.metrics_port))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (tls or token):
        log.warning("listening on %s without TLS or a token: anyone who can reach this address can query",
                    args.host)
    server.start()
    manager.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: manager.request_reload())
    log.info("listening on %s:%d (%s%s)", args.host, port, "TLS" if tls else "plaintext",
             ", token auth" if token else "")
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    stop.wait()
    log.info("shutting down (grace %.1fs)", args.grace)
    health_servicer.enter_graceful_shutdown()
    server.stop(args.grace).wait()
    manager.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
