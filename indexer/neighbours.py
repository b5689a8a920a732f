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
from indexer.index_kinds import list_ids

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
    out_ids, out_scores = _empty_table(n, k)
    k_eff = out_ids.shape[1]
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
    out_ids, out_scores = _empty_table(len(vectors), k)
    n, k_eff = out_ids.shape
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
    return out_ids, out_scores, _complete_and_measure(vectors, ids, out_ids, out_scores, sample, seed)


def table_from_ivf_lists(
    ivf: faiss.IndexIVF,
    nprobe: int,
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
    progress: bool = False,
    sample: int = RECALL_SAMPLE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The neighbour table of an IVF index whose lists hold item ids, list by list: (ids, scores, recall@K).

    Each item is a query of the lists its vector probes (the index's own coarse quantizer, ``nprobe`` lists);
    then, for each list, every query probing it meets every member in one matrix product over the build's exact
    vectors, and each query keeps its best k + 1. The answer is what the index returns at that nprobe, with
    exact scores — but at BLAS speed: one query at a time, IVF scans each list with vector-by-vector kernels
    (60k x 1280 at nprobe 16: the table took longer than the exact all-pairs pass).
    """
    out_ids, out_scores = _empty_table(len(vectors), k)
    n, k_eff = out_ids.shape
    if k_eff == 0:
        return out_ids, out_scores, 1.0
    nprobe = max(1, min(nprobe, ivf.nlist))
    probes = np.empty((n, nprobe), np.int64)
    for start in range(0, n, BLOCK_ROWS):
        probes[start : start + BLOCK_ROWS] = ivf.quantizer.search(
            np.ascontiguousarray(vectors[start : start + BLOCK_ROWS]), nprobe
        )[1]
    order = np.argsort(probes.ravel(), kind="stable")  # queries grouped by the list they probe
    bounds = np.searchsorted(probes.ravel()[order], np.arange(ivf.nlist + 1))
    row_of_id = _row_lookup(ids)
    best_scores = np.full((n, k_eff + 1), -np.inf, np.float32)
    best_rows = np.full((n, k_eff + 1), -1, np.int64)
    for lst in tqdm(range(ivf.nlist), desc="neighbour table (IVF lists)", unit="list", disable=not progress):
        queries = order[bounds[lst] : bounds[lst + 1]] // nprobe
        members = row_of_id(list_ids(ivf, lst))
        if len(queries) == 0 or len(members) == 0:
            continue
        member_vectors = np.ascontiguousarray(vectors[members])
        for start in range(0, len(queries), BLOCK_ROWS):
            q = queries[start : start + BLOCK_ROWS]
            scores = np.concatenate([best_scores[q], vectors[q] @ member_vectors.T], axis=1)
            rows = np.concatenate([best_rows[q], np.broadcast_to(members, (len(q), len(members)))], axis=1)
            top = np.argpartition(-scores, k_eff, axis=1)[:, : k_eff + 1]
            best_scores[q] = np.take_along_axis(scores, top, 1)
            best_rows[q] = np.take_along_axis(rows, top, 1)
    ranked = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores = np.take_along_axis(best_scores, ranked, 1)
    best_rows = np.take_along_axis(best_rows, ranked, 1)
    found = np.where(best_rows >= 0, ids[np.maximum(best_rows, 0)], -1)
    _store_without_self(out_ids, out_scores, 0, ids, found, best_scores)
    np.clip(out_scores, -1.0, 1.0, out=out_scores)  # exact float32 products: only rounding can pass 1
    return out_ids, out_scores, _complete_and_measure(vectors, ids, out_ids, out_scores, sample, seed)


def _empty_table(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids filled with -1, scores 0) of shape (n, min(k, n - 1)): an item is never its own neighbour."""
    k_eff = max(0, min(k, n - 1))
    return np.full((n, k_eff), -1, np.int64), np.zeros((n, k_eff), np.float32)


def _row_lookup(ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    return lambda wanted: order[np.searchsorted(sorted_ids, wanted)]


def _complete_and_measure(
    vectors: np.ndarray, ids: np.ndarray, out_ids: np.ndarray, out_scores: np.ndarray, sample: int, seed: int
) -> float:
    """Rows left short (-1: the probed lists held fewer than K + 1 items) completed by exact search; then the
    table's recall@K against exact search on ``sample`` seeded rows."""
    n, k_eff = out_ids.shape
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
    return hits / truth.size
