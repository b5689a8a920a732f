"""Quality metrics as pure NumPy functions over ids, rows and scores (in the manner of faiss contrib/evaluation.py).

Conventions: result lists are 2-D arrays, one row per query, best first; ``-1`` pads missing results
and is never a hit. Functions return per-query values where a breakdown is useful (``NaN`` = the query
has nothing to measure, e.g. no genres) and the callers average with ``nanmean``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = -1
DEFAULT_TIE_ATOL = 1e-5
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# ---- search fidelity ------------------------------------------------------------------------------------
def knn_recall(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per query: |found[:k] ∩ truth[:k]| / (valid ids in truth[:k]); NaN where truth[:k] has no valid id."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if len(found) != len(truth):
        raise ValueError(f"expected as many found rows as truth rows, got {len(found)} and {len(truth)}")
    out = np.full(len(truth), np.nan)
    for q, (f, t) in enumerate(zip(found, truth, strict=True)):
        valid = set(t[t != PAD].tolist())
        if valid:
            out[q] = len(valid & set(f[f != PAD].tolist())) / len(valid)
    return out


def knn_recall_with_ties(
    found_ids: np.ndarray,
    found_scores: np.ndarray,
    truth_ids: np.ndarray,
    truth_scores: np.ndarray,
    k: int,
    atol: float = DEFAULT_TIE_ATOL,
) -> np.ndarray:
    """``knn_recall`` that forgives ties at the boundary.

    A found id outside the exact top k still counts when its score equals (within ``atol``) the k-th exact
    score: exact search broke a tie the other way. Hits are capped at the number of valid truth ids.
    Scores must be exact similarities (true for flat, IVF-Flat and the neighbour table).
    """
    found_ids, found_scores = np.asarray(found_ids)[:, :k], np.asarray(found_scores)[:, :k]
    truth_ids, truth_scores = np.asarray(truth_ids)[:, :k], np.asarray(truth_scores)[:, :k]
    out = np.full(len(truth_ids), np.nan)
    for q in range(len(truth_ids)):
        valid_mask = truth_ids[q] != PAD
        valid = set(truth_ids[q][valid_mask].tolist())
        if not valid:
            continue
        boundary = float(truth_scores[q][valid_mask][-1])
        hits = 0
        seen: set[int] = set()
        for i, s in zip(found_ids[q].tolist(), found_scores[q].tolist(), strict=True):
            if i == PAD or i in seen:
                continue
            seen.add(i)
            if i in valid or abs(s - boundary) <= atol:
                hits += 1
        out[q] = min(hits, len(valid)) / len(valid)
    return out


# ---- ranking against known positives ---------------------------------------------------------------------
def first_match_rank(ranked_ids: np.ndarray, positives: Sequence[int] | np.ndarray) -> np.ndarray:
    """0-based rank of each row's positive id in its ranked list, -1 when absent."""
    ranked_ids = np.asarray(ranked_ids)
    positives = np.asarray(positives).reshape(-1, 1)
    if len(positives) != len(ranked_ids):
        raise ValueError(f"expected one positive per ranked row, got {len(positives)} for {len(ranked_ids)} rows")
    match = (ranked_ids == positives) & (ranked_ids != PAD)
    return np.where(match.any(axis=1), match.argmax(axis=1), -1)


def rank_with_ties(
    scores: np.ndarray, positive_cols: Sequence[int] | np.ndarray, higher_is_better: bool = True
) -> np.ndarray:
    """0-based rank of each row's positive column among all columns, ties counted against it.

    The positive ranks after every other candidate scoring at least as well (pessimistic tie-break), so a
    method whose scores are mostly ties (e.g. Hamming distances) is not flattered by the order of the ids.
    """
    scores = np.asarray(scores, dtype=np.float64)
    cols = np.asarray(positive_cols, dtype=np.int64)
    pos = scores[np.arange(len(scores)), cols][:, None]
    at_least = scores >= pos if higher_is_better else scores <= pos
    return at_least.sum(axis=1) - 1  # minus the positive itself


def recall_at_rank(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose positive is within the first k (rank -1 = not found)."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return float("nan")
    return float(((ranks >= 0) & (ranks < k)).mean())


def average_precision(
    ranked_ids: Sequence[int] | np.ndarray, relevant: set[int] | frozenset[int], depth: int | None = None
) -> float:
    """AP of one ranked list: sum of precision@rank at each relevant hit / number of relevant ids.

    With ``depth`` (AP@depth) only the first ``depth`` results count and the divisor is
    min(relevant, depth). Repeated ids and -1 padding never count; NaN when nothing is relevant.
    """
    if not relevant:
        return float("nan")
    ranked = np.asarray(ranked_ids).tolist()
    if depth is not None:
        ranked = ranked[:depth]
    hits, total = 0, 0.0
    seen: set[int] = set()
    for rank, item in enumerate(ranked):
        if item == PAD or item in seen:
            continue
        seen.add(item)
        if item in relevant:
            hits += 1
            total += hits / (rank + 1)
    return total / (len(relevant) if depth is None else min(len(relevant), depth))


def ap_from_rank(ranks: np.ndarray) -> np.ndarray:
    """AP with a single relevant item at 0-based ``ranks`` (-1 = not retrieved): 1 / (rank + 1) or 0."""
    ranks = np.asarray(ranks)
    return np.where(ranks >= 0, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)


# ---- genres -----------------------------------------------------------------------------------------------
NO_GENRES = "(no genres listed)"


def genre_matrix(genres: Sequence[str], separator: str = "|") -> tuple[np.ndarray, list[str]]:
    """MovieLens genre strings -> (bool matrix (n, g), sorted vocabulary); empty and '(no genres listed)' = none."""
    sets = [{g.strip() for g in str(s).split(separator) if g.strip() and g.strip() != NO_GENRES} for s in genres]
    vocabulary = sorted(set().union(*sets)) if sets else []
    col = {g: c for c, g in enumerate(vocabulary)}
    out = np.zeros((len(sets), len(vocabulary)), dtype=bool)
    for r, s in enumerate(sets):
        out[r, [col[g] for g in s]] = True
    return out, vocabulary


def genre_agreement(
    genres: np.ndarray, query_rows: np.ndarray, neighbour_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (precision, mean Jaccard) of its neighbours' genre sets against its own.

    precision = share of the valid neighbours sharing at least one genre with the query;
    Jaccard = |A ∩ B| / |A ∪ B| averaged over the valid neighbours (a neighbour without genres scores 0).
    Rows of ``neighbour_rows`` are item rows (-1 padding ignored); queries without genres or neighbours: NaN.
    """
    genres = np.asarray(genres, dtype=bool)
    q = genres[np.asarray(query_rows)][:, None, :]  # (nq, 1, g)
    nbr_rows = np.asarray(neighbour_rows)
    valid = nbr_rows != PAD
    n = genres[np.where(valid, nbr_rows, 0)]  # (nq, k, g)
    inter = (q & n).sum(axis=2)
    union = (q | n).sum(axis=2)
    jacc = np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)
    count = valid.sum(axis=1)
    measurable = (q[:, 0, :].any(axis=1)) & (count > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(measurable, ((inter > 0) & valid).sum(axis=1) / count, np.nan)
        jaccard = np.where(measurable, (jacc * valid).sum(axis=1) / count, np.nan)
    return precision, jaccard


def genre_prior_weights(genres: np.ndarray) -> np.ndarray:
    """Sampling weight of each item for the genre-prior baseline: the sum of its genres' catalog frequencies.

    A "neighbour" drawn with these weights favours items in common genres, the best a ranker can do
    knowing genre frequencies but not the image. Items without genres get the smallest positive weight.
    """
    genres = np.asarray(genres, dtype=bool)
    freq = genres.mean(axis=0) if len(genres) else np.zeros(genres.shape[1])
    weights = genres.astype(np.float64) @ freq
    floor = weights[weights > 0].min() if (weights > 0).any() else 1.0
    return np.where(weights > 0, weights, floor)


def sample_neighbours(
    n_items: int, query_rows: np.ndarray, k: int, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """k distinct random item rows per query (never the query itself), uniformly or with ``weights``."""
    query_rows = np.asarray(query_rows)
    k = min(k, n_items - 1)
    out = np.full((len(query_rows), max(k, 0)), PAD, dtype=np.int64)
    if k <= 0:
        return out
    base = None if weights is None else np.asarray(weights, dtype=np.float64)
    for i, q in enumerate(query_rows.tolist()):
        if base is None:
            draw = rng.choice(n_items - 1, size=k, replace=False)
            out[i] = draw + (draw >= q)  # skip the query's own row
        else:
            p = base.copy()
            p[q] = 0.0
            out[i] = rng.choice(n_items, size=k, replace=False, p=p / p.sum())
    return out


# ---- collections (sequels) ----------------------------------------------------------------------------------
def collection_recall(labels: np.ndarray, query_rows: np.ndarray, neighbour_rows: np.ndarray, k: int) -> np.ndarray:
    """Per query: same-collection items among its first k neighbours / min(k, other members of its collection).

    ``labels`` holds a collection label per item row (-1 = in no collection); queries whose collection has
    no other member, or without a label, are NaN.
    """
    labels = np.asarray(labels)
    query_rows = np.asarray(query_rows)
    nbr = np.asarray(neighbour_rows)[:, :k]
    ql = labels[query_rows]
    sizes = {lab: int(c) for lab, c in zip(*np.unique(labels[labels != PAD], return_counts=True), strict=True)}
    others = np.array([sizes.get(int(lab), 0) - 1 if lab != PAD else 0 for lab in ql.tolist()])
    same = (labels[np.where(nbr != PAD, nbr, 0)] == ql[:, None]) & (nbr != PAD) & (nbr != query_rows[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(others > 0, same.sum(axis=1) / np.minimum(k, np.maximum(others, 1)), np.nan)


# ---- perceptual hashes -----------------------------------------------------------------------------------------
def hamming_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distances between packed binary codes: (nq, bytes) x (n, bytes) uint8 -> (nq, n) int."""
    queries, codes = np.asarray(queries, dtype=np.uint8), np.asarray(codes, dtype=np.uint8)
    if queries.shape[1:] != codes.shape[1:]:
        raise ValueError(f"expected codes of the same length, got {queries.shape[1:]} and {codes.shape[1:]}")
    return POPCOUNT[queries[:, None, :] ^ codes[None, :, :]].sum(axis=2, dtype=np.int64)


# ---- clustering --------------------------------------------------------------------------------------------------
def sampled_silhouette(x: np.ndarray, labels: np.ndarray, sample_size: int, seed: int) -> float:
    """Mean silhouette (Euclidean) over a seeded sample of at most ``sample_size`` points (all of them if fewer).

    NaN when the sample holds fewer than 2 clusters or every point is its own cluster.
    """
    from sklearn.metrics import silhouette_score

    x, labels = np.asarray(x), np.asarray(labels)
    if len(x) > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size=sample_size, replace=False))
        x, labels = x[rows], labels[rows]
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(x):
        return float("nan")
    return float(silhouette_score(x, labels, metric="euclidean"))


def explained_variance_ratio(x: np.ndarray, max_components: int | None = None) -> np.ndarray:
    """PCA explained-variance ratio per component (descending), from the SVD of the centred data."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    var = singular**2
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return ratio[:max_components] if max_components else ratio


def components_for(ratio: np.ndarray, share: float) -> int:
    """Smallest number of leading components whose cumulative explained variance reaches ``share``."""
    cumulative = np.cumsum(ratio)
    reached = np.flatnonzero(cumulative >= share - 1e-12)
    return int(reached[0] + 1) if len(reached) else len(ratio)


# ---- latency ---------------------------------------------------------------------------------------------------------
def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50/p99/mean in milliseconds and the count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if len(ms) == 0:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "count": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN when nothing is measurable (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")
