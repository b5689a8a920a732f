"""Helpers for tests over a real in-process gRPC server on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from server._proto import posters_pb2 as pb
from server.admission import Admission, AdmissionLimits, EmbeddingGate
from server.app import ServerConfig, create_server
from server.client import PosterClient
from server.metrics import Metrics
from server.reloader import BundleManager
from server.searcher import SearchLimits

# every RPC of the contract, read from it (a new RPC is covered by the malformed-bytes and fuzz tests at once)
METHODS = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["PosterSimilarity"].methods)


def serve_command(root: Path, port_file: Path, *extra: str) -> list[str]:
    """The posters-serve command line of the subprocess tests: any free loopback port, written to ``port_file``."""
    return [
        sys.executable,
        "-m",
        "server.cli",
        "--index",
        str(root),
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *extra,
    ]


@dataclass
class Served:
    client: PosterClient
    manager: BundleManager
    port: int
    metrics: Metrics
    admission: Admission

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve(
    root: Path,
    image_search: bool = False,
    limits: SearchLimits | None = None,
    token: str | None = None,
    tls=None,
    client_kwargs: dict | None = None,
    admission: AdmissionLimits = AdmissionLimits(),
    poll_interval: float = 3600,
) -> Iterator[Served]:
    manager = BundleManager(
        root,
        limits or SearchLimits(),
        image_search=image_search,
        poll_interval=poll_interval,
        embedding_gate=EmbeddingGate(admission.embedding_permits),
    )
    manager.reload()
    metrics = Metrics()
    gate = Admission(admission)
    server, port = create_server(
        manager,
        ServerConfig(host="127.0.0.1", port=0, token=token, tls=tls, admission=admission),
        metrics,
        admission=gate,
    )
    server.start()
    client = PosterClient(f"127.0.0.1:{port}", **(client_kwargs or {}))
    try:
        yield Served(client, manager, port, metrics, gate)
    finally:
        client.close()
        server.stop(None).wait()
        manager.stop()


def self_signed_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test-ca"))
        .issuer_name(name("test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, serial: int, server: bool):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return k, b.sign(ca_key, hashes.SHA256())

    out: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)

    def write(label: str, cert, k=None) -> None:
        out[f"{label}_cert"] = folder / f"{label}.crt"
        out[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if k is not None:
            out[f"{label}_key"] = folder / f"{label}.key"
            out[f"{label}_key"].write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

    write("ca", ca)
    write("server", *reversed(leaf("localhost", 2, True)))
    write("client", *reversed(leaf("client", 3, False)))
    return out


def raw_call(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 30.0) -> grpc.StatusCode:
    """Send raw bytes to a method; return the status code."""
    call = channel.unary_unary(
        f"/posters.v1.PosterSimilarity/{method}", request_serializer=None, response_deserializer=None
    )
    try:
        call(payload, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
