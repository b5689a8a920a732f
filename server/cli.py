"""``posters-serve``: serve k-nearest-poster queries from a published index root.

Binds 127.0.0.1 by default. Reloads the bundle when ROOT/CURRENT changes (polling, or at once
on SIGHUP); a bundle that fails its checks is logged and retried with backoff while the last good
one keeps serving. Calls are admitted per cost class (queries, batches, image searches); a full
class answers RESOURCE_EXHAUSTED at once. SIGTERM/SIGINT: health NOT_SERVING, in-flight work is
stopped at its next check, and the process exits within --grace seconds. --processes N: a supervisor
runs N worker processes sharing the port (SO_REUSEPORT); see ``server.supervisor``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from server.cli_args import positive

# Read when FAISS/OpenBLAS/TensorFlow are first imported, so set before any of them is.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
TOKEN_ENV = "POSTERS_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EXIT_USAGE = 2


class StartupError(Exception):
    """A configuration problem found before the server starts (one line, exit code 2)."""


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        if not token:
            raise StartupError(
                f"--token-file {args.token_file} is empty: refusing to start without auth when a token was asked for"
            )
        return token
    if TOKEN_ENV in os.environ:
        token = os.environ[TOKEN_ENV].strip()
        if not token:
            raise StartupError(
                f"${TOKEN_ENV} is set but empty: refusing to start without auth "
                f"when a token was asked for (unset it to run without a token)"
            )
        return token
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posters-serve", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--index", type=Path, required=True, help="index root written by posters-index build")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (use 0.0.0.0 only behind TLS/auth)")
    p.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.add_argument(
        "--workers",
        type=positive(int),
        default=8,
        help="concurrent queries (item, items, vector, lookups); more are refused with RESOURCE_EXHAUSTED",
    )
    p.add_argument("--batch-slots", type=positive(int), default=2, help="concurrent BatchSearch calls")
    p.add_argument("--image-slots", type=positive(int), default=2, help="concurrent SearchByImage calls")
    p.add_argument(
        "--embedding-permits",
        type=positive(int),
        default=2,
        help="concurrent image decode+embed operations (SearchByImage and images in batches)",
    )
    p.add_argument("--search-threads", type=positive(int), default=1, help="FAISS threads per request")
    p.add_argument(
        "--coalesce",
        action="store_true",
        help="batch concurrent single queries on flat indexes into one FAISS call (measure first: "
        "scripts/bench_concurrency.py; it did not pay off on 2 cores)",
    )
    p.add_argument("--poll", type=positive(float), default=5.0, help="seconds between checks of ROOT/CURRENT")
    p.add_argument(
        "--require-same-model",
        action="store_true",
        help="refuse to reload a bundle whose model or dimension differs from the serving one",
    )
    p.add_argument("--no-image-search", action="store_true", help="do not load the CNN (SearchByImage disabled)")
    p.add_argument("--max-k", type=positive(int), default=1000, help="largest k a client may ask for")
    p.add_argument("--max-batch", type=positive(int), default=256, help="most queries in one BatchSearch")
    p.add_argument("--max-image-bytes", type=positive(int), default=10 * 1024 * 1024, help="largest uploaded image")
    p.add_argument(
        "--max-image-pixels",
        type=positive(int),
        default=40_000_000,
        help="largest uploaded image in pixels (decoded size is capped at 4 bytes per pixel)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates signed by it (mTLS)")
    p.add_argument(
        "--token-file",
        type=Path,
        help=f"require 'authorization: Bearer <token>' with the token in this file (or set ${TOKEN_ENV})",
    )
    p.add_argument("--metrics-port", type=int, help="expose Prometheus metrics on METRICS_HOST:PORT/metrics")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for the metrics endpoint (0.0.0.0 inside a pod, so Prometheus can scrape it)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (method, status, latency, id)")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format (json: one object per line, ISO-8601 UTC times; native library output such as "
        "TensorFlow's start-up lines becomes records of the 'native' logger)",
    )
    p.add_argument(
        "--grace",
        type=positive(float),
        default=5.0,
        help="seconds in-flight requests get on shutdown; their work is stopped, the process exits",
    )
    p.add_argument(
        "--processes",
        type=positive(int),
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT), each loading the bundle, under a supervisor "
        "that forwards SIGHUP/SIGTERM and restarts a worker that dies; with --metrics-port P, worker I serves "
        "metrics on P+I",
    )
    # set by the supervisor on its workers' command lines (server.supervisor.worker_command)
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    from indexer.extras import SERVE_MODULES, require

    require("posters-serve", "serve", SERVE_MODULES)
    args = _parser().parse_args(argv)
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    from server import logs, supervisor

    logs.configure(
        logging.DEBUG if args.verbose else logging.INFO,
        json_lines=args.log_format == "json",
        # native library lines become JSON records too (not in a supervisor: its workers inherit its fd 2)
        capture_native=args.log_format == "json" and args.processes == 1,
    )
    log = logging.getLogger("posters-serve")
    if args.processes > 1:
        config = supervisor.SupervisorConfig(
            args.processes, args.index, args.host, args.port, args.grace, args.poll, args.port_file, args.metrics_port
        )
        return supervisor.supervise(config, sys.argv[1:] if argv is None else argv)
    if args.worker_index is not None:
        supervisor.tag_worker_logs(args.worker_index)
    try:
        return _serve(args, log)
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_USAGE


def _serve(args: argparse.Namespace, log: logging.Logger) -> int:
    from grpc_health.v1 import health

    from server.admission import AdmissionLimits, EmbeddingGate
    from server.app import ServerConfig, TlsConfig, create_server
    from server.metrics import Metrics
    from server.process_stats import memory
    from server.reloader import BundleManager
    from server.searcher import SearchLimits
    from server.supervisor import watch_supervisor
    from server.tls import TlsError, check_server_files

    if (args.tls_cert is None) != (args.tls_key is None):
        raise StartupError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert is not None:
        try:
            check_server_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except TlsError as exc:
            raise StartupError(str(exc)) from exc
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    token = _read_token(args)
    limits = SearchLimits(
        max_k=args.max_k,
        max_batch=args.max_batch,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
    )
    admission = AdmissionLimits(
        query=args.workers, batch=args.batch_slots, image=args.image_slots, embedding_permits=args.embedding_permits
    )
    manager = BundleManager(
        args.index,
        limits,
        image_search=not args.no_image_search,
        threads=args.search_threads,
        poll_interval=args.poll,
        coalesce=args.coalesce,
        require_same_model=args.require_same_model,
        embedding_gate=EmbeddingGate(admission.embedding_permits),
    )
    metrics = Metrics()
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        admission=admission,
        tls=tls,
        token=token,
        access_log=args.access_log,
        reuse_port=args.worker_index is not None,  # a worker of --processes N shares the port
    )
    try:
        server, port = create_server(manager, config, metrics, health_servicer)
    except (OSError, RuntimeError) as exc:
        raise StartupError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    if args.metrics_port is not None:
        bound = metrics.serve_http(args.metrics_port, args.metrics_host)
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, bound)
    if args.host not in LOOPBACK_HOSTS and not (tls or token):
        log.warning("listening on %s without TLS or a token: anyone who can reach this address can query", args.host)
    server.start()  # listen at once: health is NOT_SERVING until the bundle is loaded (off this thread)
    manager.add_listener(lambda s: log.info("process %d serving %s: %s", os.getpid(), s.version, memory().describe()))
    manager.start(load_now=True)
    stop = threading.Event()
    if args.supervisor_fd is not None:
        watch_supervisor(args.supervisor_fd, stop.set)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: manager.request_reload())
    log.info(
        "listening on %s:%d (%s%s)", args.host, port, "TLS" if tls else "plaintext", ", token auth" if token else ""
    )
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    stop.wait()
    log.info("shutting down (grace %.1fs)", args.grace)
    health_servicer.enter_graceful_shutdown()
    manager.stop()  # sets the stopping flag first: in-flight work stops at its next check
    server.stop(args.grace).wait(args.grace)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
