"""The search core against exact NumPy oracles: the dense-matrix method, options, errors."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.bundle import Manifest
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from indexer.query_image import ImageSearch, QueryEmbedding, QueryMode, SearchFn, fuse_max
from server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from server.guard import UNGUARDED, CallGuard
from server.searcher import Searcher, SearchLimits
from server.types import ImageQuery, IndexSummary, ItemQuery, ItemsQuery, SearchOptions, SearchResult, VectorQuery
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors


def dense_matrix_predict_by_id(x: np.ndarray, ids: np.ndarray, item_id: int, k: int) -> tuple[list[int], np.ndarray]:
    """The notebooks' method: full cosine matrix in float64, argsort one row, drop the item by id."""
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    sim = x64 @ x64.T
    row = int(np.flatnonzero(ids == item_id)[0])
    order = [o for o in np.argsort(-sim[row], kind="stable") if ids[o] != item_id][:k]
    return ids[order].tolist(), sim[row, order]


@pytest.fixture()
def searcher(vectors_root) -> tuple[Searcher, np.ndarray, np.ndarray]:
    root, ids, x = vectors_root
    return Searcher(bundles.load_bundle(bundles.current_path(root))), ids, x


@pytest.mark.parametrize("k", [1, 10, 20, 50])
def test_similar_to_item_equals_dense_matrix(searcher, k: int) -> None:
    s, ids, x = searcher
    for item_id in ids[::37]:
        got = s.similar_to_item(int(item_id), SearchOptions(k=k))
        want_ids, want_scores = dense_matrix_predict_by_id(x, ids, int(item_id), k)
        assert [h.item.item_id for h in got.hits] == want_ids
        np.testing.assert_allclose([h.score for h in got.hits], want_scores, atol=1e-5)
        assert got.exact


def test_table_and_index_paths_agree(searcher) -> None:
    s, ids, _ = searcher
    assert s.info().neighbour_table_k == 20
    for item_id in ids[::50]:
        table = s.similar_to_item(int(item_id), SearchOptions(k=10))
        # excluding the item itself changes nothing but forces the index path (the table has no exclusions)
        index = s.similar_to_item(int(item_id), SearchOptions(k=10, exclude_ids=(int(item_id),)))
        assert [h.item.item_id for h in table.hits] == [h.item.item_id for h in index.hits]
        np.testing.assert_allclose([h.score for h in table.hits], [h.score for h in index.hits], atol=1e-5)


def test_exclude_candidates_min_score(searcher) -> None:
    s, ids, x = searcher
    q = int(ids[0])
    base = [h.item.item_id for h in s.similar_to_item(q, SearchOptions(k=10)).hits]
    excluded = s.similar_to_item(q, SearchOptions(k=10, exclude_ids=tuple(base[:3])))
    assert [h.item.item_id for h in excluded.hits][:7] == base[3:]
    assert not set(base[:3]) & {h.item.item_id for h in excluded.hits}
    candidates = tuple(int(i) for i in ids[100:130]) + (q,)
    ranked = s.similar_to_item(q, SearchOptions(k=5, candidate_ids=candidates))
    sims = x[100:130] @ x[0]
    assert [h.item.item_id for h in ranked.hits] == ids[100:130][np.argsort(-sims)][:5].tolist()
    assert ranked.exact and ranked.bundle_version == s.version
    assert q not in [h.item.item_id for h in ranked.hits]
    threshold = ranked.hits[2].score
    limited = s.similar_to_item(q, SearchOptions(k=5, candidate_ids=candidates, min_score=threshold))
    assert len(limited.hits) == 3 and all(h.score >= threshold for h in limited.hits)


def test_similar_to_items_is_weighted_centroid(searcher) -> None:
    s, ids, x = searcher
    pos = [(int(ids[1]), 2.0), (int(ids[2]), 1.0)]
    neg = [(int(ids[3]), 0.5)]
    got = s.similar_to_items(pos, neg, SearchOptions(k=8))
    q = 2 * x[1] + x[2] - 0.5 * x[3]
    q /= np.linalg.norm(q)
    sims = x @ q
    order = [o for o in np.argsort(-sims) if o not in (1, 2, 3)][:8]
    assert [h.item.item_id for h in got.hits] == ids[order].tolist()
    np.testing.assert_allclose([h.score for h in got.hits], sims[order], atol=1e-5)


def test_vector_search_normalizes_and_checks_dimension(searcher) -> None:
    s, ids, x = searcher
    got = s.search_vector(x[7] * 42.0, SearchOptions(k=3))
    assert got.hits[0].item.item_id == ids[7] and got.hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidArgument, match=f"dimension expected {x.shape[1]} .* got 5"):
        s.search_vector([1.0] * 5)
    with pytest.raises(InvalidArgument, match="finite"):
        s.search_vector([float("nan")] * x.shape[1])
    with pytest.raises(InvalidArgument, match="non-zero"):
        s.search_vector([0.0] * x.shape[1])


@pytest.mark.parametrize(
    "options,match",
    [
        (SearchOptions(k=-1), "k expected 1..1000"),
        (SearchOptions(k=1001), "got 1001"),
        (SearchOptions(min_score=float("nan")), "min_score"),
        (SearchOptions(nprobe=-3), "nprobe expected 0"),
        (SearchOptions(exclude_ids=tuple(range(10_001))), "at most 10000 ids"),
    ],
    ids=["k-negative", "k-too-big", "min-score-nan", "nprobe-negative", "too-many-ids"],
)
def test_invalid_options(searcher, options: SearchOptions, match: str) -> None:
    s, ids, _ = searcher
    with pytest.raises(InvalidArgument, match=match):
        s.similar_to_item(int(ids[0]), options)


def test_not_found_names_the_id(searcher) -> None:
    s, ids, _ = searcher
    with pytest.raises(NotFound, match="item 999999 is not in bundle"):
        s.similar_to_item(999999)
    with pytest.raises(NotFound, match="candidate item 424242"):
        s.similar_to_item(int(ids[0]), SearchOptions(candidate_ids=(424242,), strict=True))
    with pytest.raises(NotFound, match="positive item 7"):
        s.similar_to_items([(7, 1.0), (int(ids[0]), 1.0)], options=SearchOptions(strict=True))
    with pytest.raises(NotFound, match="expected at least one in bundle .* got none of \\[7\\]"):
        s.similar_to_items([(7, 1.0)])
    with pytest.raises(InvalidArgument, match="weight .* expected > 0"):
        s.similar_to_items([(int(ids[0]), -1.0)])
    with pytest.raises(InvalidArgument, match="at least one"):
        s.similar_to_items([])
    with pytest.raises(InvalidArgument, match="zero vector"):
        s.similar_to_items([(int(ids[0]), 1.0)], [(int(ids[0]), 1.0)])


def test_nprobe_is_ignored_by_flat_indexes(searcher) -> None:
    s, ids, _ = searcher
    assert s.similar_to_item(int(ids[0]), SearchOptions(k=3, nprobe=3)).exact


def test_image_search_unavailable_for_precomputed_and_size_caps(vectors_root) -> None:
    root, _, _ = vectors_root
    s = Searcher(bundles.load_bundle(bundles.current_path(root)))
    with pytest.raises(FailedPrecondition, match="image search is unavailable"):
        s.search_image(b"\x89PNG....")
    with pytest.raises(InvalidArgument, match="0 bytes"):
        s.search_image(b"")
    small = Searcher(bundles.load_bundle(bundles.current_path(root)), SearchLimits(max_image_bytes=10))
    with pytest.raises(ResourceExhausted, match="at most 10 bytes, got 11"):
        small.search_image(b"x" * 11)


def test_min_score_applies_on_every_path(searcher) -> None:
    """min_score cuts the neighbour-table, index and candidate paths alike."""
    s, ids, x = searcher
    item = int(ids[0])
    full = s.similar_to_item(item, SearchOptions(k=10))
    # between the 4th and 5th scores: the table (matrix products) and the index (FAISS kernels) may round the same
    # cosine differently in the last float32 bit, so a threshold equal to a score would test rounding, not paths
    threshold = (full.hits[3].score + full.hits[4].score) / 2
    assert full.hits[3].score - full.hits[4].score > 1e-4  # a clear gap at the cut
    want = [h.item.item_id for h in full.hits[:4]]
    table = s.similar_to_item(item, SearchOptions(k=10, min_score=threshold))
    index = s.similar_to_item(item, SearchOptions(k=10, min_score=threshold, exclude_ids=(item,)))  # index path
    vector = s.search_vector(x[0], SearchOptions(k=10, min_score=threshold))  # the item itself scores 1
    assert [h.item.item_id for h in table.hits] == want
    assert [h.item.item_id for h in index.hits] == want
    assert [h.item.item_id for h in vector.hits] == [item, *want]


def test_limits_are_inclusive(vectors_root) -> None:
    """Exactly at each limit is accepted; one more is refused."""
    root, ids, x = vectors_root
    s = Searcher(
        bundles.load_bundle(bundles.current_path(root)),
        SearchLimits(max_k=25, max_batch=3, max_ids=4, max_image_bytes=10),
    )
    assert len(s.search_vector(x[0], SearchOptions(k=25)).hits) == 25
    with pytest.raises(InvalidArgument, match="k expected 1..25 .* got 26"):
        s.search_vector(x[0], SearchOptions(k=26))
    four = tuple(int(i) for i in ids[1:5])
    assert s.similar_to_item(int(ids[0]), SearchOptions(k=3, exclude_ids=four)).hits
    with pytest.raises(InvalidArgument, match="at most 4 ids, got 5"):
        s.similar_to_item(int(ids[0]), SearchOptions(k=3, exclude_ids=(*four, int(ids[5]))))
    assert len(s.batch([VectorQuery(x[0])] * 3)) == 3
    with pytest.raises(InvalidArgument, match="at most 3, got 4"):
        s.batch([VectorQuery(x[0])] * 4)
    with pytest.raises(FailedPrecondition):  # 10 bytes pass the size check; this bundle has no embedder
        s.search_image(b"x" * 10)
    with pytest.raises(ResourceExhausted, match="at most 10 bytes, got 11"):
        s.search_image(b"x" * 11)
    with pytest.raises(InvalidArgument, match="weight of item .* expected > 0, got 0.0"):
        s.similar_to_items([(int(ids[0]), 0.0)])


def test_item_id_zero_is_an_ordinary_id(tmp_path: Path) -> None:
    """Id 0 is a catalog id like any other (only FAISS's -1 padding is dropped), on the index and table paths."""
    x = clustered_vectors(60, 8, clusters=3, seed=12)
    ids = np.arange(60, dtype=np.int64)
    np.savez(tmp_path / "v.npz", ids=ids, vectors=x)
    build(
        BuildConfig(
            index_root=tmp_path / "root",
            precomputed=PrecomputedConfig(tmp_path / "v.npz"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=5,
        )
    )
    s = Searcher(bundles.load_bundle(bundles.current_path(tmp_path / "root")))
    vector = [s.search_vector(v, SearchOptions(k=5)) for v in x]
    assert_exact_topk(*result_arrays(vector), x, ids, x)
    assert vector[0].hits[0].item.item_id == 0
    table = [s.similar_to_item(int(i), SearchOptions(k=5)) for i in ids]
    assert_exact_topk(*result_arrays(table), x, ids, x, exclude_self=True)
    assert any(0 in [h.item.item_id for h in r.hits] for r in table)


class _StoredVectorEmbedder:
    """Stands in for the CNN: the "image" bytes name a row of ``x``, returned scaled (not normalized)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.guards: list[CallGuard] = []

    def embed_image(self, data: bytes, guard: CallGuard = UNGUARDED) -> np.ndarray:
        self.guards.append(guard)
        return self.x[int(data)] * 3.0

    def search_image(
        self, data: bytes, k: int, search: SearchFn, mode: str, guard: CallGuard = UNGUARDED
    ) -> ImageSearch:
        """The whole-image path: one window (this stored vector), searched by the searcher, fused as the real one."""
        vector = self.embed_image(data, guard)
        vectors = (vector / np.linalg.norm(vector))[None].astype(np.float32)
        scores, found = search(vectors, k)
        quad = np.array([[[0, 0], [1, 0], [1, 1], [0, 1]]], np.float32)
        return ImageSearch(fuse_max(scores, found, k), QueryEmbedding(vectors, quad, (1, 1)), QueryMode.WHOLE, False)


def test_image_search_embeds_then_searches_with_the_options(vectors_root) -> None:
    root, ids, x = vectors_root
    embedder = _StoredVectorEmbedder(x)
    s = Searcher(bundles.load_bundle(bundles.current_path(root)), image_embedder=embedder)
    assert s.info().image_search
    guard = CallGuard()
    options = SearchOptions(k=4, exclude_ids=(int(ids[7]),))
    got = s.search_image(b"7", options, guard)
    assert len(got.hits) == 4 and got.exact
    assert_exact_topk(*result_arrays([got]), np.delete(x, 7, axis=0), np.delete(ids, 7), x[7:8])
    assert embedder.guards == [guard]  # the caller's guard reaches the embedder
    batch = s.batch([ImageQuery(b"7", options)], guard)
    assert [h.item.item_id for h in batch[0].hits] == [h.item.item_id for h in got.hits]
    stopping = CallGuard(stopping=threading.Event())
    stopping.stopping.set()
    with pytest.raises(Unavailable, match="shutting down"):
        s.search_image(b"7", options, stopping)
    assert len(embedder.guards) == 2  # a stopped call never reaches the embedder


def test_info_describes_the_bundle(vectors_root) -> None:
    root, ids, x = vectors_root
    b = bundles.load_bundle(bundles.current_path(root))
    before = time.time()
    info = Searcher(b).info()
    assert info == IndexSummary(
        bundle_version=b.version,
        model=b.manifest.model,
        dimension=x.shape[1],
        index_type="flat",
        item_count=len(ids),
        failure_count=b.manifest.failure_count,
        default_nprobe=0,
        neighbour_table_k=20,
        image_search=False,
        loaded_at=info.loaded_at,
    )
    assert b.version == bundles.read_current(root) and before <= info.loaded_at <= time.time()


IVF_ITEMS, IVF_QUERIES, IVF_DIM, IVF_NLIST, IVF_K = 3000, 100, 32, 30, 10


@dataclass(frozen=True)
class IvfCase:
    root: Path
    searcher: Searcher
    reference: faiss.Index  # the same bundle loaded a second time: FAISS's own answers
    manifest: Manifest
    ids: np.ndarray
    x: np.ndarray
    q: np.ndarray  # held-out queries


def build_ivf_case(folder: Path) -> IvfCase:
    """A seeded IVF bundle on which nprobe matters: 200 loose clusters over 30 lists, so one probe misses
    neighbours that the build's tuned nprobe (strictly between 1 and nlist) finds, and that all lists find."""
    everything = clustered_vectors(IVF_ITEMS + IVF_QUERIES, IVF_DIM, clusters=200, spread=0.6, seed=8)
    x, q = everything[:IVF_ITEMS], everything[IVF_ITEMS:]
    ids = np.arange(IVF_ITEMS, dtype=np.int64) * 7 + 50
    np.savez(folder / "v.npz", ids=ids, vectors=x)
    root = folder / "ivf"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(folder / "v.npz"),
            index=IndexSpec(kind="ivf", nlist=IVF_NLIST),
            pipeline=QUIET,
            neighbours_k=0,
        )
    )
    path = bundles.current_path(root)
    reference = bundles.load_bundle(path)
    return IvfCase(root, Searcher(bundles.load_bundle(path)), reference.index, reference.manifest, ids, x, q)


@pytest.fixture(scope="module")
def ivf(tmp_path_factory: pytest.TempPathFactory) -> IvfCase:
    return build_ivf_case(tmp_path_factory.mktemp("ivf"))


def faiss_answer(case: IvfCase, queries: np.ndarray, nprobe: int, k: int = IVF_K) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's own (ids, scores) at ``nprobe``."""
    scores, found = case.reference.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return found, scores


def result_arrays(results: list[SearchResult]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([[h.item.item_id for h in r.hits] for r in results], dtype=np.int64),
        np.array([[h.score for h in r.hits] for r in results]),
    )


def ivf_recall(found: np.ndarray, case: IvfCase) -> float:
    """recall@k of ``found`` (ids, nq x k) against brute force in float64."""
    truth = case.ids[np.argsort(-(case.q.astype(np.float64) @ case.x.astype(np.float64).T), axis=1)[:, :IVF_K]]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / IVF_K for f, t in zip(found, truth)]))


def test_ivf_request_nprobe_is_used(ivf: IvfCase) -> None:
    """Each request's nprobe gives exactly FAISS's answer at that nprobe: one probe finds strictly fewer true
    neighbours than the tuned value, which finds fewer than probing every list (exact)."""
    nlist, tuned = ivf.manifest.index.nlist, ivf.manifest.index.nprobe
    assert nlist == IVF_NLIST and 1 < tuned < nlist, ivf.manifest.index
    recalls = {}
    for nprobe in sorted({1, 2, tuned, nlist}):
        results = [ivf.searcher.search_vector(v, SearchOptions(k=IVF_K, nprobe=nprobe)) for v in ivf.q]
        found, scores = result_arrays(results)
        want_ids, want_scores = faiss_answer(ivf, ivf.q, nprobe)
        np.testing.assert_array_equal(found, want_ids, err_msg=f"nprobe={nprobe}")
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        assert [r.exact for r in results] == [nprobe == nlist] * len(results), nprobe
        recalls[nprobe] = ivf_recall(found, ivf)
    assert recalls[1] < recalls[tuned] < recalls[nlist] == 1.0, recalls

    # vector queries in one batch share one FAISS call with the request's nprobe
    batch = ivf.searcher.batch([VectorQuery(v, SearchOptions(k=IVF_K, nprobe=1)) for v in ivf.q])
    np.testing.assert_array_equal(result_arrays(batch)[0], faiss_answer(ivf, ivf.q, 1)[0])

    # item queries (this bundle has no neighbour table): an item whose one-probe answer differs from the tuned one
    vectors = np.vstack([ivf.reference.reconstruct(int(i)) for i in ivf.ids[:50]])
    one, _ = faiss_answer(ivf, vectors, 1, IVF_K + 1)
    default, _ = faiss_answer(ivf, vectors, tuned, IVF_K + 1)
    row = next(r for r in range(len(vectors)) if not np.array_equal(one[r], default[r]))
    item = int(ivf.ids[row])
    got = ivf.searcher.similar_to_item(item, SearchOptions(k=IVF_K, nprobe=1))
    assert [h.item.item_id for h in got.hits] == [i for i in one[row].tolist() if i != item][:IVF_K]


def test_ivf_default_nprobe_is_the_bundles_tuned_value(ivf: IvfCase) -> None:
    """nprobe 0 means the value the build tuned and stored in the manifest (not 1, not nlist)."""
    nlist, tuned = ivf.manifest.index.nlist, ivf.manifest.index.nprobe
    assert ivf.manifest.index.recall >= ivf.manifest.index.target_recall
    assert ivf.searcher.info().default_nprobe == tuned
    at = {p: faiss_answer(ivf, ivf.q, p)[0] for p in (1, tuned, nlist)}
    assert not np.array_equal(at[tuned], at[1]) and not np.array_equal(at[tuned], at[nlist])  # distinguishable
    results = [ivf.searcher.search_vector(v, SearchOptions(k=IVF_K)) for v in ivf.q]
    np.testing.assert_array_equal(result_arrays(results)[0], at[tuned])
    assert not any(r.exact for r in results)
    batch = ivf.searcher.batch([VectorQuery(v, SearchOptions(k=IVF_K)) for v in ivf.q])
    np.testing.assert_array_equal(result_arrays(batch)[0], at[tuned])


def test_ivf_exact_and_nprobe_limits(ivf: IvfCase) -> None:
    results = [ivf.searcher.search_vector(v, SearchOptions(k=IVF_K, exact=True)) for v in ivf.q]
    found, scores = result_arrays(results)
    assert_exact_topk(found, scores, ivf.x, ivf.ids, ivf.q)
    assert all(r.exact for r in results)
    with pytest.raises(InvalidArgument, match=f"nprobe expected 0 .* or 1..{IVF_NLIST}, got {IVF_NLIST + 1}"):
        ivf.searcher.search_vector(ivf.q[0], SearchOptions(nprobe=IVF_NLIST + 1))
    # item queries on IVF reconstruct the item's vector by id
    got = ivf.searcher.similar_to_item(int(ivf.ids[5]), SearchOptions(k=5, exact=True))
    found, scores = result_arrays([got])
    assert_exact_topk(found, scores, np.delete(ivf.x, 5, axis=0), np.delete(ivf.ids, 5), ivf.x[5:6])


COALESCE_THREADS = 4
COALESCE_QUERIES = 60
COALESCE_NOISE = 0.05


def test_coalesced_search_equals_the_oracle_under_concurrency(vectors_root) -> None:
    """coalesce=True (flat bundle): vector and index-path item queries answer exactly, alone and from 4 threads
    at once. Which concurrent queries share a FAISS call is up to timing (on 2 cores a few percent do);
    tests/test_coalescer.py forces a shared call deterministically."""
    root, ids, x = vectors_root
    path = bundles.current_path(root)
    coalesced = Searcher(bundles.load_bundle(path), coalesce=True)
    plain = Searcher(bundles.load_bundle(path))
    rng = np.random.default_rng(21)
    q = x[:COALESCE_QUERIES] + COALESCE_NOISE * rng.normal(size=(COALESCE_QUERIES, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    item_k = coalesced.info().neighbour_table_k + 5  # above the table: answered through the index

    def run(s: Searcher, order: np.ndarray) -> tuple[list[SearchResult], list[SearchResult]]:
        vector = [s.search_vector(q[i], SearchOptions(k=10)) for i in order]
        item = [s.similar_to_item(int(ids[i]), SearchOptions(k=item_k)) for i in order]
        back = np.argsort(order)
        return [vector[i] for i in back], [item[i] for i in back]

    def check(vector: list[SearchResult], item: list[SearchResult]) -> None:
        assert [len(r.hits) for r in vector] == [10] * COALESCE_QUERIES
        assert [len(r.hits) for r in item] == [item_k] * COALESCE_QUERIES
        assert_exact_topk(*result_arrays(vector), x, ids, q)
        assert_exact_topk(*result_arrays(item), x, ids, x[:COALESCE_QUERIES], exclude_self=True)
        assert all(r.exact for r in vector + item)

    everything = np.arange(COALESCE_QUERIES)
    check(*run(plain, everything))
    check(*run(coalesced, everything))
    barrier = threading.Barrier(COALESCE_THREADS)
    answers: list[tuple | None] = [None] * COALESCE_THREADS
    errors: list[BaseException | None] = [None] * COALESCE_THREADS

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            answers[n] = run(coalesced, np.random.default_rng(n).permutation(COALESCE_QUERIES))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors[n] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(COALESCE_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a search thread hung"
    assert errors == [None] * COALESCE_THREADS, errors
    for answer in answers:
        check(*answer)


def test_batch_matches_single_queries(searcher) -> None:
    s, ids, x = searcher
    queries = [VectorQuery(x[i], SearchOptions(k=4)) for i in range(10)] + [
        ItemQuery(int(ids[3]), SearchOptions(k=3)),
        ItemsQuery(((int(ids[4]), 1.0),), (), SearchOptions(k=2)),
    ]
    batch = s.batch(queries)
    assert len(batch) == len(queries)
    for q, r in zip(queries, batch):
        single = s.search(q)
        assert [h.item.item_id for h in r.hits] == [h.item.item_id for h in single.hits]
        assert len(r.hits) == q.options.k  # each query's own options reach the search
    good, bad = s.batch([VectorQuery(x[0]), VectorQuery([1.0, 2.0])])  # one bad query fails alone
    assert isinstance(good, SearchResult) and len(good.hits) == 10
    assert isinstance(bad, InvalidArgument) and str(bad).startswith("query 1: vector dimension")
    with pytest.raises(InvalidArgument, match="at most 256"):
        s.batch([VectorQuery(x[0])] * 257)


def test_find_items_ranks_exact_then_prefix(tmp_path: Path, demo_root: Path) -> None:
    s = Searcher(bundles.load_bundle(bundles.current_path(demo_root)))
    title = s.get_items([1]).items[0].title  # "Name (year)"
    name = title.rsplit(" (", 1)[0]
    found = s.find_items(name.upper()).items
    assert found[0].item_id == 1
    assert all(name.lower() in i.title.lower() for i in found)
    assert s.find_items(name, limit=1).items == found[:1]
    with pytest.raises(InvalidArgument, match="non-empty"):
        s.find_items("   ")
    assert s.find_items("zzzz-no-such-title").items == []
