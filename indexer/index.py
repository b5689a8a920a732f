"""FAISS inner-product indexes over L2-normalized vectors, keyed by item id.

One entry point, ``build_index(vectors, ids, spec)``: it knows nothing of images or catalogs. The family
(``IndexSpec.kind``, the FAISS factory string each builds is in the manifest):

- ``flat``: exact (``IDMap2,Flat``); 4·D bytes per vector.
- ``ivf``: IVF-Flat, ``nprobe`` of ``nlist`` lists probed; 4·D.
- ``ivf-sq8`` / ``ivf-fp16``: IVF with scalar-quantized vectors; D or 2·D bytes.
- ``ivf-pq``: IVF with 4-bit fast-scan product quantization (``pq_m`` sub-quantizers) whose candidates
  (k x ``k_factor``) are re-ranked against stored SQ8 vectors (``IndexRefine``); D + pq_m/2 bytes. By default
  ``pq_m`` is D/8 (8 dimensions per sub-quantizer), or D/16 when D/8 does not fit the memory budget: at
  1M x 1280 realistic vectors the finer codes rank well enough that k_factor 8-16 reaches recall@10 0.95-0.96
  at nprobe 32, where D/16 needs k_factor 32 (scripts/bench_ivfpq.py, scripts/bench_scale.py).
- ``hnsw`` / ``hnsw-sq8``: a graph (``hnsw_m`` links, ``ef_construction``), searched with ``ef_search``;
  4·D (or D) + 8·M bytes.
- ``auto``: flat for small catalogs, else the first IVF family that fits ``memory_budget`` (see ``choose``).

Search parameters (nprobe, ef_search, k_factor) are tuned at build time to the lowest setting reaching
``target_recall`` (recall@10 against exact search) on **held-out** queries: a seeded sample of the vectors
is left out of training and of the index, searched, and only then added. The tuned values, the recall,
the one-query latency and the memory estimate go into the manifest.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import faiss
import numpy as np

from indexer.bundle.manifest import IndexParams
from indexer.errors import BuildError
from indexer.index_kinds import BUILT_KINDS, EXACT_KINDS, HNSW_KINDS, IVF_KINDS, kind_of

__all__ = ["EXACT_KINDS", "HNSW_KINDS", "IVF_KINDS", "kind_of"]  # re-exported: the family names live there

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", *BUILT_KINDS)
# auto: exact flat search below this many items. A flat vector query scans N*D floats on one core: ~3 ms at
# 20k x 512 and ~9 ms at 20k x 1280, against ~0.1-0.3 ms for IVF at recall@10 >= 0.95.
AUTO_IVF_MIN_ITEMS = 20_000
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this
TRAIN_POINTS_PER_CENTROID = 64
TUNE_QUERIES = 500  # held-out queries for tuning and the recall in the manifest
MIN_INDEXED_FOR_HOLDOUT = 100  # below this, every vector is indexed and recall is measured held-in
TUNE_K = 10
LATENCY_QUERIES = 200
LATENCY_ROUNDS = 3  # ivf-pq candidates (nprobe, k_factor) are timed in turn, this many times, before one is chosen
SQ_TRAIN_VECTORS = 65_536  # scalar quantizers (hnsw-sq8) learn per-dimension ranges from a sample
NORMALIZE_BLOCK_ROWS = 8192  # rows normalized at a time (float64 temporaries of 8192 x D)
EXACT_BLOCK_ROWS = 65_536  # rows per GEMM block of the exact oracle
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
MAX_EF_SEARCH = 4096
# default pq_m: D / 8 when it fits the memory budget, else D / 16 (4-bit codes: pq_m / 2 bytes per vector)
PQ_DIMS_PER_SUBQUANTIZER = (8, 16)
DEFAULT_K_FACTOR = 4
MAX_K_FACTOR = 64
ID_BYTES = 8
IDMAP_BYTES = 56  # IDMap2: the id array (8) plus its reverse hash map (~48 measured at 1M), per vector
HNSW_LINK_BYTES = 8  # per link and level-0 neighbour (two directions of int32)
# the estimate's headroom (allocator slack, lists' spare capacity): at 1M x 1280 ivf-pq the estimate before it
# was within 0.2 % of the RSS a read of the index adds (1.431 GB; scripts/bench_scale.py --worker load)
MEMORY_SAFETY = 1.03


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "auto"
    nlist: int | None = None  # IVF lists; default ~sqrt(N)
    nprobe: int | None = None  # default: tuned to reach target_recall
    target_recall: float = 0.95
    auto_ivf_min_items: int = AUTO_IVF_MIN_ITEMS
    seed: int = 1234
    hnsw_m: int = DEFAULT_HNSW_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int | None = None  # default: tuned
    pq_m: int | None = None  # default D / 8, or D / 16 when that does not fit memory_budget
    k_factor: int | None = None  # default: tuned (starting at 4)
    memory_budget: int | None = None  # bytes; auto picks a type whose index fits


@dataclass
class BuiltIndex:
    index: faiss.Index
    params: IndexParams  # goes into the manifest

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item ids) at the stored default search parameters, all threads (batch work)."""
        p = self.params
        params = search_parameters(self.index, p.type, p.nprobe, p.ef_search, p.k_factor)
        return self.index.search(np.ascontiguousarray(queries, np.float32), k, params=params)


def normalize(vectors: np.ndarray, in_place: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalize rows as contiguous float32; returns (normalized, ok mask of non-zero finite rows; those
    rows are zeros in the result).

    Each row is scaled by its largest magnitude before the norm is taken, so a row of values near
    float32's maximum (3e38, whose squares overflow) or of subnormals (whose squares vanish) still
    normalizes to unit length instead of to zeros. ``in_place``: overwrite ``vectors`` when it already is a
    writable contiguous float32 array (a build's 1M x 1280 input: no second 5 GB copy).
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise BuildError(f"vectors expected as a 2-D array (N, D), got shape {x.shape}")
    out = x if in_place and x.flags.writeable else np.zeros_like(x)
    ok = np.zeros(len(x), bool)
    for start in range(0, len(x), NORMALIZE_BLOCK_ROWS):  # bounds the float64 temporaries
        block = x[start : start + NORMALIZE_BLOCK_ROWS]
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.asarray(np.isfinite(block).all(axis=1))
            scale = np.abs(np.where(finite[:, None], block, 0)).max(axis=1, initial=0).astype(np.float64)
        good = finite & (scale > 0)
        scaled = block[good].astype(np.float64) / scale[good, None]  # |values| <= 1: no overflow, no underflow
        target = out[start : start + NORMALIZE_BLOCK_ROWS]  # may be ``block`` itself (in place): read above
        target[good] = scaled / np.linalg.norm(scaled, axis=1)[:, None]
        target[~good] = 0
        ok[start : start + NORMALIZE_BLOCK_ROWS] = good
    return out, ok


def default_nlist(n: int) -> int:
    """About sqrt(N) lists: at 20k-60k items, k-means stays well under a second per 512 dims and a
    probe of a few lists scans a few hundred vectors (sub-millisecond queries)."""
    return int(max(1, min(round(math.sqrt(n)), n // MIN_POINTS_PER_CENTROID)))


def default_pq_m(d: int, dims_per_subquantizer: int = PQ_DIMS_PER_SUBQUANTIZER[0]) -> int:
    """D / ``dims_per_subquantizer`` sub-quantizers (even, dividing D), at least 2."""
    m = max(2, d // dims_per_subquantizer)
    while m > 2 and (d % m or m % 2):
        m -= 1
    if d % m:
        raise BuildError(f"ivf-pq needs a number of sub-quantizers dividing the dimension {d}; pass --pq-m")
    return m


def pq_m_for(spec: IndexSpec, n: int, d: int) -> int:
    """ivf-pq sub-quantizers: ``spec.pq_m``, else the finest default (D/8, then D/16) that fits the budget."""
    if spec.pq_m is not None:
        return spec.pq_m
    if d % 2:
        return 0  # no even number of sub-quantizers divides an odd dimension (ivf-pq is not offered)
    candidates = [default_pq_m(d, per) for per in PQ_DIMS_PER_SUBQUANTIZER]
    budget = spec.memory_budget
    fits = [m for m in candidates if budget is None or _estimate("ivf-pq", n, d, spec, m) <= budget]
    return fits[0] if fits else candidates[-1]


def memory_estimate(kind: str, n: int, d: int, spec: IndexSpec) -> int:
    """Bytes the index of ``kind`` over ``n`` x ``d`` vectors holds in memory (an estimate, with headroom)."""
    return _estimate(kind, n, d, spec, pq_m_for(spec, n, d) if kind == "ivf-pq" else 0)


def _estimate(kind: str, n: int, d: int, spec: IndexSpec, pq_m: int) -> int:
    nlist = spec.nlist or default_nlist(n)
    centroids = 4 * d * nlist
    if kind == "ivf-pq":
        per_vector = d + pq_m // 2 + ID_BYTES + IDMAP_BYTES
    else:
        per_vector = {
            "flat": 4 * d + IDMAP_BYTES,
            "ivf": 4 * d + ID_BYTES,
            "ivf-sq8": d + ID_BYTES,
            "ivf-fp16": 2 * d + ID_BYTES,
            "hnsw": 4 * d + HNSW_LINK_BYTES * spec.hnsw_m + IDMAP_BYTES,
            "hnsw-sq8": d + HNSW_LINK_BYTES * spec.hnsw_m + IDMAP_BYTES,
        }[kind]
    return int(MEMORY_SAFETY * (n * per_vector + (centroids if kind in IVF_KINDS else 0)))


# auto, for catalogs too big for flat: the families in order of preference (measured in scripts/bench_scale.py):
# IVF-Flat is the fastest IVF per query while it fits; IVF-PQ fast scan + SQ8 re-ranking is next at a quarter of
# its memory (1M x 1280: recall@10 0.96 at 0.56 ms in 1.43 GB, built in 85 s); IVF-SQ8 is smaller still but scans
# D bytes per probed vector. HNSW graphs answer ~2.5x faster at the same recall but build 3-6x slower (282 s for
# hnsw-sq8 at 1M x 1280): rebuilds are routine here, so auto stays with IVF and HNSW is asked for by name.
AUTO_ORDER = ("ivf", "ivf-pq", "ivf-sq8")


def choose(spec: IndexSpec, n: int, d: int) -> tuple[str, str]:
    """(kind, why) for ``spec.kind`` (``auto`` resolved against N and the memory budget)."""
    if spec.kind not in INDEX_KINDS:
        raise BuildError(f"index type expected one of {INDEX_KINDS}, got {spec.kind!r}")
    if spec.kind != "auto":
        return spec.kind, "requested"
    budget = spec.memory_budget
    if n < spec.auto_ivf_min_items and (budget is None or memory_estimate("flat", n, d, spec) <= budget):
        return "flat", f"auto: {n} < {spec.auto_ivf_min_items} items: exact search is fast enough"
    # no even number of sub-quantizers divides an odd dimension: ivf-pq is not offered then
    offered = [kind for kind in AUTO_ORDER if kind != "ivf-pq" or spec.pq_m is not None or d % 2 == 0]
    for kind in offered:
        need = memory_estimate(kind, n, d, spec)
        if budget is None or need <= budget:
            limit = "no budget" if budget is None else f"fits the budget of {budget / 1e9:.2f} GB"
            detail = f" with {pq_m_for(spec, n, d)} sub-quantizers" if kind == "ivf-pq" else ""
            return kind, f"auto: {kind}{detail} needs ~{need / 1e9:.2f} GB ({limit})"
    smallest = min(offered, key=lambda k: memory_estimate(k, n, d, spec))
    raise BuildError(
        f"memory budget expected at least {memory_estimate(smallest, n, d, spec) / 1e9:.2f} GB "
        f"({smallest}, the smallest index of {n} x {d}), got {(budget or 0) / 1e9:.2f} GB"
    )


def resolve_kind(spec: IndexSpec, n: int, d: int = 0) -> str:
    return choose(spec, n, d or 1)[0]


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, skip: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, returning (scores, row positions); rows where ``skip`` is True are not
    candidates. Blocked GEMM: never a copy of ``vectors``."""
    k = min(k, len(vectors) - (int(skip.sum()) if skip is not None else 0))
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(vectors), EXACT_BLOCK_ROWS):
        block = vectors[start : start + EXACT_BLOCK_ROWS]
        scores = queries @ block.T
        if skip is not None:
            scores[:, skip[start : start + len(block)]] = -np.inf
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + len(block)), scores[:, k:].shape)], 1
        )
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, axis=1)
        best_scores = np.take_along_axis(scores, top, 1)
        best_rows = np.take_along_axis(rows, top, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each truth row found in the same row of ``found`` (ids; -1 ignored)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


# ---- structure -----------------------------------------------------------------------------------------------
def factory_string(kind: str, d: int, nlist: int, spec: IndexSpec) -> str:
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if kind == "ivf-sq8":
        return f"IVF{nlist},SQ8"
    if kind == "ivf-fp16":
        return f"IVF{nlist},SQfp16"
    if kind == "ivf-pq":
        return f"IDMap2,IVF{nlist},PQ{spec.pq_m or default_pq_m(d)}x4fs,Refine(SQ8)"  # build_index resolves pq_m
    if kind == "hnsw":
        return f"IDMap2,HNSW{spec.hnsw_m},Flat"
    return f"IDMap2,HNSW{spec.hnsw_m},SQ8"


def search_parameters(
    index: faiss.Index, kind: str, nprobe: int = 0, ef_search: int = 0, k_factor: int = 0, sel: object = None
) -> faiss.SearchParameters | None:
    """FAISS search parameters for one search of ``index`` (the shared index is never mutated). ``sel`` (an
    IDSelector over item ids) is translated for indexes whose inner positions are not item ids."""
    if kind == "flat":
        return faiss.SearchParameters(sel=sel) if sel is not None else None
    if kind in ("ivf", "ivf-sq8", "ivf-fp16"):
        return (
            faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
            if sel is not None
            else faiss.SearchParametersIVF(nprobe=nprobe)
        )
    inner_sel = faiss.IDSelectorTranslated(index.id_map, sel) if sel is not None else None
    if kind == "ivf-pq":
        base = (
            faiss.SearchParametersIVF(nprobe=nprobe, sel=inner_sel)
            if inner_sel is not None
            else (faiss.SearchParametersIVF(nprobe=nprobe))
        )
        params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor))
        params.base_index_params = base
        params._keep = (base, inner_sel, sel)  # the SWIG objects must outlive the search
        return params
    if inner_sel is not None:
        params = faiss.SearchParametersHNSW(efSearch=ef_search, sel=inner_sel)
        params._keep = (inner_sel, sel)
        return params
    return faiss.SearchParametersHNSW(efSearch=ef_search)


# ---- building ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Knobs:
    nprobe: int = 0
    ef_search: int = 0
    k_factor: int = 0


def _make(kind: str, d: int, nlist: int, spec: IndexSpec) -> faiss.Index:
    factory = factory_string(kind, d, nlist, spec)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = spec.seed
    hnsw = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else None
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = spec.ef_construction
    return index


def _search(index: faiss.Index, kind: str, q: np.ndarray, k: int, knobs: _Knobs) -> np.ndarray:
    params = search_parameters(index, kind, knobs.nprobe, knobs.ef_search, knobs.k_factor)
    return index.search(q, k, params=params)[1]


def _tune(
    index: faiss.Index, kind: str, nlist: int, q: np.ndarray, truth: np.ndarray, spec: IndexSpec
) -> tuple[_Knobs, float]:
    """The smallest search setting whose recall@k on ``q`` reaches the target (doubling), and its recall."""
    k = truth.shape[1]
    if kind == "flat":
        return _Knobs(), recall_at_k(_search(index, kind, q, k, _Knobs()), truth)
    if kind in HNSW_KINDS:
        if spec.ef_search is not None:
            knobs = _Knobs(ef_search=spec.ef_search)
            return knobs, recall_at_k(_search(index, kind, q, k, knobs), truth)
        ef = max(k, 16)
        while True:
            knobs = _Knobs(ef_search=ef)
            recall = recall_at_k(_search(index, kind, q, k, knobs), truth)
            if recall >= spec.target_recall or ef >= MAX_EF_SEARCH:
                return knobs, recall
            ef *= 2
    nprobes = [min(spec.nprobe, nlist)] if spec.nprobe is not None else _doubling(nlist)
    if kind != "ivf-pq":
        knobs, recall = _Knobs(), 0.0
        for nprobe in nprobes:
            knobs = _Knobs(nprobe=nprobe)
            recall = recall_at_k(_search(index, kind, q, k, knobs), truth)
            if recall >= spec.target_recall:
                break
        return knobs, recall
    # IVF-PQ: recall is limited both by the probe (nprobe) and by the quantization (k_factor re-ranked
    # candidates). For each nprobe the smallest k_factor reaching the target; of those pairs, the fastest.
    factors = [spec.k_factor] if spec.k_factor is not None else _doubling_from(DEFAULT_K_FACTOR, MAX_K_FACTOR)
    meeting: list[tuple[_Knobs, float]] = []  # (setting, recall) of each nprobe's smallest k_factor reaching it
    best = (_Knobs(nprobe=nlist, k_factor=factors[-1]), 0.0)
    for nprobe in nprobes:
        for k_factor in factors:
            knobs = _Knobs(nprobe=nprobe, k_factor=k_factor)
            recall = recall_at_k(_search(index, kind, q, k, knobs), truth)
            if recall > best[1]:
                best = (knobs, recall)
            if recall >= spec.target_recall:
                meeting.append((knobs, recall))
                break
        if meeting and meeting[-1][0].k_factor == factors[0]:
            break  # the smallest k_factor suffices: more lists only cost time
    if not meeting:
        return best
    # the fastest pair, timed together once the recall searches are over, in interleaved rounds (median per pair).
    # One timing per pair, each right after a two-thread recall search, chose nprobe 64 / k_factor 8 at "1.04 ms"
    # in a 1M x 1280 build, where nprobe 32 / k_factor 16 serves in 0.57 ms (scripts/bench_ivfpq.py: 0.82 vs 0.57).
    latencies = _interleaved_latency_ms(index, kind, q, [knobs for knobs, _ in meeting])
    return meeting[int(np.argmin(latencies))]


def _doubling_from(start: int, limit: int) -> list[int]:
    values, v = [], start
    while v < limit:
        values.append(v)
        v *= 2
    return [*values, limit]


def _doubling(limit: int) -> list[int]:
    values, v = [], 1
    while v < limit:
        values.append(v)
        v *= 2
    return [*values, limit]


def _interleaved_latency_ms(index: faiss.Index, kind: str, q: np.ndarray, candidates: list[_Knobs]) -> list[float]:
    """Median over LATENCY_ROUNDS rounds of each candidate's p50, the candidates measured in turn in every round."""
    rounds = [[_latency_ms(index, kind, q, knobs) for knobs in candidates] for _ in range(LATENCY_ROUNDS)]
    return [float(np.median(column)) for column in zip(*rounds)]


def _latency_ms(index: faiss.Index, kind: str, q: np.ndarray, knobs: _Knobs) -> float:
    """p50 of one query at a time on one thread (the server's per-request setting)."""
    params = search_parameters(index, kind, knobs.nprobe, knobs.ef_search, knobs.k_factor)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for row in q[:LATENCY_QUERIES]:
            t = time.perf_counter()
            index.search(row[None], TUNE_K, params=params)
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(before)
    return float(np.median(times) * 1000) if times else 0.0


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
    kind, why = choose(spec, n, d)
    memory = memory_estimate(kind, n, d, spec)
    if kind == "ivf-pq":
        spec = replace(spec, pq_m=pq_m_for(spec, n, d))
    log.info("index %s (%s): estimated %.1f MB in memory", kind, why, memory / 1e6)
    start = time.perf_counter()
    nlist = spec.nlist or default_nlist(n) if kind in IVF_KINDS else 0
    if nlist > n:
        raise BuildError(f"nlist must not exceed the number of vectors: nlist={nlist}, vectors={n}")
    if kind == "ivf-pq" and (not spec.pq_m or d % spec.pq_m):
        raise BuildError(f"pq_m expected a divisor of the dimension {d}, got {spec.pq_m}")
    rng = np.random.default_rng(spec.seed)
    holdout = np.random.default_rng(spec.seed + 1)  # its own stream: the training sample does not depend on it
    held = (
        np.sort(holdout.choice(n, size=min(TUNE_QUERIES, n // 10), replace=False))
        if n - min(TUNE_QUERIES, n // 10) >= MIN_INDEXED_FOR_HOLDOUT and kind not in EXACT_KINDS
        else np.zeros(0, np.int64)
    )
    indexed = np.ones(n, bool)
    indexed[held] = False
    index = _make(kind, d, nlist, spec)
    n_train = 0
    if not index.is_trained:  # trained on a sample of the whole catalog; the held-out rows are only kept out
        n_train = min(n, max(nlist * TRAIN_POINTS_PER_CENTROID, nlist) if nlist else SQ_TRAIN_VECTORS)
        train_rows = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
        index.train(x[train_rows])
    _add(index, x, ids, np.flatnonzero(indexed))
    k = min(TUNE_K, int(indexed.sum()))
    if len(held):
        q, queries = x[held], "held-out"
        _, truth_rows = exact_search(x, q, k, skip=~indexed)
        truth = ids[truth_rows]
    else:
        q, queries = x[: min(TUNE_QUERIES, n)], "held-in"
        truth = ids[exact_search(x, q, k)[1]]
    knobs, recall = _tune(index, kind, nlist, q, truth, spec)
    latency = _latency_ms(index, kind, q, knobs)
    _add(index, x, ids, held)  # the held-out vectors are catalog items too
    ivf = faiss.try_extract_index_ivf(index)
    if kind in ("ivf", "ivf-sq8", "ivf-fp16"):
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(item_id) for item queries
        ivf.nprobe = knobs.nprobe
    elif ivf is not None:
        ivf.nprobe = knobs.nprobe
    params = IndexParams(
        type=kind,
        exact=kind in EXACT_KINDS,
        nlist=nlist,
        nprobe=knobs.nprobe,
        trained_on=n_train,
        target_recall=None if kind in EXACT_KINDS else spec.target_recall,
        recall=None if kind in EXACT_KINDS else round(recall, 4),
        recall_k=0 if kind in EXACT_KINDS else k,
        recall_queries="" if kind in EXACT_KINDS else queries,
        ef_search=knobs.ef_search,
        hnsw_m=spec.hnsw_m if kind in HNSW_KINDS else 0,
        ef_construction=spec.ef_construction if kind in HNSW_KINDS else 0,
        pq_m=spec.pq_m or 0 if kind == "ivf-pq" else 0,
        refine="sq8" if kind == "ivf-pq" else "",
        k_factor=knobs.k_factor,
        factory=factory_string(kind, d, nlist, spec),
        latency_p50_ms=round(latency, 4),
        memory_bytes=memory,
        chosen_by=why,
        held_out_queries=len(held),
    )
    if kind not in EXACT_KINDS:
        log.info(
            "%s: recall@%d=%.3f on %d %s queries at nprobe=%d ef_search=%d k_factor=%d, p50 %.3f ms",
            kind, k, recall, len(q), queries, knobs.nprobe, knobs.ef_search, knobs.k_factor, latency,
        )  # fmt: skip
    params = params.model_copy(update={"build_seconds": round(time.perf_counter() - start, 3)})
    return BuiltIndex(index=index, params=params)


def _add(index: faiss.Index, x: np.ndarray, ids: np.ndarray, rows: np.ndarray, block: int = EXACT_BLOCK_ROWS) -> None:
    """Add ``rows`` in blocks (a bounded temporary copy, never all of ``x`` at once)."""
    for start in range(0, len(rows), block):
        chunk = rows[start : start + block]
        index.add_with_ids(np.ascontiguousarray(x[chunk]), ids[chunk])
