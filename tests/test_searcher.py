"""The search core against exact NumPy oracles: the dense-matrix method, options, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from server.searcher import SearchLimits, Searcher
from server.types import ItemQuery, ItemsQuery, SearchOptions, VectorQuery
from tests.conftest import QUIET, clustered_vectors


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


def _ivf_searcher(tmp_path: Path) -> tuple[Searcher, np.ndarray, np.ndarray]:
    x = clustered_vectors(3000, 32, clusters=30, seed=8)
    ids = np.arange(3000, dtype=np.int64) + 50
    np.savez(tmp_path / "v.npz", ids=ids, vectors=x)
    build(BuildConfig(index_root=tmp_path / "ivf", precomputed=PrecomputedConfig(tmp_path / "v.npz"),
                      index=IndexSpec(kind="ivf", nlist=30), pipeline=QUIET, neighbours_k=0))
    return Searcher(bundles.load_bundle(bundles.current_path(tmp_path / "ivf"))), ids, x


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
    assert s.table_k == 20
    for item_id in ids[::50]:
        table = s.similar_to_item(int(item_id), SearchOptions(k=10))
        index = s.similar_to_item(int(item_id), SearchOptions(k=10, exclude_ids=(-1,)))  # forces the index path
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


@pytest.mark.parametrize("options,match", [
    (SearchOptions(k=-1), "k expected 1..1000"),
    (SearchOptions(k=1001), "got 1001"),
    (SearchOptions(min_score=float("nan")), "min_score"),
    (SearchOptions(nprobe=-3), "nprobe expected 0"),
    (SearchOptions(exclude_ids=tuple(range(10_001))), "at most 10000 ids"),
], ids=["k-negative", "k-too-big", "min-score-nan", "nprobe-negative", "too-many-ids"])
def test_invalid_options(searcher, options: SearchOptions, match: str) -> None:
    s, ids, _ = searcher
    with pytest.raises(InvalidArgument, match=match):
        s.similar_to_item(int(ids[0]), options)


def test_not_found_names_the_id(searcher) -> None:
    s, ids, _ = searcher
    with pytest.raises(NotFound, match="item 999999 is not in bundle"):
        s.similar_to_item(999999)
    with pytest.raises(NotFound, match="candidate item 424242"):
        s.similar_to_item(int(ids[0]), SearchOptions(candidate_ids=(424242,)))
    with pytest.raises(NotFound, match="positive item 7"):
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


def test_ivf_nprobe_and_exact(tmp_path: Path) -> None:
    s, ids, x = _ivf_searcher(tmp_path)
    assert not s.is_exact_index and s.nlist == 30 and 1 <= s.default_nprobe <= 30
    q = x[:100]
    exact_hits = [s.search_vector(v, SearchOptions(k=10, exact=True)) for v in q]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    for res, t in zip(exact_hits, truth):
        assert res.exact and [h.item.item_id for h in res.hits] == ids[t].tolist()
    one = [s.search_vector(v, SearchOptions(k=10, nprobe=1)) for v in q]
    assert not one[0].exact
    recall_1 = np.mean([len({h.item.item_id for h in r.hits} & set(ids[t])) / 10 for r, t in zip(one, truth)])
    full = [s.search_vector(v, SearchOptions(k=10, nprobe=30)) for v in q]
    recall_full = np.mean([len({h.item.item_id for h in r.hits} & set(ids[t])) / 10 for r, t in zip(full, truth)])
    assert recall_full == 1.0 and recall_1 <= recall_full
    with pytest.raises(InvalidArgument, match="nprobe expected 0 .* or 1..30, got 31"):
        s.search_vector(q[0], SearchOptions(nprobe=31))
    # item queries on IVF reconstruct the item's vector by id
    got = s.similar_to_item(int(ids[5]), SearchOptions(k=5, exact=True))
    assert [h.item.item_id for h in got.hits] == [int(i) for i in ids[np.argsort(-(x @ x[5]))[1:6]]]


def test_batch_matches_single_queries(searcher) -> None:
    s, ids, x = searcher
    queries = [VectorQuery(x[i], SearchOptions(k=4)) for i in range(10)] + [
        ItemQuery(int(ids[3]), SearchOptions(k=3)), ItemsQuery(((int(ids[4]), 1.0),), (), SearchOptions(k=2))]
    batch = s.batch(queries)
    assert len(batch) == len(queries)
    for q, r in zip(queries, batch):
        single = s.search(q)
        assert [h.item.item_id for h in r.hits] == [h.item.item_id for h in single.hits]
    with pytest.raises(InvalidArgument, match="query 1: vector dimension"):
        s.batch([VectorQuery(x[0]), VectorQuery([1.0, 2.0])])
    with pytest.raises(InvalidArgument, match="at most 256"):
        s.batch([VectorQuery(x[0])] * 257)


def test_find_items_ranks_exact_then_prefix(tmp_path: Path, demo_root: Path) -> None:
    s = Searcher(bundles.load_bundle(bundles.current_path(demo_root)))
    title = s.get_items([1])[0].title  # "Name (year)"
    name = title.rsplit(" (", 1)[0]
    found = s.find_items(name.upper())
    assert found[0].item_id == 1
    assert all(name.lower() in i.title.lower() for i in found)
    assert s.find_items(name, limit=1) == found[:1]
    with pytest.raises(InvalidArgument, match="non-empty"):
        s.find_items("   ")
    assert s.find_items("zzzz-no-such-title") == []
