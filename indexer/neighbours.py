"""Precomputed top-K neighbour table: every item's K nearest items.

Exact (``neighbour_table``: query blocks against a flat scan, O(N*K) memory, never the N x N matrix) for
flat bundles; searched in the built approximate index (``table_from_index``, recall measured and stored)
for the others, where the exact table's N x N x D scan would dominate or be infeasible (1M x 1280: 1.3 PFLOP).
The server answers plain item queries with k <= K from it in O(k).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np
from tqdm import tqdm

from indexer.index import exact_search

log = logging.getLogger(__name__)

DEFAULT_K = 100
# Two posters this similar are the same image (tuned on the copy-detection edits: no two distinct real
# photos exceed it; exact and mirrored copies do). The build reports such pairs; eval lists them.
NEAR_DUPLICATE_COSINE = 0.95
BLOCK_ROWS = 4096
RECALL_SAMPLE = 200  # rows whose table entries are checked against exact search


def _store_without_self(
    out_ids: np.ndarray, out_scores: np.ndarray, start: int, ids: np.ndarray, found: np.ndarray, scores: np.ndarray
) -> None:
    """Rows ``start..`` of the table from k+1 results per item: the item itself dropped; if a tie pushed it
    out of the k+1, the last entry instead."""
    n, k_eff = len(found), out_ids.shape[1]
    is_self = found == ids[start : start + n, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k_eff)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    out_ids[start : start + n] = found[keep].reshape(n, k_eff)
    out_scores[start : start + n] = scores[keep].reshape(n, k_eff)


def neighbour_table(
    vectors: np.ndarray, ids: np.ndarray, k: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return (neighbour ids (N, K) int64, scores (N, K) float32), K = min(k, N - 1).

    Each row excludes the item itself by id and is sorted by score, best first.
    """
    n, d = vectors.shape
    k_eff = max(0, min(k, n - 1))
    out_ids = np.full((n, k_eff), -1, np.int64)
    out_scores = np.zeros((n, k_eff), np.float32)
    if k_eff == 0:
        return out_ids, out_scores
    flat = faiss.IndexFlatIP(d)
    flat.add(np.ascontiguousarray(vectors, np.float32))
    for start in tqdm(range(0, n, BLOCK_ROWS), desc="neighbour table", unit="block", disable=not progress):
        block = vectors[start : start + BLOCK_ROWS]
        scores, rows = flat.search(block, k_eff + 1)
        _store_without_self(out_ids, out_scores, start, ids, ids[rows], scores)
    return out_ids, out_scores


def near_duplicate_pairs(
    ids: np.ndarray, neighbour_ids: np.ndarray, neighbour_scores: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE
) -> int:
    """Unordered item pairs with cosine above ``threshold`` found in a neighbour table (each pair once).

    A lower bound when an item has more such neighbours than the table holds.
    """
    rows, cols = np.nonzero(neighbour_scores > threshold)
    a = ids[rows]
    b = neighbour_ids[rows, cols]
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    return int(len(pairs))


def table_from_index(
    index: faiss.Index,
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
    progress: bool = False,
    sample: int = RECALL_SAMPLE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The neighbour table searched in the built (approximate) index: (ids, scores, recall@K on a sample).

    ``search(queries, k)`` runs the index at its stored default parameters and returns (scores, item ids).
    O(N x one query) instead of the exact table's N x N scan: what makes a 1M catalog's table feasible. The
    recall is measured against exact search (the item excluded) on ``sample`` seeded rows.
    """
    n = len(vectors)
    k_eff = max(0, min(k, n - 1))
    out_ids = np.full((n, k_eff), -1, np.int64)
    out_scores = np.zeros((n, k_eff), np.float32)
    if k_eff == 0:
        return out_ids, out_scores, 1.0
    for start in tqdm(range(0, n, BLOCK_ROWS), desc="neighbour table (index)", unit="block", disable=not progress):
        block = np.ascontiguousarray(vectors[start : start + BLOCK_ROWS])
        scores, found = search(block, k_eff + 1)
        _store_without_self(out_ids, out_scores, start, ids, found, scores)
    # A compressed index scores against its reconstruction (SQ8 re-ranking: cosine + a quantization error of up to
    # ~0.01), so a near-duplicate can score above 1: the table stores cosines, clipped to [-1, 1] (a 1M x 1280
    # ivf-pq build failed its pre-publish check on scores of 1.00x before this). The order is unchanged.
    np.clip(out_scores, -1.0, 1.0, out=out_scores)
    short = np.flatnonzero((out_ids < 0).any(axis=1))
    if len(short):  # the probed lists held fewer than k + 1 items (small catalogs): those rows exactly
        log.info("%d rows of the neighbour table completed by exact search", len(short))
        for row in short:
            sims = vectors @ vectors[row]
            sims[row] = -np.inf
            top = np.argsort(-sims, kind="stable")[:k_eff]
            out_ids[row], out_scores[row] = ids[top], sims[top]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    # the sample's exact top K + 1 in one blocked pass over the vectors (a scan per row would read 1M x 1280
    # floats 200 times), then each row's own item dropped as in the table
    truth_scores, truth_rows = exact_search(vectors, np.ascontiguousarray(vectors[rows], np.float32), k_eff + 1)
    truth = np.full((len(rows), k_eff), -1, np.int64)
    _store_without_self(truth, np.zeros(truth.shape, np.float32), 0, ids[rows], ids[truth_rows], truth_scores)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(out_ids[rows], truth))
    return out_ids, out_scores, hits / truth.size
