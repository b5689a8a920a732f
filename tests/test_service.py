"""Integration tests over a real in-process gRPC server on 127.0.0.1:0."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.precomputed import PrecomputedConfig
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.searcher import SearchLimits
from server.types import ItemQuery, SearchOptions, VectorQuery
from tests.conftest import DEMO_COUNT, QUIET, clustered_vectors, jpeg_bytes
from tests.grpc_helpers import METHODS, Served, raw_call, self_signed_pki, serve
from tests.hostile import pixel_bomb_png
from tests.test_searcher import IVF_K, build_ivf_case, dense_matrix_predict_by_id, faiss_answer, result_arrays


@pytest.fixture(scope="module")
def served(demo_root: Path) -> Iterator[Served]:
    with serve(demo_root, image_search=True) as s:
        yield s


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _vectors(root: Path) -> tuple[np.ndarray, np.ndarray]:
    b = bundles.load_bundle(bundles.current_path(root))
    ids = b.items["item_id"].to_numpy()
    return ids, np.vstack([b.index.reconstruct(int(i)) for i in ids])


def test_similar_to_item_equals_dense_matrix_over_grpc(served: Served, demo_root: Path) -> None:
    ids, x = _vectors(demo_root)
    for item_id in ids[::7]:
        for k, options in ((10, SearchOptions(k=10)), (25, SearchOptions(k=25, exact=True))):  # table and index
            got = served.client.similar(int(item_id), options)
            want_ids, want_scores = dense_matrix_predict_by_id(x, ids, int(item_id), k)
            assert [h.item.item_id for h in got.hits] == want_ids
            np.testing.assert_allclose([h.score for h in got.hits], want_scores, atol=1e-5)
            assert got.exact and got.bundle_version == bundles.read_current(demo_root)


def test_every_rpc_and_option(served: Served, demo_root: Path, demo_catalog: Path) -> None:
    c = served.client
    ids, x = _vectors(demo_root)
    first = c.similar(1, SearchOptions(k=5))
    hit = first.hits[0]
    assert hit.item.title and hit.item.genres and hit.item.poster.endswith(".jpg") and hit.item.tmdb_id > 0
    assert 1 not in [h.item.item_id for h in first.hits]
    excl = c.similar(1, SearchOptions(k=5, exclude_ids=(hit.item.item_id,)))
    assert hit.item.item_id not in [h.item.item_id for h in excl.hits]
    cands = c.similar(1, SearchOptions(k=3, candidate_ids=(5, 6, 7, 8)))
    assert {h.item.item_id for h in cands.hits} <= {5, 6, 7, 8} and len(cands.hits) == 3
    high = c.similar(1, SearchOptions(k=30, min_score=first.hits[2].score))
    assert [h.item.item_id for h in high.hits] == [h.item.item_id for h in first.hits[:3]]
    ignored = c.similar(1, SearchOptions(k=5, nprobe=4)).hits  # nprobe ignored by flat (index path, not the table)
    assert [h.item for h in ignored] == [h.item for h in first.hits]
    np.testing.assert_allclose([h.score for h in ignored], [h.score for h in first.hits], atol=1e-5)
    like = c.like([(1, 1.0), (2, 3.0)], [(3, 1.0)], SearchOptions(k=4))
    assert not {1, 2, 3} & {h.item.item_id for h in like.hits} and len(like.hits) == 4
    vec = c.vector(x[3].tolist(), SearchOptions(k=2))
    assert vec.hits[0].item.item_id == ids[3] and vec.hits[0].score == pytest.approx(1.0, abs=1e-5)
    batch = c.batch([ItemQuery(1, SearchOptions(k=5)), VectorQuery(x[3].tolist(), SearchOptions(k=2))])
    assert batch[0].hits == first.hits and batch[1].hits == vec.hits
    name = c.items([4])[0].title.rsplit(" (", 1)[0]
    assert c.find(name.lower())[0].title.startswith(name)
    assert [i.item_id for i in c.items([3, 1])] == [3, 1]
    info = c.info()
    assert info["item_count"] == DEMO_COUNT and info["dimension"] == x.shape[1] and info["index_type"] == "flat"
    assert (
        info["image_search"] and info["neighbour_table_k"] == 20 and info["manifest"]["model"] == "efficientnet_lite0"
    )


def test_search_by_image_of_own_poster(served: Served, demo_catalog: Path) -> None:
    for item_id in (1, 9, 17):
        item = served.client.items([item_id])[0]
        result = served.client.image((demo_catalog / "posters" / item.poster).read_bytes(), SearchOptions(k=3))
        assert result.hits[0].item.item_id == item_id
        assert result.hits[0].score >= 0.99


@pytest.mark.parametrize(
    "call,code,message",
    [
        (lambda c: c.similar(1, SearchOptions(k=-1)), "INVALID_ARGUMENT", "k expected 1..1000"),
        (lambda c: c.similar(1, SearchOptions(k=5000)), "INVALID_ARGUMENT", "got 5000"),
        (lambda c: c.vector([0.1] * 7), "INVALID_ARGUMENT", "dimension expected 1280"),
        (lambda c: c.vector([float("nan")] * 1280), "INVALID_ARGUMENT", "finite"),
        (lambda c: c.vector([float("inf")] * 1280), "INVALID_ARGUMENT", "finite"),
        (lambda c: c.image(b""), "INVALID_ARGUMENT", "0 bytes"),
        (lambda c: c.image(b"<html>not an image</html>"), "INVALID_ARGUMENT", "decodable"),
        (lambda c: c.image(pixel_bomb_png()), "RESOURCE_EXHAUSTED", "pixels"),
        (lambda c: c.image(b"\xff" * (SearchLimits().max_image_bytes + 1)), "RESOURCE_EXHAUSTED", "bytes"),
        (lambda c: c.find(""), "INVALID_ARGUMENT", "non-empty"),
        (lambda c: c.like([]), "INVALID_ARGUMENT", "at least one"),
        (lambda c: c.batch([]), "INVALID_ARGUMENT", "at least one"),
        (lambda c: c.items([]), "INVALID_ARGUMENT", "at least one"),
        (lambda c: c.similar(424242), "NOT_FOUND", "item 424242"),
        (lambda c: c.like([(1, 1.0), (777777, 1.0)], options=SearchOptions(strict=True)), "NOT_FOUND", "777777"),
        (lambda c: c.like([(777777, 1.0)]), "NOT_FOUND", "got none of [777777]"),
        (lambda c: c.items([1, 31337], strict=True), "NOT_FOUND", "31337"),
    ],
    ids=[
        "k-negative",
        "k-over-cap",
        "wrong-dim",
        "nan",
        "inf",
        "empty-image",
        "undecodable-image",
        "pixel-bomb",
        "image-bytes",
        "empty-title",
        "no-positives",
        "empty-batch",
        "no-ids",
        "unknown-item",
        "unknown-positive-strict",
        "no-known-positive",
        "unknown-get-strict",
    ],
)
def test_error_statuses(served: Served, call, code: str, message: str) -> None:
    got, details = _code(call, served.client)
    assert got.name == code, details
    assert message in details


def test_message_size_cap(vectors_root) -> None:
    """Requests above the gRPC message cap (image limit + 1 MiB) are refused by gRPC itself."""
    from server.client import PosterClient

    root, _, _ = vectors_root
    limits = SearchLimits(max_image_bytes=64 * 1024)
    with serve(root, limits=limits) as s:
        with PosterClient(s.target, timeout=30) as c:
            code, details = _code(c.image, b"\0" * (limits.max_image_bytes + 2 * 1024 * 1024))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            code, details = _code(c.image, b"\0" * (limits.max_image_bytes + 1))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 65536 bytes" in details
        assert s.client.health() == "SERVING"


def test_hostile_uploads(served: Served) -> None:
    """Every odd-but-valid image is answered; every bad one gets INVALID_ARGUMENT/RESOURCE_EXHAUSTED."""
    from tests.hostile import bad_files, odd_files

    for name, data in odd_files().items():
        result = served.client.image(data, SearchOptions(k=2))
        assert len(result.hits) == 2, name
    for name, data in bad_files().items():
        code, details = _code(served.client.image, data)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (name, code)
        assert details, name
    assert served.client.health() == "SERVING"


def test_malformed_request_bytes_are_invalid_argument(served: Served) -> None:
    for method in METHODS:
        code = raw_call(served.client.channel, method, b"\xff\xff\xff\xff garbage")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method


def test_unavailable_then_health_transition(tmp_path: Path, vectors_root) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with serve(root) as s, grpc.insecure_channel(s.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert s.client.health() == "NOT_SERVING"
        assert s.client.health("posters.v1.PosterSimilarity") == "NOT_SERVING"
        code, details = _code(s.client.similar, 1)
        assert code == grpc.StatusCode.UNAVAILABLE and "no index bundle" in details
        src, _, _ = vectors_root
        (root / "builds").mkdir()
        build_id = bundles.read_current(src)
        import shutil

        shutil.copytree(src / "builds" / build_id, root / "builds" / build_id)
        (root / "CURRENT").write_text(build_id)
        assert s.manager.reload()
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # the stream saw the transition
        watch.cancel()
        assert s.client.health() == "SERVING"
        assert s.client.info()["bundle_version"] == build_id


def test_reflection_lists_the_service(served: Served) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = ProtoReflectionDescriptorDatabase(served.client.channel).get_services()
    assert "posters.v1.PosterSimilarity" in services and "grpc.health.v1.Health" in services


def _publish_vectors(root: Path, tmp: Path, seed: int, n: int = 400) -> str:
    x = clustered_vectors(n, 16, clusters=8, seed=seed)
    np.savez(tmp / f"v{seed}.npz", ids=np.arange(1, n + 1), vectors=x)
    return build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp / f"v{seed}.npz"),
            pipeline=QUIET,
            neighbours_k=10,
            keep_builds=10,
        )
    ).build_id


def test_hot_reload_under_concurrent_queries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    versions = [_publish_vectors(root, tmp_path, 0)]
    workers = 4
    # each worker writes only its own slot: no shared counter, no lock needed
    errors: list[list[str]] = [[] for _ in range(workers)]
    seen: list[set[str]] = [set() for _ in range(workers)]
    counts = [0] * workers
    stop = threading.Event()
    with serve(root) as s:

        def worker(n: int) -> None:
            rng = np.random.default_rng(n)
            while not stop.is_set():
                try:
                    r = s.client.similar(int(rng.integers(1, 401)), SearchOptions(k=5))
                    seen[n].add(r.bundle_version)
                    assert len(r.hits) == 5
                    v = s.client.vector(rng.normal(size=16).tolist(), SearchOptions(k=3))
                    seen[n].add(v.bundle_version)
                    counts[n] += 2
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors[n].append(repr(exc))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
        for t in threads:
            t.start()
        for seed in range(1, 6):
            versions.append(_publish_vectors(root, tmp_path, seed))
            assert s.manager.reload()
        stop.set()
        for t in threads:
            t.join()
        assert s.client.info()["bundle_version"] == versions[-1]
    failures = [e for per_worker in errors for e in per_worker]
    versions_seen = set().union(*seen)
    assert not failures, failures[:3]
    assert all(c > 0 for c in counts) and sum(counts) > 50 and len(versions_seen) >= 2, (counts, versions_seen)
    assert versions_seen <= set(versions), versions_seen


def test_polling_picks_up_a_new_bundle(tmp_path: Path) -> None:
    from server.reloader import BundleManager

    root = tmp_path / "root"
    first = _publish_vectors(root, tmp_path, 0)
    manager = BundleManager(root, image_search=False, poll_interval=0.05)
    assert manager.reload() and manager.current.version == first
    swapped = threading.Event()
    manager.add_listener(lambda searcher: swapped.set())
    manager.start()
    try:
        second = _publish_vectors(root, tmp_path, 1)
        assert swapped.wait(60), "the watcher did not load the new bundle"
        assert manager.current.version == second
    finally:
        manager.stop()


def test_corrupt_new_bundle_refused_old_keeps_serving(tmp_path: Path) -> None:
    root = tmp_path / "root"
    good = _publish_vectors(root, tmp_path, 0)
    with serve(root) as s:
        bad = _publish_vectors(root, tmp_path, 1)
        index_file = root / "builds" / bad / "index.faiss"
        index_file.write_bytes(index_file.read_bytes()[:100])
        assert not s.manager.reload()
        assert "index.faiss" in (s.manager.last_error or "")
        assert s.client.info()["bundle_version"] == good
        assert s.client.similar(3, SearchOptions(k=2)).bundle_version == good
        assert s.client.health() == "SERVING"
        (root / "builds" / bad / "manifest.json").write_text("{")
        assert not s.manager.reload(force=True)
        assert "manifest.json" in s.manager.last_error
        fixed = _publish_vectors(root, tmp_path, 2)
        assert s.manager.reload()
        assert s.client.info()["bundle_version"] == fixed


def test_request_id_and_metrics(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:  # the generated stub: the client hides metadata
        _, call = pb_grpc.PosterSimilarityStub(channel).SimilarToItem.with_call(
            pb.SimilarToItemRequest(item_id=1), metadata=(("x-request-id", "abc123"),), timeout=30
        )
    assert ("x-request-id", "abc123") in call.trailing_metadata()
    _code(served.client.similar, 999999)
    text = __import__("prometheus_client").generate_latest(served.metrics.registry).decode()
    assert 'posters_requests_total{code="OK",method="SimilarToItem"}' in text
    assert 'posters_requests_total{code="NOT_FOUND",method="SimilarToItem"}' in text
    assert "posters_bundle_items 40.0" in text


def test_metrics_http_endpoint(served: Served) -> None:
    import urllib.request

    served.client.similar(2, SearchOptions(k=3))
    port = served.metrics.serve_http(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'posters_requests_total{code="OK",method="SimilarToItem"}' in text
    assert "posters_request_seconds_bucket" in text and "posters_bundle_info{" in text


def test_bearer_token_auth(vectors_root) -> None:
    root, _, _ = vectors_root
    with serve(root, token="s3cret") as s:
        code, details = _code(s.client.similar, 100)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "got none" in details
        from server.client import PosterClient

        with PosterClient(s.target, token="wrong") as bad:
            assert _code(bad.similar, 100)[0] == grpc.StatusCode.UNAUTHENTICATED
        with PosterClient(s.target, token="s3cret") as good:
            assert good.similar(100, SearchOptions(k=2)).hits
        assert s.client.health() == "SERVING"  # health checks need no token


def test_tls_and_mtls(tmp_path: Path, vectors_root) -> None:
    from server.app import TlsConfig
    from server.client import PosterClient

    root, _, _ = vectors_root
    pki = self_signed_pki(tmp_path / "pki")
    with serve(
        root,
        tls=TlsConfig(pki["server_cert"], pki["server_key"]),
        client_kwargs={"tls_ca": pki["ca_cert"], "timeout": 10},
    ) as s:
        assert s.client.similar(100, SearchOptions(k=1)).hits
        with PosterClient(s.target, timeout=3) as plaintext:
            assert _code(plaintext.similar, 100)[0] == grpc.StatusCode.UNAVAILABLE
    tls = TlsConfig(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    with serve(root, tls=tls, token="t0k", client_kwargs={"tls_ca": pki["ca_cert"], "timeout": 3}) as s:
        assert _code(s.client.similar, 100)[0] == grpc.StatusCode.UNAVAILABLE  # no client certificate
        with PosterClient(
            s.target,
            tls_ca=pki["ca_cert"],
            client_cert=pki["client_cert"],
            client_key=pki["client_key"],
            token="t0k",
            timeout=10,
        ) as mutual:
            assert mutual.similar(100, SearchOptions(k=1)).hits


def test_health_watch_reports_serving(served: Served) -> None:
    served.client.wait_until_serving(timeout=10)  # returns on the Watch stream's first SERVING
    with grpc.insecure_channel(served.target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()


def test_image_query_of_real_photo_copy(served: Served, photos) -> None:
    result = served.client.image(jpeg_bytes(photos["coffee"]), SearchOptions(k=3))
    assert len(result.hits) == 3 and all(-1.0 <= h.score <= 1.0 for h in result.hits)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)


def test_nprobe_travels_over_grpc(tmp_path: Path) -> None:
    """On an IVF bundle the client's nprobe reaches FAISS (vector, batch and item queries); 0 means the
    bundle's tuned value. Each answer equals FAISS's own at that nprobe, and the three probe counts used
    answer differently on these queries, so dropping nprobe anywhere on the way shows."""
    case = build_ivf_case(tmp_path)
    nlist, tuned = case.manifest.index.nlist, case.manifest.index.nprobe
    at = {p: faiss_answer(case, case.q, p)[0] for p in (1, tuned, nlist)}
    assert 1 < tuned < nlist and len({a.tobytes() for a in at.values()}) == 3
    with serve(case.root) as s:
        assert s.client.info()["default_nprobe"] == tuned
        for nprobe, want in ((0, at[tuned]), (1, at[1]), (nlist, at[nlist])):
            results = [s.client.vector(v.tolist(), SearchOptions(k=IVF_K, nprobe=nprobe)) for v in case.q]
            np.testing.assert_array_equal(result_arrays(results)[0], want, err_msg=f"nprobe={nprobe}")
            assert [r.exact for r in results] == [nprobe == nlist] * len(results)
        batch = s.client.batch([VectorQuery(v.tolist(), SearchOptions(k=IVF_K, nprobe=1)) for v in case.q])
        np.testing.assert_array_equal(result_arrays(batch)[0], at[1])
        vectors = np.vstack([case.reference.reconstruct(int(i)) for i in case.ids[:50]])
        one = faiss_answer(case, vectors, 1, IVF_K + 1)[0]
        default = faiss_answer(case, vectors, tuned, IVF_K + 1)[0]
        row = next(r for r in range(len(vectors)) if not np.array_equal(one[r], default[r]))
        item = int(case.ids[row])
        got = s.client.similar(item, SearchOptions(k=IVF_K, nprobe=1))
        assert [h.item.item_id for h in got.hits] == [i for i in one[row].tolist() if i != item][:IVF_K]
