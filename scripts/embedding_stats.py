"""Statistics that describe a set of embedding vectors the way a nearest-neighbour index sees them.

Used to calibrate the synthetic benchmark data on real embeddings (scripts/realistic_vectors.py), to
compare real, realistic and clustered data (scripts/bench_data.py) and in tests. Every function takes
L2-normalized float32 rows; sampling is seeded.

- PCA spectrum: eigenvalues of the centred covariance, their shares at a few ranks, the participation
  ratio (sum λ)² / sum λ² (an "effective dimension") and the number of components holding 90 % of the variance.
- Mean direction: the norm of the mean vector (CNN features after ReLU and pooling are all non-negative, so
  normalized embeddings share a strong common direction and random pairs have clearly positive cosines).
- Nearest-neighbour cosines: the cosine of each row to its nearest and to its k-th nearest other row.
- Random-pair cosines: over seeded random pairs of distinct rows.
- Hubness: the k-occurrence N_k of each row (how many rows have it among their k nearest neighbours);
  its skewness, maximum and the share of rows that are nobody's neighbour (anti-hubs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
SPECTRUM_RANKS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
HUBNESS_K = 10
RANDOM_PAIRS = 200_000
PCA_MAX_ROWS = 20_000  # the spectrum is estimated on at most this many seeded rows
VARIANCE_SHARE = 0.9
SEARCH_BLOCK_ROWS = 2048  # queries per block of the exact k-NN pass


def quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100):02d}": round(float(v), 4) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}


def spectrum(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Eigenvalues (descending, float64) of the centred covariance of at most PCA_MAX_ROWS seeded rows."""
    x = _sample_rows(vectors, PCA_MAX_ROWS, seed).astype(np.float64)
    x -= x.mean(axis=0)
    cov = x.T @ x / len(x)
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def spectrum_summary(eigenvalues: np.ndarray) -> dict[str, Any]:
    total = float(eigenvalues.sum())
    cumulative = np.cumsum(eigenvalues) / total
    ranks = [r for r in SPECTRUM_RANKS if r <= len(eigenvalues)]
    return {
        "total_variance": round(total, 5),
        "share_at_rank": {str(r): round(float(eigenvalues[r - 1] / total), 6) for r in ranks},
        "cumulative_share_at_rank": {str(r): round(float(cumulative[r - 1]), 4) for r in ranks},
        "participation_ratio": round(total**2 / float(np.sum(eigenvalues**2)), 2),
        "components_for_90pct": int(np.searchsorted(cumulative, VARIANCE_SHARE) + 1),
    }


def knn(vectors: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest *other* rows of each of ``rows`` (default: every row) by inner product:
    (cosines (len(rows), k), ids (len(rows), k))."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims = np.empty((len(rows), k), np.float32)
    ids = np.empty((len(rows), k), np.int64)
    for start in range(0, len(rows), SEARCH_BLOCK_ROWS):
        mine = rows[start : start + SEARCH_BLOCK_ROWS]
        s, i = index.search(x[mine], k + 1)
        keep = i != mine[:, None]  # drop the row itself (wherever ties put it), else the last column
        keep[keep.all(axis=1), -1] = False
        sims[start : start + len(mine)] = s[keep].reshape(len(mine), k)
        ids[start : start + len(mine)] = i[keep].reshape(len(mine), k)
    return sims, ids


def hubness(neighbour_ids: np.ndarray, n: int) -> dict[str, float]:
    counts = np.bincount(neighbour_ids.ravel(), minlength=n).astype(np.float64)
    k = neighbour_ids.shape[1]
    centred = counts - counts.mean()
    std = math.sqrt(float(np.mean(centred**2)))
    return {
        "k": k,
        "skewness": round(float(np.mean(centred**3)) / std**3, 3) if std > 0 else 0.0,
        "max_over_k": round(float(counts.max()) / k, 2),
        "antihub_share": round(float(np.mean(counts == 0)), 4),
    }


def random_pair_cosines(vectors: np.ndarray, pairs: int = RANDOM_PAIRS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(len(vectors), size=pairs)
    b = (a + rng.integers(1, len(vectors), size=pairs)) % len(vectors)  # never a row with itself
    return np.einsum("ij,ij->i", vectors[a], vectors[b], dtype=np.float64)


@dataclass(frozen=True)
class Measurement:
    summary: dict[str, Any]  # JSON-ready
    eigenvalues: np.ndarray
    nn_cosines: np.ndarray  # of the rows measured
    random_cosines: np.ndarray


def measure(vectors: np.ndarray, seed: int = 0, k: int = HUBNESS_K, nn_rows: int | None = None) -> Measurement:
    """All the statistics of L2-normalized rows. Exact k-NN of every row (O(n²·d)), or of ``nn_rows`` seeded
    rows against all when fewer than n; hubness needs every row's neighbours, so it is left out then."""
    n = len(vectors)
    eigenvalues = spectrum(vectors, seed)
    sample = nn_rows is not None and nn_rows < n
    rows = np.sort(np.random.default_rng(seed).choice(n, size=nn_rows, replace=False)) if sample else None
    sims, ids = knn(vectors, k, rows)
    random_cos = random_pair_cosines(vectors, seed=seed)
    summary = {
        "n": n,
        "dim": vectors.shape[1],
        "mean_strength": round(float(np.linalg.norm(vectors.mean(axis=0, dtype=np.float64))), 4),
        "spectrum": spectrum_summary(eigenvalues),
        "nn_rows": len(sims),
        "nn_cosine": quantiles(sims[:, 0]),
        f"nn{k}_cosine": quantiles(sims[:, k - 1]),
        "random_cosine": quantiles(random_cos),
        "hubness": None if sample else hubness(ids, n),
    }
    return Measurement(summary, eigenvalues, sims[:, 0], random_cos)


def summarize(vectors: np.ndarray, seed: int = 0, k: int = HUBNESS_K) -> dict[str, Any]:
    """All the statistics of L2-normalized rows (exact k-NN over every row: O(n²·d))."""
    return measure(vectors, seed, k).summary


def _sample_rows(vectors: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(vectors) <= limit:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=limit, replace=False))
    return vectors[rows]
