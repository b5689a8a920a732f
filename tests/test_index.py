"""Index construction against an exact NumPy oracle, on seeded clustered data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.errors import BuildError
from indexer.index import IndexSpec, build_index, default_nlist, normalize, recall_at_k, resolve_kind
from indexer.neighbours import neighbour_table
from indexer.precomputed import PrecomputedConfig
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_normalize_flags_zero_and_nan_rows() -> None:
    x = np.array([[3, 4], [0, 0], [np.nan, 1]], np.float32)
    out, ok = normalize(x)
    assert ok.tolist() == [True, False, False]
    np.testing.assert_allclose(out[0], [0.6, 0.8])


def test_normalize_in_place_writes_into_the_input_and_matches_a_copy() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9000, 16)).astype(np.float32)  # more rows than one normalization block
    x[[5, 8500]] = 0
    x[7, 3] = np.inf
    expected, expected_ok = normalize(x)
    original = x.copy()
    out, ok = normalize(x, in_place=True)
    assert np.shares_memory(out, x)  # no second copy of a build's vectors
    np.testing.assert_array_equal(ok, expected_ok)
    np.testing.assert_array_equal(out, expected)
    assert not ok[[5, 7, 8500]].any() and (out[[5, 7, 8500]] == 0).all()  # bad rows zeroed, not left as inf
    np.testing.assert_allclose(np.linalg.norm(out[ok], axis=1), 1, rtol=1e-6)
    frozen = original.copy()
    frozen.flags.writeable = False  # a read-only input (a memory-mapped file) is copied, never written
    copied, _ = normalize(frozen, in_place=True)
    assert not np.shares_memory(copied, frozen)
    np.testing.assert_array_equal(frozen, original)


def test_flat_equals_brute_force() -> None:
    x = clustered_vectors(3000, 64, seed=1)
    ids = np.arange(3000, dtype=np.int64) * 10 + 7
    q = clustered_vectors(50, 64, seed=2)
    built = build_index(x, ids, IndexSpec(kind="flat"))
    scores, found = built.index.search(q, 10)
    assert_exact_topk(found, scores, x, ids, q)  # the brute-force oracle, ties handled


def test_ivf_params_are_stored_and_reconstruct_works() -> None:
    x = clustered_vectors(4000, 32, seed=3)
    ids = np.arange(4000, dtype=np.int64) + 1_000_000
    built = build_index(x, ids, IndexSpec(kind="ivf", nlist=40, nprobe=5))
    assert built.params.nlist == 40 and built.params.nprobe == 5 and built.index.nprobe == 5
    np.testing.assert_allclose(built.index.reconstruct(1_000_123), x[123], atol=1e-6)


def test_auto_kind_and_nlist_rules() -> None:
    assert resolve_kind(IndexSpec(kind="auto", auto_ivf_min_items=1000), 999) == "flat"
    assert resolve_kind(IndexSpec(kind="auto", auto_ivf_min_items=1000), 1000) == "ivf"
    assert default_nlist(60_000) == round(np.sqrt(60_000))
    assert default_nlist(100) == 2  # at least 39 points per list
    with pytest.raises(BuildError, match="expected one of"):
        resolve_kind(IndexSpec(kind="annoy"), 10)


def test_duplicate_ids_refused() -> None:
    with pytest.raises(BuildError, match="unique"):
        build_index(clustered_vectors(10, 8), np.zeros(10, np.int64), IndexSpec(kind="flat"))


def test_neighbour_table_equals_brute_force() -> None:
    x = clustered_vectors(1500, 48, seed=4)
    ids = np.arange(1500, dtype=np.int64) * 2 + 1
    nids, nscores = neighbour_table(x, ids, 15)
    assert nids.shape == (1500, 15)
    assert not (nids == ids[:, None]).any(), "an item is never its own neighbour"
    assert_exact_topk(nids, nscores, x, ids, x, exclude_self=True)


def test_neighbour_table_small_catalog() -> None:
    x = clustered_vectors(3, 8)
    nids, _ = neighbour_table(x, np.array([5, 6, 7]), 100)
    assert nids.shape == (3, 2)
    assert sorted(nids[0].tolist()) == [6, 7]


def test_ivf_recall_on_20k_clustered_precomputed(tmp_path: Path) -> None:
    """Acceptance: IVF at its default (tuned) nprobe reaches recall@10 >= 0.95 against flat."""
    n, d = 20_000, 64
    everything = clustered_vectors(n + 500, d, clusters=200, spread=0.5, seed=11)
    x, q = everything[:n], everything[n:]  # held-out queries from the same distribution
    ids = np.arange(n, dtype=np.int64) * 5 + 3
    np.savez(tmp_path / "pre.npz", ids=ids, vectors=x * 3.0)  # not normalized: the build normalizes
    root = tmp_path / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp_path / "pre.npz"),
            index=IndexSpec(kind="ivf"),
            pipeline=QUIET,
            neighbours_k=0,
        )
    )
    b = bundles.load_bundle(bundles.current_path(root))
    assert b.manifest.index.type == "ivf"
    _, found = b.index.search(q, 10)  # default nprobe from the bundle
    _, truth_rows = brute_force(x, q, 10)
    recall = recall_at_k(found, ids[truth_rows])
    assert recall >= 0.95, (recall, b.manifest.index)
    assert b.manifest.index.nprobe < b.manifest.index.nlist  # it is really approximate


def test_precomputed_rows_with_nan_inf_or_beyond_float32_are_reported_across_check_blocks(tmp_path, monkeypatch):
    """Rows are checked in blocks (bounded temporaries for a 1M x 1280 input); each bad row is reported and dropped
    whichever block it falls in, and a clean float32 input comes back as it is."""
    import indexer.precomputed as precomputed

    monkeypatch.setattr(precomputed, "CHECK_BLOCK_ROWS", 4)
    x = np.random.default_rng(3).normal(size=(11, 6))
    x[2, 1] = 1e39  # fits float64, not float32
    x[5, 0] = np.nan
    x[9, 4] = -np.inf
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "ids.npy", np.arange(100, 111))
    ids, vectors, problems = precomputed.load_precomputed(PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"))
    assert ids.tolist() == [i for i in range(100, 111) if i not in (102, 105, 109)]
    assert vectors.dtype == np.float32 and np.array_equal(
        vectors, x[[r for r in range(11) if r not in (2, 5, 9)]].astype(np.float32)
    )
    reasons = {p.item_id: p.reason for p in problems}
    assert "float32 range" in reasons[102] and "NaN or Inf" in reasons[105] and "NaN or Inf" in reasons[109]
    clean = np.random.default_rng(4).normal(size=(9, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", clean)
    np.save(tmp_path / "cids.npy", np.arange(9))
    _, loaded, none = precomputed.load_precomputed(PrecomputedConfig(tmp_path / "c.npy", tmp_path / "cids.npy"))
    assert not none and np.array_equal(loaded, clean)
