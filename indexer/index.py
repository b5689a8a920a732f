"""FAISS inner-product indexes over L2-normalized vectors, keyed by item id.

One entry point, ``build_index(vectors, ids, spec)``: it knows nothing of images
or catalogs. ``flat`` is exact; ``ivf`` (IVF-Flat) probes ``nprobe`` of ``nlist``
inverted lists, with ``nprobe`` tuned at build time to reach a recall target
against exact search on held-out queries, and stored in the manifest.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.bundle.manifest import IndexParams
from indexer.errors import BuildError

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "ivf")
# auto: exact flat search below this many items, IVF from here on. A flat vector query scans N*D
# floats on one core: ~3 ms at 20k x 512 and ~9 ms at 20k x 1280 (benchmarks/), against ~0.1-0.3 ms
# for IVF at recall@10 >= 0.95. Item queries stay exact either way (the neighbour table).
AUTO_IVF_MIN_ITEMS = 20_000
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this
TRAIN_POINTS_PER_CENTROID = 64
TUNE_QUERIES = 500
TUNE_K = 10
NORMALIZE_BLOCK_ROWS = 8192  # rows normalized at a time (float64 temporaries of 8192 x D)


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "auto"
    nlist: int | None = None  # IVF lists; default ~sqrt(N)
    nprobe: int | None = None  # default: tuned to reach target_recall
    target_recall: float = 0.95
    auto_ivf_min_items: int = AUTO_IVF_MIN_ITEMS
    seed: int = 1234


@dataclass
class BuiltIndex:
    index: faiss.Index
    params: IndexParams  # goes into the manifest


def normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalize rows as contiguous float32; returns (normalized, ok mask of non-zero finite rows).

    Each row is scaled by its largest magnitude before the norm is taken, so a row of values near
    float32's maximum (3e38, whose squares overflow) or of subnormals (whose squares vanish) still
    normalizes to unit length instead of to zeros.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise BuildError(f"vectors expected as a 2-D array (N, D), got shape {x.shape}")
    out = np.zeros_like(x)
    ok = np.zeros(len(x), bool)
    for start in range(0, len(x), NORMALIZE_BLOCK_ROWS):  # bounds the float64 temporaries
        block = x[start : start + NORMALIZE_BLOCK_ROWS]
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.asarray(np.isfinite(block).all(axis=1))
            scale = np.abs(np.where(finite[:, None], block, 0)).max(axis=1, initial=0).astype(np.float64)
        good = finite & (scale > 0)
        scaled = block[good].astype(np.float64) / scale[good, None]  # |values| <= 1: no overflow, no underflow
        out[start : start + NORMALIZE_BLOCK_ROWS][good] = scaled / np.linalg.norm(scaled, axis=1)[:, None]
        ok[start : start + NORMALIZE_BLOCK_ROWS] = good
    return out, ok


def default_nlist(n: int) -> int:
    """About sqrt(N) lists: at 20k-60k items, k-means stays well under a second per 512 dims and a
    probe of a few lists scans a few hundred vectors (sub-millisecond queries)."""
    return int(max(1, min(round(math.sqrt(n)), n // MIN_POINTS_PER_CENTROID)))


def resolve_kind(spec: IndexSpec, n: int) -> str:
    if spec.kind not in INDEX_KINDS:
        raise BuildError(f"index type expected one of {INDEX_KINDS}, got {spec.kind!r}")
    if spec.kind == "auto":
        return "ivf" if n >= spec.auto_ivf_min_items else "flat"
    return spec.kind


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, returning (scores, row positions)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, min(k, len(vectors)))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each truth row found in the same row of ``found`` (ids; -1 ignored)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def _tune_nprobe(index: faiss.IndexIVF, vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec) -> tuple[int, float]:
    rng = np.random.default_rng(spec.seed + 1)
    q = vectors[rng.choice(len(vectors), size=min(TUNE_QUERIES, len(vectors)), replace=False)]
    k = min(TUNE_K, len(vectors))
    _, truth_rows = exact_search(vectors, q, k)
    truth = ids[truth_rows]
    nprobe, recall = 1, 0.0
    while True:
        _, found = index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        recall = recall_at_k(found, truth)
        if recall >= spec.target_recall or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec) -> BuiltIndex:
    """Build an inner-product index over normalized ``vectors`` with item ``ids`` (int64)."""
    n, d = vectors.shape
    if n == 0:
        raise BuildError("no vectors to index")
    if len(ids) != n or len(np.unique(ids)) != n:
        raise BuildError(
            f"ids must be unique and one per vector: got {len(np.unique(ids))} unique of {len(ids)} for {n}"
        )
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    kind = resolve_kind(spec, n)
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        index.add_with_ids(x, ids)
        params = IndexParams(type="flat", exact=True)
    else:
        nlist = spec.nlist or default_nlist(n)
        if nlist > n:
            raise BuildError(f"nlist must not exceed the number of vectors: nlist={nlist}, vectors={n}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = spec.seed
        rng = np.random.default_rng(spec.seed)
        n_train = min(n, max(nlist * TRAIN_POINTS_PER_CENTROID, nlist))
        train = x[np.sort(rng.choice(n, size=n_train, replace=False))] if n_train < n else x
        index.train(train)
        index.own_fields = True
        quantizer.this.disown()
        index.add_with_ids(x, ids)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(item_id) for item queries
        if spec.nprobe is not None:
            nprobe = min(spec.nprobe, nlist)
            _, truth_rows = exact_search(x, x[: min(TUNE_QUERIES, n)], min(TUNE_K, n))
            _, found = index.search(
                x[: min(TUNE_QUERIES, n)], min(TUNE_K, n), params=faiss.SearchParametersIVF(nprobe=nprobe)
            )
            recall = recall_at_k(found, ids[truth_rows])
        else:
            nprobe, recall = _tune_nprobe(index, x, ids, spec)
        index.nprobe = nprobe
        params = IndexParams(
            type="ivf",
            exact=False,
            nlist=nlist,
            nprobe=nprobe,
            trained_on=n_train,
            target_recall=spec.target_recall,
            recall=round(recall, 4),
            recall_k=TUNE_K,
            recall_queries="held-in",
        )
        log.info("IVF nlist=%d nprobe=%d recall@%d=%.3f", nlist, nprobe, TUNE_K, recall)
    params = params.model_copy(update={"build_seconds": round(time.perf_counter() - start, 3)})
    return BuiltIndex(index=index, params=params)
