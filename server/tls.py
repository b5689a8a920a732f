"""Check TLS files before the server starts: readable, a matching certificate/key pair, not expired.

gRPC reports a bad key or certificate only as "Failed to bind"; these checks name the file and
the problem instead. An expired (or not yet valid) certificate is refused; one that expires soon
is logged as a warning.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from cryptography import x509

log = logging.getLogger(__name__)

EXPIRY_WARNING = dt.timedelta(days=14)


class TlsError(Exception):
    """The TLS files cannot be used; the message names the file and the reason."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def check_server_files(
    cert: Path, key: Path, client_ca: Path | None = None, now: dt.datetime | None = None
) -> x509.Certificate:
    """Validate the server's certificate chain and key (and the client CA); return the leaf certificate."""
    now = now or dt.datetime.now(dt.UTC)
    pem = _read(cert, "certificate")
    _read(key, "private key")
    try:
        leaf = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TlsError(f"{cert} is not a PEM certificate: {exc}") from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise TlsError(f"{key} does not match {cert} or is not a PEM private key ({exc.reason or exc})") from exc
    if now > leaf.not_valid_after_utc:
        raise TlsError(f"{cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; clients will refuse it")
    if now < leaf.not_valid_before_utc:
        raise TlsError(f"{cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        log.warning("%s expires on %s UTC", cert, f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}")
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(_read(client_ca, "client CA"))
        except ValueError as exc:
            raise TlsError(f"{client_ca} is not a PEM CA certificate bundle: {exc}") from exc
    return leaf
