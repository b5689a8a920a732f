"""Quality metrics against hand-computed small cases and brute-force NumPy oracles (no model needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer.quality import duplicates, metrics
from indexer.quality.bundle_view import drop_ids, ids_to_rows
from indexer.quality.edits import EDIT_KINDS, IDENTITY, check_kinds, edited_copy, perspective_coefficients
from indexer.quality.photo_catalog import MIN_CROP_SIDE, PhotoSource, extra_crops, photo_poster
from tests.conftest import clustered_vectors, jpeg_bytes

NAN = float("nan")


# ---- search fidelity ------------------------------------------------------------------------------------------------
def test_knn_recall_hand_computed_with_padding():
    found = np.array([[1, 2, 3], [4, -1, -1], [7, 8, 9]])
    truth = np.array([[1, 3, 5], [4, 6, -1], [-1, -1, -1]])
    got = metrics.knn_recall(found, truth, 3)
    np.testing.assert_allclose(got[:2], [2 / 3, 1 / 2])
    assert np.isnan(got[2])  # nothing to find: not a zero
    np.testing.assert_allclose(metrics.knn_recall(found, truth, 1)[:2], [1.0, 1.0])


def test_knn_recall_padding_never_matches_padding():
    assert np.isnan(metrics.knn_recall(np.array([[-1, -1]]), np.array([[-1, -1]]), 2)[0])
    assert metrics.knn_recall(np.array([[-1, -1]]), np.array([[5, -1]]), 2)[0] == 0.0


def test_knn_recall_with_ties_forgives_a_tie_at_the_boundary_only():
    truth_ids, truth_scores = np.array([[10, 11]]), np.array([[0.9, 0.5]])
    tied = metrics.knn_recall_with_ties(np.array([[10, 12]]), np.array([[0.9, 0.5]]), truth_ids, truth_scores, 2)
    assert tied[0] == 1.0  # 12 scores exactly the 2nd true score: exact search broke the tie the other way
    assert metrics.knn_recall(np.array([[10, 12]]), truth_ids, 2)[0] == 0.5
    worse = metrics.knn_recall_with_ties(np.array([[10, 12]]), np.array([[0.9, 0.4]]), truth_ids, truth_scores, 2)
    assert worse[0] == 0.5
    repeated = metrics.knn_recall_with_ties(np.array([[10, 10]]), np.array([[0.9, 0.9]]), truth_ids, truth_scores, 2)
    assert repeated[0] == 0.5  # a repeated id counts once
    padded = metrics.knn_recall_with_ties(np.array([[10, -1]]), np.array([[0.9, 0.5]]), truth_ids, truth_scores, 2)
    assert padded[0] == 0.5  # -1 never counts, even with a tying score


def test_knn_recall_with_ties_boundary_is_the_kth_valid_truth():
    # truth has only one valid id in the top 2: the boundary is its score, and recall is out of 1
    got = metrics.knn_recall_with_ties(
        np.array([[7, 3]]), np.array([[0.8, 0.8]]), np.array([[3, -1]]), np.array([[0.8, 0.0]]), 2
    )
    assert got[0] == 1.0


# ---- ranking -------------------------------------------------------------------------------------------------------
def test_first_match_rank_and_recall_at_rank():
    ranked = np.array([[5, 6, 7], [7, 6, 5], [1, 2, 3], [-1, -1, -1]])
    ranks = metrics.first_match_rank(ranked, [6, 7, 9, -1])
    np.testing.assert_array_equal(ranks, [1, 0, -1, -1])  # -1 padding never matches a -1 "positive"
    assert metrics.recall_at_rank(ranks, 1) == 0.25
    assert metrics.recall_at_rank(ranks, 2) == 0.5
    assert np.isnan(metrics.recall_at_rank(np.array([]), 1))


def test_rank_with_ties_is_pessimistic():
    assert metrics.rank_with_ties(np.array([[3.0, 1.0, 3.0, 2.0]]), [0])[0] == 1  # the tie at col 2 ranks first
    assert metrics.rank_with_ties(np.array([[2, 2, 5, 1]]), [0], higher_is_better=False)[0] == 2
    assert metrics.rank_with_ties(np.array([[9, 2, 5, 1]]), [0])[0] == 0


def test_average_precision_hand_computed():
    assert metrics.average_precision([1, 2, 3, 4, 5], {2, 4}) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics.average_precision([1, 2, 3, 4, 5], {2, 4, 9}) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert metrics.average_precision([1, 2, 3, 4, 5], {2, 4, 9}, depth=2) == pytest.approx((1 / 2) / 2)
    assert metrics.average_precision([2, 2, 4], {2, 4}) == pytest.approx((1 / 1 + 2 / 3) / 2)  # repeat skipped
    assert metrics.average_precision([-1, 4], {4}) == pytest.approx(1 / 2)
    assert np.isnan(metrics.average_precision([1, 2], set()))


def test_ap_from_rank_is_average_precision_with_one_relevant():
    np.testing.assert_allclose(metrics.ap_from_rank(np.array([0, 1, 4, -1])), [1.0, 0.5, 0.2, 0.0])
    ranked = [8, 3, 5, 1]
    for rank, item in enumerate(ranked):
        assert metrics.ap_from_rank(np.array([rank]))[0] == pytest.approx(metrics.average_precision(ranked, {item}))


# ---- genres ---------------------------------------------------------------------------------------------------------
GENRES = ["A|B", "B", "C", "", "(no genres listed)"]


def test_genre_matrix():
    m, vocab = metrics.genre_matrix(GENRES)
    assert vocab == ["A", "B", "C"]
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_genre_agreement_precision_and_jaccard_hand_computed():
    m, _ = metrics.genre_matrix(GENRES)
    precision, jaccard = metrics.genre_agreement(m, np.array([0, 3, 1]), np.array([[1, 2, 3], [0, 1, 2], [0, -1, -1]]))
    # query 0 {A,B}: {B} shares (J 1/2), {C} does not (J 0), {} does not (J 0)
    assert precision[0] == pytest.approx(1 / 3)
    assert jaccard[0] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert np.isnan(precision[1]) and np.isnan(jaccard[1])  # a query without genres is not measured
    # query 1 {B}: one valid neighbour {A,B}; padding is not a neighbour
    assert precision[2] == 1.0
    assert jaccard[2] == pytest.approx(1 / 2)


def test_genre_prior_weights_hand_computed():
    m, _ = metrics.genre_matrix(GENRES)
    # frequencies over 5 items: A 1/5, B 2/5, C 1/5
    np.testing.assert_allclose(metrics.genre_prior_weights(m), [3 / 5, 2 / 5, 1 / 5, 1 / 5, 1 / 5])


def test_sample_neighbours_never_the_query_distinct_and_seeded():
    rows = np.arange(30)
    a = metrics.sample_neighbours(30, rows, 5, np.random.default_rng(4))
    b = metrics.sample_neighbours(30, rows, 5, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert all(q not in set(r) and len(set(r)) == 5 for q, r in zip(rows, a.tolist(), strict=True))
    weights = np.zeros(30)
    weights[[3, 7, 9]] = 1.0
    w = metrics.sample_neighbours(30, np.array([3, 0]), 2, np.random.default_rng(0), weights)
    assert set(w[0]) == {7, 9}  # zero-weight items are never drawn, nor the query
    assert set(w[1]) <= {3, 7, 9}


# ---- collections -----------------------------------------------------------------------------------------------------
def test_collection_recall_hand_computed():
    labels = np.array([0, 0, 0, 1, 1, 2, -1])
    rows = np.array([0, 3, 5, 6])
    nbr = np.array([[1, 3, 2], [4, 0, 1], [0, 1, 2], [0, 1, 2]])
    r2 = metrics.collection_recall(labels, rows, nbr, 2)
    assert r2[0] == 0.5  # one of its 2 sequels in the top 2
    assert r2[1] == 1.0  # its only sequel found: capped by the collection size
    assert np.isnan(r2[2]) and np.isnan(r2[3])  # alone in its collection / in none
    assert metrics.collection_recall(labels, rows, nbr, 3)[0] == 1.0


# ---- pHash distances -------------------------------------------------------------------------------------------------
def test_hamming_distances_against_unpacked_bits():
    q = np.array([[0b00001111]], np.uint8)
    codes = np.array([[0], [255], [0b00001111]], np.uint8)
    np.testing.assert_array_equal(metrics.hamming_distances(q, codes), [[4, 4, 0]])
    rng = np.random.default_rng(0)
    qs, cs = rng.integers(0, 256, (7, 8), dtype=np.uint8), rng.integers(0, 256, (11, 8), dtype=np.uint8)
    oracle = (np.unpackbits(qs, axis=1)[:, None, :] != np.unpackbits(cs, axis=1)[None, :, :]).sum(axis=2)
    np.testing.assert_array_equal(metrics.hamming_distances(qs, cs), oracle)


# ---- clustering ------------------------------------------------------------------------------------------------------
def test_silhouette_hand_computed():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    # a = 1 for every point; b = 10.5, 9.5, 9.5, 10.5 -> s = 9.5/10.5, 8.5/9.5, 8.5/9.5, 9.5/10.5
    expected = (9.5 / 10.5 + 8.5 / 9.5) / 2
    assert metrics.sampled_silhouette(x, np.array([0, 0, 1, 1]), sample_size=10, seed=0) == pytest.approx(expected)
    assert np.isnan(metrics.sampled_silhouette(x, np.zeros(4, int), 10, 0))  # one cluster: undefined


def test_silhouette_sample_is_seeded_and_is_the_silhouette_of_the_sample():
    from sklearn.metrics import silhouette_score

    x = clustered_vectors(300, 8, clusters=4, seed=2)
    labels = np.argmax(x[:, :4], axis=1)
    a = metrics.sampled_silhouette(x, labels, 50, seed=5)
    assert a == metrics.sampled_silhouette(x, labels, 50, seed=5)
    rows = np.sort(np.random.default_rng(5).choice(300, size=50, replace=False))
    assert a == pytest.approx(silhouette_score(x[rows], labels[rows]))
    assert metrics.sampled_silhouette(x, labels, 300, seed=5) == pytest.approx(silhouette_score(x, labels))


def test_explained_variance_ratio_hand_computed():
    np.testing.assert_allclose(metrics.explained_variance_ratio(np.array([[1, 0], [2, 0], [3, 0]])), [1, 0], atol=1e-12)
    square = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]])
    np.testing.assert_allclose(metrics.explained_variance_ratio(square), [0.5, 0.5])
    # off-centre rectangle: per-axis variances 1 and 0.25 around the mean -> 0.8 and 0.2
    rectangle = np.array([[0, 0], [2, 0], [0, 1], [2, 1]]) + 10.0
    np.testing.assert_allclose(metrics.explained_variance_ratio(rectangle), [0.8, 0.2])
    assert metrics.components_for(np.array([0.5, 0.3, 0.2]), 0.8) == 2
    assert metrics.components_for(np.array([0.5, 0.3, 0.2]), 0.81) == 3


def test_latency_summary_in_milliseconds():
    s = metrics.latency_summary([0.001, 0.002, 0.003])
    assert s["count"] == 3
    assert s["p50_ms"] == pytest.approx(2.0) and s["mean_ms"] == pytest.approx(2.0)
    assert s["p99_ms"] == pytest.approx(2.98)


# ---- duplicates ------------------------------------------------------------------------------------------------------
def _brute_pairs(x: np.ndarray, ids: np.ndarray, t: float) -> set[tuple[int, int]]:
    sims = x @ x.T
    return {
        tuple(sorted((int(ids[i]), int(ids[j])))) for i in range(len(x)) for j in range(i + 1, len(x)) if sims[i, j] > t
    }


def test_count_near_duplicates_hand_made():
    e = np.eye(4, dtype=np.float32)
    near = e[2] + 0.05 * e[3]
    x = np.stack([e[0], e[0], e[2], near / np.linalg.norm(near), e[1]])
    ids = np.array([50, 7, 9, 3, 11])
    pairs = duplicates.count_near_duplicates(x, ids, 0.99)
    assert [(p.item_a, p.item_b) for p in pairs] == [(7, 50), (3, 9)]  # most similar first, smaller id first
    assert pairs[0].cosine == pytest.approx(1.0) and pairs[1].cosine == pytest.approx(1 / np.sqrt(1.0025), abs=1e-6)


def test_count_near_duplicates_in_blocks_matches_brute_force(monkeypatch: pytest.MonkeyPatch):
    x = clustered_vectors(200, 16, clusters=10, spread=0.05, seed=3)
    ids = np.arange(200, dtype=np.int64)[::-1] * 5
    monkeypatch.setattr(duplicates, "BLOCK_BYTES", 7 * 4 * 200)  # blocks of 7 rows: pairs across block boundaries
    for t in (0.95, 0.99):
        found = duplicates.count_near_duplicates(x, ids, t)
        assert {(p.item_a, p.item_b) for p in found} == _brute_pairs(x, ids, t)
        assert len(found) == len({(p.item_a, p.item_b) for p in found})


# ---- bundle helpers --------------------------------------------------------------------------------------------------
def test_ids_to_rows_and_drop_ids():
    ids = np.array([30, 10, 20])
    np.testing.assert_array_equal(ids_to_rows(ids, np.array([[20, -1, 30], [99, 10, 10]])), [[2, -1, 0], [-1, 1, 1]])
    found, scores = drop_ids(
        np.array([[5, 6, 7], [-1, 8, 5]]), np.array([[0.9, 0.8, 0.7], [0, 0.5, 0.4]]), np.array([6, 9]), 2
    )
    np.testing.assert_array_equal(found, [[5, 7], [8, 5]])
    np.testing.assert_allclose(scores, [[0.9, 0.7], [0.5, 0.4]])


# ---- edits and photo posters -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def poster_bytes(photos: dict[str, np.ndarray]) -> bytes:
    return jpeg_bytes(photo_poster(photos["coffee"], "coffee"))


def test_every_edit_is_seeded_decodable_and_independent_of_order(poster_bytes: bytes):
    first = {k: edited_copy(k, poster_bytes, item_id=5, seed=1) for k in EDIT_KINDS}
    again = {k: edited_copy(k, poster_bytes, item_id=5, seed=1) for k in reversed(EDIT_KINDS)}
    assert first == again
    assert first[IDENTITY] == poster_bytes
    for kind, data in first.items():
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0, kind
    assert edited_copy("crop", poster_bytes, item_id=5, seed=2) != first["crop"]
    assert edited_copy("crop", poster_bytes, item_id=6, seed=1) != first["crop"]
    with Image.open(io.BytesIO(first["thumbnail"])) as im:
        assert im.size[0] == 48


def test_check_kinds_refuses_unknown_and_empty():
    assert check_kinds(["crop", "jpeg", "crop"]) == ("crop", "jpeg")
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        check_kinds(["crop", "sepia"])
    with pytest.raises(ValueError):
        check_kinds([])


def test_perspective_coefficients_map_corners():
    dst = np.array([[100, 50], [300, 80], [310, 400], [90, 420]], float)
    src = np.array([[0, 0], [200, 0], [200, 300], [0, 300]], float)
    a, b, c, d, e, f, g, h = perspective_coefficients(dst, src)
    for (x, y), (u, v) in zip(dst, src, strict=True):
        w = g * x + h * y + 1
        assert (a * x + b * y + c) / w == pytest.approx(u) and (d * x + e * y + f) / w == pytest.approx(v)


def test_extra_crops_are_distinct_and_non_overlapping():
    source = PhotoSource("big", "skimage", "big", "Drama")
    big = np.zeros((2 * MIN_CROP_SIDE + 10, 4 * MIN_CROP_SIDE, 3), np.uint8)
    small = np.zeros((MIN_CROP_SIDE, MIN_CROP_SIDE, 3), np.uint8)
    crops = extra_crops([(source, small), (source, big)], needed=5)
    assert len(crops) == 2  # halves of the one photo large enough; never quadrants when halves exist
    boxes = [tuple(int(v) for v in c.split(",")) for _, _, c in crops]
    (l1, t1, r1, b1), (l2, t2, r2, b2) = boxes
    assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1
