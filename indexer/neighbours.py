"""Precomputed top-K neighbour table: every item's exact K nearest items.

Computed in query blocks with FAISS (O(N*K) memory, never the N x N matrix),
so the server can answer plain item queries with k <= K in O(k).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_K = 100
# Two posters this similar are the same image (tuned on the copy-detection edits: no two distinct real
# photos exceed it; exact and mirrored copies do). The build reports such pairs; eval lists them.
NEAR_DUPLICATE_COSINE = 0.95
BLOCK_ROWS = 4096


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
        found = ids[rows]
        self_ids = ids[start : start + len(block), None]
        is_self = found == self_ids
        # drop the item itself; if a tie pushed it out of the k+1, drop the last entry instead
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k_eff)
        keep = np.ones_like(is_self)
        keep[np.arange(len(block)), drop] = False
        out_ids[start : start + len(block)] = found[keep].reshape(len(block), k_eff)
        out_scores[start : start + len(block)] = scores[keep].reshape(len(block), k_eff)
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
