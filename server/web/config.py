"""Typed settings of the gateway (posters-web)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.client.api import DEFAULT_TARGET

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 30.0  # seconds: deadline of each gRPC call
MIB = 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 10 * MIB  # posters-serve's default --max-image-bytes
DEFAULT_MAX_JSON_BYTES = 16 * MIB  # JSON bodies (a BatchSearch of base64 images is the largest)
MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries, part headers and the small form fields beside the image
GRPC_MESSAGE_SLACK_BYTES = 1 * MIB  # the gRPC message around the largest image or JSON body
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class UpstreamConfig:
    """How the gateway reaches posters-serve (the options of posters-query)."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class WebConfig:
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    # The largest image upload, checked before the body is read (Content-Length, then while streaming).
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    # posters-index eval/analyze output root (ROOT/quality, or the index ROOT): reports of the served bundle
    # are read from DIR/<build id>/{eval,analyze}/ by fixed file names. None: the quality page says how to make them.
    quality_dir: Path | None = None
    # Origins allowed to call the API from other sites (CORS); empty: CORS off.
    cors_origins: tuple[str, ...] = ()
    # Host header values accepted (DNS-rebinding guard); empty: any. The CLI sets loopback names when bound there.
    allowed_hosts: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.max_image_bytes <= 0:
            raise ValueError(f"max_image_bytes expected a positive number of bytes, got {self.max_image_bytes}")
        if self.max_json_bytes <= 0:
            raise ValueError(f"max_json_bytes expected a positive number of bytes, got {self.max_json_bytes}")
        if self.upstream.timeout <= 0:
            raise ValueError(f"timeout expected a positive number of seconds, got {self.upstream.timeout}")
        if self.upstream.token is not None and not self.upstream.token.strip():
            raise ValueError("token expected a non-empty string, got an empty one")
        if self.quality_dir is not None and not self.quality_dir.is_dir():
            raise ValueError(f"quality_dir expected a folder, got {str(self.quality_dir)!r}")
        for origin in self.cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin expected http(s)://host[:port], got {origin!r}")
