"""Paths the suite did not reach before (issue #11, item 6): an unexpected fault becomes INTERNAL with a
request id; image search is refused when the bundle's embedder fingerprint differs from the one this server
builds; a server made by ``create_server`` runs with the production FAISS/BLAS settings and one OpenMP thread
per request; and the exact-top-k oracle itself accepts ties and nothing else."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from pathlib import Path

import faiss
import grpc
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from indexer import bundle as bundles
from server import runtime
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.types import ImageQuery, ItemQuery, SearchOptions, VectorQuery
from tests.conftest import assert_exact_topk, clustered_vectors
from tests.grpc_helpers import serve

FAISS_DEFAULT_BLAS_THRESHOLD = 20  # faiss.cvar.distance_compute_blas_threshold out of the box
CLIENT_REQUEST_ID = "req-42"
SECRET = "secret-detail-/var/lib/posters/index.faiss"  # must never reach a client


def _error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


# ---- INTERNAL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["similar_to_item", "batch"])
def test_unexpected_fault_is_internal_with_a_request_id(vectors_root, monkeypatch, caplog, method: str) -> None:
    """A searcher that raises something unexpected: the client gets INTERNAL naming a request id (its own, if
    it sent one), never the exception or a traceback; the server logs the traceback under that id and keeps
    serving."""
    root, ids, x = vectors_root

    def boom(*args, **kwargs):
        raise RuntimeError(SECRET)

    call = {
        "similar_to_item": lambda c: c.similar(int(ids[0])),
        "batch": lambda c: c.batch([ItemQuery(int(ids[0])), VectorQuery(x[1].tolist())]),
    }[method]
    caplog.set_level(logging.ERROR)
    with serve(root) as s:
        monkeypatch.setattr(s.manager.current, method, boom)
        exc = _error(call, s.client)
        assert exc.code() == grpc.StatusCode.INTERNAL, exc.details()
        found = re.fullmatch(r"internal error \(request id (\S+)\)", exc.details())
        assert found, exc.details()
        request_id = found.group(1)
        assert SECRET not in exc.details() and "Traceback" not in exc.details()
        logged = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
        assert len(logged) == 1 and logged[0].exc_info is not None, caplog.records
        assert str(logged[0].exc_info[1]) == SECRET  # the server log has the real fault

        with grpc.insecure_channel(s.target) as channel:  # a client-chosen request id is the one named
            stub = pb_grpc.PosterSimilarityStub(channel)
            request, rpc = (
                (pb.SimilarToItemRequest(item_id=int(ids[0])), stub.SimilarToItem)
                if method == "similar_to_item"
                else (
                    pb.BatchSearchRequest(queries=[pb.Query(item=pb.SimilarToItemRequest(item_id=int(ids[0])))]),
                    stub.BatchSearch,
                )
            )
            exc = _error(rpc, request, metadata=(("x-request-id", CLIENT_REQUEST_ID),), timeout=30)
        assert exc.code() == grpc.StatusCode.INTERNAL
        assert exc.details() == f"internal error (request id {CLIENT_REQUEST_ID})"
        assert any(getattr(r, "request_id", None) == CLIENT_REQUEST_ID for r in caplog.records)

        assert s.client.vector(x[2].tolist(), SearchOptions(k=3)).hits[0].item.item_id == ids[2]
        assert s.client.health() == "SERVING"
        method_name = {"similar_to_item": "SimilarToItem", "batch": "BatchSearch"}[method]
        assert (
            s.metrics.registry.get_sample_value("posters_requests_total", {"method": method_name, "code": "INTERNAL"})
            == 2
        )


# ---- image search and the embedder fingerprint -------------------------------------------------


def test_image_search_refused_when_the_embedder_fingerprint_differs(
    tmp_path: Path, demo_root: Path, demo_catalog: Path
) -> None:
    """A bundle whose manifest names an embedder fingerprint this server does not build (another model
    version, weights or library): the bundle serves, image search is FAILED_PRECONDITION saying why.
    (manifest.json is not among the checksummed files, so editing it needs no re-sealing.)"""
    build_id = bundles.read_current(demo_root)
    root = tmp_path / "root"
    shutil.copytree(demo_root / "builds" / build_id, root / "builds" / build_id)
    (root / "CURRENT").write_text(build_id)
    manifest_path = root / "builds" / build_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    real = manifest["embedder"]["fingerprint"]
    assert "manifest.json" not in manifest["files"]
    other = "f" * len(real)
    assert other != real
    manifest["embedder"]["fingerprint"] = other
    manifest_path.write_text(json.dumps(manifest))

    with serve(root, image_search=True) as s:
        info = s.client.info()
        assert info["bundle_version"] == build_id and not info["image_search"]
        poster = (demo_catalog / "posters" / s.client.items([1])[0].poster).read_bytes()
        exc = _error(s.client.image, poster, SearchOptions(k=3))
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
        assert "fingerprint mismatch" in exc.details()
        assert other[:12] in exc.details() and real[:12] in exc.details()  # expected vs got
        outcome = s.client.batch_outcome([ItemQuery(1), ImageQuery(poster, SearchOptions(k=3))])
        assert [st.code for st in outcome.statuses] == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION]
        assert "fingerprint mismatch" in outcome.statuses[1].message and len(outcome.results[0].result.hits) == 10
        # everything else answers as usual
        assert len(s.client.similar(1, SearchOptions(k=5)).hits) == 5
        assert s.client.find(s.client.items([2])[0].title)[0].item_id == 2
        assert s.client.health() == "SERVING"


# ---- the production FAISS settings --------------------------------------------------------------


def _fresh_thread_omp_threads() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_create_server_applies_the_production_settings(vectors_root, monkeypatch) -> None:
    """A server built by create_server runs with server.runtime's settings (even if the process had others
    before), and every request thread runs FAISS with one OpenMP thread."""
    root, _, x = vectors_root
    faiss.cvar.distance_compute_blas_threshold = FAISS_DEFAULT_BLAS_THRESHOLD  # undo what earlier servers set
    threadpool_limits(limits=2, user_api="blas")
    try:
        before = runtime.current()
        if before.blas_threads == 1 or _fresh_thread_omp_threads() == 1:
            pytest.skip("this machine runs BLAS/OpenMP with one thread anyway: the settings are not observable")
        assert before.blas_threshold == FAISS_DEFAULT_BLAS_THRESHOLD
        with serve(root) as s:
            assert runtime.current() == runtime.ProcessSettings(
                blas_threshold=runtime.BLAS_THRESHOLD, blas_threads=1, omp_wait_policy="PASSIVE"
            )
            searcher = s.manager.current
            original = searcher.search_vector
            seen: list[tuple[str, int]] = []  # appended from gRPC threads: list.append is atomic

            def spy(*args, **kwargs):
                result = original(*args, **kwargs)  # runs FAISS; then read what this thread ran it with
                seen.append((threading.current_thread().name, faiss.omp_get_max_threads()))
                return result

            monkeypatch.setattr(searcher, "search_vector", spy)
            for i in range(8):
                assert s.client.vector(x[i].tolist(), SearchOptions(k=3)).hits
            assert len(seen) == 8
            assert all(name != threading.main_thread().name for name, _ in seen), seen
            assert {threads for _, threads in seen} == {1}, seen
    finally:
        runtime.apply()


# ---- the oracle helper --------------------------------------------------------------------------


def _duplicated_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """100 vectors stored twice (exact ties everywhere), their ids, queries near 20 of them, partner rows."""
    base = clustered_vectors(100, 16, clusters=5, seed=3)
    x = np.vstack([base, base])
    ids = np.arange(200, dtype=np.int64) * 3 + 1
    rng = np.random.default_rng(4)
    q = base[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    partner = np.concatenate([np.arange(100, 200), np.arange(100)])
    return x, ids, q, partner


def test_exact_topk_oracle_accepts_ties_only() -> None:
    x, ids, q, partner = _duplicated_data()
    k = 9  # odd: the k-th place splits a tied pair
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    scores, rows = flat.search(q, k)
    assert_exact_topk(ids[rows], scores, x, ids, q)
    # tied items in the other order, and the k-th item's tied twin in its place, are both right
    swapped = rows.copy()
    for r in range(len(rows)):
        for j in range(0, k - 1, 2):
            swapped[r, j], swapped[r, j + 1] = rows[r, j + 1], rows[r, j]
        swapped[r, k - 1] = partner[rows[r, k - 1]]
    assert (swapped != rows).mean() > 0.9
    assert_exact_topk(ids[swapped], scores, x, ids, q)
    # one wrong id in one of 20 rows (0.6 % of the ids) is wrong
    sims = q[0] @ x.T
    outside = next(r for r in np.argsort(-sims) if r not in rows[0] and partner[r] not in rows[0])
    wrong = ids[rows].copy()
    wrong[0, 4] = ids[outside]
    with pytest.raises(AssertionError, match="query 0 rank 4: .* not a tie"):
        assert_exact_topk(wrong, scores, x, ids, q)
    duplicated = ids[rows].copy()
    duplicated[3, 1] = duplicated[3, 0]
    with pytest.raises(AssertionError, match="duplicate"):
        assert_exact_topk(duplicated, scores, x, ids, q)
    padded = ids[rows].copy()
    padded[5, -1] = -1  # FAISS's padding
    with pytest.raises(AssertionError, match=r"ids \[-1\] are not in the data"):
        assert_exact_topk(padded, scores, x, ids, q)
