"""Issue #8 regressions on the serving side: a watcher nothing kills, work that stops when nobody waits,
admission control, health under load, bundle identity by content, auth that fails closed, start-up checks."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.admission import AdmissionLimits, EmbeddingGate
from server.client import PosterClient
from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from server.guard import CallGuard
from server.interceptors import ServiceInterceptor
from server.reloader import BundleManager
from server.searcher import Searcher
from server.types import SearchOptions
from tests.conftest import QUIET, clustered_vectors
from tests.grpc_helpers import self_signed_pki, serve, serve_command

ROOT_DIR = Path(__file__).resolve().parent.parent
WAIT_STEP = 0.01


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition with a deadline (a condition, not a guessed sleep)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        event.wait(WAIT_STEP)


def _vectors_root(folder: Path, dim: int = 16, n: int = 200, seed: int = 1) -> Path:
    np.savez(folder / f"v{dim}-{seed}.npz", ids=np.arange(n) + 10, vectors=clustered_vectors(n, dim, seed=seed))
    root = folder / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(folder / f"v{dim}-{seed}.npz"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=5,
        )
    )
    return root


def _republish(root: Path, source_build: str, new_id: str) -> None:
    """Publish a copy of a bundle under a new build id (manifest rewritten to match, as a build would)."""
    shutil.copytree(root / "builds" / source_build, root / "builds" / new_id)
    manifest = json.loads((root / "builds" / new_id / "manifest.json").read_text())
    manifest["build_id"] = new_id
    (root / "builds" / new_id / "manifest.json").write_text(json.dumps(manifest))
    bundles.write_current(root, new_id)


# ---- item 1: a non-UTF-8 CURRENT must not kill hot reload ------------------------------------------


def test_bad_current_is_counted_and_the_watcher_keeps_reloading(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    good = bundles.read_current(root)
    manager = BundleManager(root, image_search=False, poll_interval=3600)
    assert manager.reload()
    loaded = threading.Event()
    manager.add_listener(lambda s: loaded.set())
    manager.start()
    try:
        (root / "CURRENT.tmp").write_bytes(b"\xff\xfe")
        os.replace(root / "CURRENT.tmp", root / "CURRENT")
        manager.request_reload()
        wait_until(lambda: manager.status().reload_failures >= 1, 10, "the failed reload to be counted")
        status = manager.status()
        assert "UTF-8" in status.last_error and status.serving_version == good and status.stale
        assert manager.watching and manager.current is not None and manager.current.version == good
        _republish(root, good, "29990101T000000.000000Z-aaaaaa")  # a good bundle after the bad CURRENT
        manager.request_reload()
        assert loaded.wait(10), "the watcher died: a good bundle published after a bad CURRENT never loaded"
        assert manager.current.version == "29990101T000000.000000Z-aaaaaa"
        assert manager.status().last_error == "" and not manager.status().stale
    finally:
        manager.stop()


def test_any_exception_while_loading_is_survived_and_retried(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    good = bundles.read_current(root)
    manager = BundleManager(root, image_search=False, poll_interval=3600)
    real = manager._load
    faults = [MemoryError("simulated"), RuntimeError("faiss says no")]

    def flaky(build_id: str) -> Searcher:
        if faults:
            raise faults.pop(0)
        return real(build_id)

    manager._load = flaky  # type: ignore[method-assign]
    assert not manager.reload() and "MemoryError: simulated" in manager.status().last_error
    assert not manager.reload(force=True) and "RuntimeError: faiss says no" in manager.status().last_error
    assert manager.reload(force=True) and manager.current.version == good
    assert manager.status().reload_failures == 2 and manager.status().last_error == ""


def test_status_over_grpc_and_metrics_show_desired_vs_serving(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    good = bundles.read_current(root)
    with serve(root) as served:
        (root / "CURRENT").write_bytes(b"\xff\xfe")
        assert not served.manager.reload()
        info = served.client.info()
        assert info["bundle_version"] == good and info["desired_version"] == ""
        assert info["reload_failures"] == 1 and "UTF-8" in info["last_reload_error"]
        from prometheus_client import generate_latest

        text = generate_latest(served.metrics.registry).decode()
        assert "posters_reload_failures_total 1.0" in text and "posters_bundle_stale 1.0" in text


def test_server_starts_not_serving_on_a_bad_current_then_serves_after_sighup(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    good = bundles.read_current(root)
    (root / "CURRENT").write_bytes(b"\xff\xfe")
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        serve_command(root, port_file, "--no-image-search"),
        cwd=ROOT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 60, "the server to listen")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with PosterClient(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            assert client.health() == "NOT_SERVING"
            bundles.write_current(root, good)
            proc.send_signal(signal.SIGHUP)
            client.wait_until_serving(timeout=30)
            assert client.info()["bundle_version"] == good
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


# ---- item 9: identity by content, not by directory name --------------------------------------------


def test_copied_bundle_is_refused_and_roll_back_is_honoured(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    a = bundles.read_current(root)
    manager = BundleManager(root, image_search=False, poll_interval=3600)
    loads = []
    real = manager._load
    manager._load = lambda build_id: loads.append(build_id) or real(build_id)  # type: ignore[method-assign]
    assert manager.reload() and loads == [a]
    b = "29990101T000000.000000Z-bbbbbb"
    shutil.copytree(root / "builds" / a, root / "builds" / b)  # cp -a builds/A builds/B; echo B > CURRENT
    bundles.write_current(root, b)
    assert not manager.reload() and "lives in directory" in manager.status().last_error
    assert not manager.reload() and loads == [a, b]  # backing off: not re-loaded on every poll
    bundles.write_current(root, a)  # roll back
    assert not manager.reload() and manager.status().last_error == "" and not manager.status().stale
    # the same name with new content is a new bundle: reloaded
    _republish(root, a, "29990101T000000.000000Z-cccccc")
    assert manager.reload()
    items = root / "builds" / "29990101T000000.000000Z-cccccc" / "items.csv"
    items.write_text(items.read_text().replace("item_id", "item_id", 1) + "")
    manifest_path = items.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = "2999-01-01T00:00:00+00:00"  # content changes, name stays
    manifest_path.write_text(json.dumps(manifest))
    assert manager.reload() and manager.current.version == "29990101T000000.000000Z-cccccc"


# ---- item 12: a reload that changes the model or the dimension --------------------------------------


def test_model_or_dimension_change_is_reported_and_can_be_refused(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path, dim=16)
    first = bundles.read_current(root)
    np.savez(tmp_path / "v32.npz", ids=np.arange(50) + 10, vectors=clustered_vectors(50, 32, seed=4))
    strict = BundleManager(root, image_search=False, poll_interval=3600, require_same_model=True)
    lenient = BundleManager(root, image_search=False, poll_interval=3600)
    assert strict.reload() and lenient.reload()
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp_path / "v32.npz"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=0,
        )
    )
    assert not strict.reload() and "require-same-model" in strict.status().last_error
    assert strict.current.version == first
    assert lenient.reload() and lenient.current.dim == 32
    status = lenient.status()
    assert (status.previous_version, status.previous_dimension) == (first, 16)


# ---- item 2: cancelled work stops; admission control; health answered under a flood -------------------


def _huge_one_bit_png(side: int = 6300) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_cancelled_flood_stops_and_health_and_queries_stay_fast(demo_root: Path) -> None:
    admission = AdmissionLimits(query=4, batch=2, image=2, embedding_permits=2)
    png = _huge_one_bit_png()
    assert len(png) < 16_000  # small on the wire, 40 megapixels decoded
    batch = pb.BatchSearchRequest(queries=[pb.Query(image=pb.SearchByImageRequest(image=png))] * 48)
    with serve(demo_root, image_search=True, admission=admission) as served:
        channel = grpc.insecure_channel(served.target)
        stub = pb_grpc.PosterSimilarityStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        flood = [stub.BatchSearch.future(batch, timeout=2.0) for _ in range(8)]
        codes = []
        latencies = []
        for _ in range(5):  # while the flood runs: health and an item query answer within 1 s
            started = time.perf_counter()
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            served.client.similar(1, SearchOptions(k=5))
            latencies.append(time.perf_counter() - started)
        for f in flood:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert max(latencies) < 1.0, latencies
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 6, codes  # two batch slots
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 2, codes
        # the server stops the expired work itself: both admitted calls end soon after their deadline
        assert served.admission.wait_idle(timeout=5.0), served.admission.in_flight()
        started_embeddings = served.manager.embedding_gate.started
        assert started_embeddings < 2 * 48, started_embeddings  # far from all 96 images of the two batches
        assert served.admission.rejected  # counted for metrics
        channel.close()


def test_client_cancel_stops_a_single_image_search(demo_root: Path) -> None:
    png = _huge_one_bit_png()
    with serve(demo_root, image_search=True, admission=AdmissionLimits(embedding_permits=1)) as served:
        channel = grpc.insecure_channel(served.target)
        stub = pb_grpc.PosterSimilarityStub(channel)
        batch = pb.BatchSearchRequest(queries=[pb.Query(image=pb.SearchByImageRequest(image=png))] * 30)
        future = stub.BatchSearch.future(batch)  # no deadline: only the cancel can stop it
        wait_until(lambda: served.manager.embedding_gate.started >= 1, 30, "the batch to start embedding")
        future.cancel()
        assert served.admission.wait_idle(timeout=10.0)
        assert served.manager.embedding_gate.started < 30
        channel.close()


def test_call_guard_and_gate_units() -> None:
    stopping = threading.Event()
    with pytest.raises(Cancelled):
        CallGuard(is_active=lambda: False).check()
    with pytest.raises(DeadlineExceeded):
        CallGuard(time_remaining=lambda: 0.0).check()
    stopping.set()
    with pytest.raises(Exception, match="shutting down"):
        CallGuard(stopping=stopping).check()
    gate = EmbeddingGate(1)
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with gate.permit(CallGuard()):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    assert inside.wait(10)
    with pytest.raises(ResourceExhausted, match="no free permit"), gate.permit(CallGuard(time_remaining=lambda: 0.2)):
        pass
    active = [True]
    threading.Timer(0.1, lambda: active.__setitem__(0, False)).start()
    with pytest.raises(Cancelled), gate.permit(CallGuard(is_active=lambda: active[0])):  # a waiting call stops
        pass
    release.set()
    worker.join()
    assert gate.started == 1


# ---- item 6: auth fails closed ------------------------------------------------------------------------


def test_empty_token_sources_refuse_to_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  \n")
    for extra, env in ((["--token-file", str(tmp_path / "token")], {}), ([], {"POSTERS_TOKEN": " "})):
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", "--index", str(tmp_path), "--no-image-search", *extra],
            capture_output=True,
            text=True,
            cwd=ROOT_DIR,
            timeout=120,
            env={**os.environ, **env},
        )
        assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr, out.stderr
    with pytest.raises(ValueError, match="non-empty"):
        ServiceInterceptor("posters.v1.PosterSimilarity", token=" ")


def test_bearer_scheme_is_case_insensitive_and_duplicates_are_refused(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    with serve(root, token="s3cret") as served:
        channel = grpc.insecure_channel(served.target)
        stub = pb_grpc.PosterSimilarityStub(channel)
        req = pb.GetIndexInfoRequest()
        assert stub.GetIndexInfo(req, metadata=(("authorization", "bearer s3cret"),)).item_count == 200
        assert stub.GetIndexInfo(req, metadata=(("authorization", "BEARER  s3cret "),)).item_count == 200
        for metadata, message in (
            (
                (("authorization", "Bearer s3cret"), ("authorization", "Bearer s3cret")),
                "expected one authorization header, got 2",
            ),
            ((("authorization", "Basic s3cret"),), "scheme 'Basic'"),
            ((("authorization", "Bearer wrong"),), "different token"),
            ((), "got none"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetIndexInfo(req, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in err.value.details()
        channel.close()


# ---- item 12: start-up mistakes give one line and exit 2; --grace bounds shutdown -----------------------


def _serve_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--no-image-search", *args],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        timeout=timeout,
    )


@pytest.mark.parametrize("flag", ["--poll", "--workers", "--grace", "--max-k"])
def test_non_positive_settings_are_usage_errors(tmp_path: Path, flag: str) -> None:
    out = _serve_cli("--index", str(tmp_path), flag, "0")
    assert out.returncode == 2 and "expected a value > 0, got 0" in out.stderr and "Traceback" not in out.stderr


def test_bad_or_expired_tls_files_are_named(tmp_path: Path) -> None:
    pki = self_signed_pki(tmp_path / "pki")
    out = _serve_cli(
        "--index", str(tmp_path), "--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["client_key"])
    )
    assert out.returncode == 2 and "does not match" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "junk.pem").write_text("not a certificate")
    out = _serve_cli(
        "--index", str(tmp_path), "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(pki["server_key"])
    )
    assert out.returncode == 2 and "junk.pem is not a PEM certificate" in out.stderr
    from server.tls import TlsError, check_server_files

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)  # the test certificates last one day
    with pytest.raises(TlsError, match="expired on"):
        check_server_files(pki["server_cert"], pki["server_key"], now=later)


def test_grace_bounds_shutdown_while_work_runs(demo_root: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        serve_command(demo_root, port_file, "--grace", "1"),
        cwd=ROOT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 120, "the server to listen")
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        with PosterClient(target) as client:
            client.wait_until_serving(timeout=60)
            wait_until(lambda: client.info()["image_search"], 120, "image search")
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.PosterSimilarityStub(channel)
        batch = pb.BatchSearchRequest(
            queries=[pb.Query(image=pb.SearchByImageRequest(image=_huge_one_bit_png()))] * 200
        )
        futures = [stub.BatchSearch.future(batch) for _ in range(2)]  # ~minutes of work, no deadline
        wait_until(lambda: not all(f.running() is False for f in futures), 10, "the batches to be sent")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 15, "shutdown was not bounded by --grace"
        for f in futures:
            with pytest.raises(grpc.RpcError):
                f.result()
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- item 12: huge values do not overflow the normalization --------------------------------------------


def test_huge_vector_and_weights_normalize_in_float64(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    s = Searcher(bundles.load_bundle(bundles.current_path(root)))
    x = clustered_vectors(200, 16, seed=1)
    q = x[3] / np.abs(x[3]).max() * 3e38  # float32-representable, but its float32 norm overflows
    got = s.search_vector(q.astype(np.float32), SearchOptions(k=5))
    want = s.search_vector(x[3], SearchOptions(k=5))
    assert [h.item.item_id for h in got.hits] == [h.item.item_id for h in want.hits]
    assert got.hits[0].score > 0.99
    liked = s.similar_to_items([(13, 3e38), (14, 3e38)], options=SearchOptions(k=3))
    plain = s.similar_to_items([(13, 1.0), (14, 1.0)], options=SearchOptions(k=3))
    assert [h.item.item_id for h in liked.hits] == [h.item.item_id for h in plain.hits]


# ---- item 7: the id domain on the request side ------------------------------------------------------------


def test_negative_ids_in_requests_are_invalid_not_silently_dropped(tmp_path: Path) -> None:
    root = _vectors_root(tmp_path)
    s = Searcher(bundles.load_bundle(bundles.current_path(root)))
    from server.errors import InvalidArgument

    for call in (
        lambda: s.similar_to_item(-5),
        lambda: s.get_items([10, -1]),
        lambda: s.similar_to_items([(-3, 1.0)]),
        lambda: s.search_vector(np.ones(16), SearchOptions(candidate_ids=(10, -7))),
    ):
        with pytest.raises(InvalidArgument, match="expected a non-negative int64, got -"):
            call()
    # k results come back in full (no id is mistaken for FAISS's -1 padding)
    assert len(s.similar_to_item(10, SearchOptions(k=50)).hits) == 50
