"""posters-web: the browse page, the quality page and a REST/JSON gateway in front of posters-serve.

A gRPC client of posters-serve (same --target / --token-file / --tls-* options as posters-query), serving
HTTP on 127.0.0.1:8080 by default: / (browse), /quality, /docs (API explorer), /openapi.json, /api/v1/...

Exit codes: 0 stopped cleanly, 2 a bad setting (one line naming it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from server.cli_args import positive
from server.client.api import DEFAULT_TARGET
from server.web.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    LOOPBACK_HOSTS,
    UpstreamConfig,
    WebConfig,
)

log = logging.getLogger("posters-web")
PROG = "posters-web"
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
TOKEN_ENV = "POSTERS_TOKEN"
LISTEN_BACKLOG = 128


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    up = p.add_argument_group("posters-serve (as posters-query)")
    up.add_argument("--target", default=DEFAULT_TARGET, metavar="HOST:PORT", help=f"default {DEFAULT_TARGET}")
    up.add_argument("--timeout", type=positive(float), default=DEFAULT_TIMEOUT, help="deadline of each call (s)")
    up.add_argument("--token-file", type=Path, help=f"bearer token file (or set ${TOKEN_ENV})")
    up.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA of the server certificate (enables TLS)")
    up.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mTLS")
    up.add_argument("--tls-key", type=Path, metavar="PEM", help="client key, for mTLS")
    up.add_argument("--tls-server-name", metavar="NAME", help="expected server name in its certificate")
    web = p.add_argument_group("gateway")
    web.add_argument(
        "--max-image-bytes",
        type=positive(int),
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="largest image upload, refused (413) before the body is read (default: the server's default)",
    )
    web.add_argument("--max-json-bytes", type=positive(int), default=DEFAULT_MAX_JSON_BYTES, help="largest JSON body")
    web.add_argument(
        "--quality-dir",
        type=Path,
        help="posters-index eval/analyze output root (ROOT/quality or the index ROOT): the quality page",
    )
    web.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="URL",
        help="allow API calls from this origin (repeat; CORS is off without it)",
    )
    web.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="accepted Host header names (default: loopback names when bound to loopback, any otherwise)",
    )
    p.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn's access log)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        return args.token_file.read_text().strip()
    return os.environ.get(TOKEN_ENV)


def config_from_args(args: argparse.Namespace) -> WebConfig:
    allowed = tuple(args.allowed_host)
    if not allowed and args.host in LOOPBACK_HOSTS:
        allowed = LOOPBACK_HOSTS
    config = WebConfig(
        upstream=UpstreamConfig(
            target=args.target,
            token=_token(args),
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_server_name=args.tls_server_name,
            timeout=args.timeout,
        ),
        max_image_bytes=args.max_image_bytes,
        max_json_bytes=args.max_json_bytes,
        quality_dir=args.quality_dir,
        cors_origins=tuple(args.cors_origin),
        allowed_hosts=allowed,
    )
    config.validate()
    return config


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (so the port is known, and written, before uvicorn runs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from server.logs import configure

    configure(logging.DEBUG if args.verbose else logging.INFO)
    try:
        import uvicorn

        from server.web.app import create_app
    except ImportError as exc:
        print(f"{PROG}: needs the web extra (pip install 'poster-similarity[web]'): {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = config_from_args(args)
        app = create_app(config)
        sock = bind(args.host, args.port)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    port = sock.getsockname()[1]
    if args.port_file is not None:
        args.port_file.write_text(str(port))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{PROG}: http://{shown}:{port}/  (posters-serve at {config.upstream.target})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=args.access_log, server_header=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        sock.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
