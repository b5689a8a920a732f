"""The vector index of a bundle: FAISS search with per-request parameters, reconstruction by item id,
and the precomputed neighbour table. Plain arrays in and out; no item metadata, no validation.

Per-request parameters (nprobe, ef_search, k_factor, exact) go through FAISS search-parameter objects
(``indexer.index.search_parameters``, one place for every index family): the shared index is never
mutated from a request thread. OpenMP thread counts are per calling thread, so each request thread sets
its own once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.bundle import Bundle
from indexer.index import DEFAULT_K_FACTOR, EXACT_KINDS, IVF_KINDS, search_parameters
from server.coalescer import Coalescer

DEFAULT_EF_SEARCH = 64  # HNSW bundles that did not store a tuned efSearch
EXACT_EF_PER_RESULT = 8  # "exact" on a graph: efSearch of at least 8 x the results fetched


@dataclass(frozen=True)
class SearchParams:
    """How one search runs: ``nprobe`` 0 = the bundle default; ``exact`` scans every list; ``allow`` / ``deny``
    restrict the ids the index may return (a filter, applied inside the search: at most one is set)."""

    nprobe: int = 0
    exact: bool = False
    allow: np.ndarray | None = None  # int64 item ids
    deny: np.ndarray | None = None
    ef_search: int = 0  # HNSW: 0 = the bundle default
    k_factor: int = 0  # IVF-PQ re-ranking: 0 = the bundle default


class VectorIndex:
    def __init__(self, bundle: Bundle, threads: int = 1, coalesce: bool = False) -> None:
        self.index = bundle.index
        self.dim = int(bundle.index.d)
        stored = bundle.manifest.index
        self.kind = stored.type
        ivf = faiss.try_extract_index_ivf(bundle.index) if self.kind in IVF_KINDS else None
        self.nlist = int(ivf.nlist) if ivf is not None else 0
        self.default_nprobe = int(ivf.nprobe) if ivf is not None else 0
        self.default_ef_search = stored.ef_search or DEFAULT_EF_SEARCH
        self.default_k_factor = stored.k_factor or DEFAULT_K_FACTOR
        self.is_exact = self.kind in EXACT_KINDS
        self.table_exact = bundle.manifest.neighbours.exact
        self.threads = threads
        self._tls = threading.local()
        self._table_ids = bundle.neighbour_ids
        self._table_scores = bundle.neighbour_scores
        self.table_k = 0 if bundle.neighbour_ids is None else int(bundle.neighbour_ids.shape[1])
        # opt-in: batch concurrent single queries on flat indexes into one FAISS call. On 2 cores it did
        # not beat one single-threaded scan per request thread (scripts/bench_concurrency.py).
        self.coalescer = Coalescer(self.index) if self.is_exact and coalesce else None

    def _ensure_threads(self) -> None:
        if getattr(self._tls, "threads", None) != self.threads:
            faiss.omp_set_num_threads(self.threads)
            self._tls.threads = self.threads

    @staticmethod
    def _selector(params: SearchParams) -> faiss.IDSelector | None:
        if params.allow is not None:
            return faiss.IDSelectorBatch(np.ascontiguousarray(params.allow, np.int64))
        if params.deny is not None:
            return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(params.deny, np.int64)))
        return None

    def faiss_params(self, params: SearchParams, fetch: int = 0) -> tuple[faiss.SearchParameters | None, bool, object]:
        """(FAISS search parameters, whether the answer is exact, objects to keep alive during the search).

        ``exact`` probes every list (IVF) or widens the graph search to at least ``EXACT_EF_PER_RESULT`` x
        fetch (HNSW); only flat and IVF-Flat answers are then exact — quantized vectors are not."""
        selector = self._selector(params)
        nprobe = self.nlist if params.exact else (params.nprobe or self.default_nprobe)
        ef_search = params.ef_search or self.default_ef_search
        if params.exact:
            ef_search = max(ef_search, EXACT_EF_PER_RESULT * max(1, fetch))
        k_factor = params.k_factor or self.default_k_factor
        faiss_params = search_parameters(self.index, self.kind, nprobe, ef_search, k_factor, selector)
        exact = self.is_exact or (self.kind == "ivf" and nprobe >= self.nlist)
        return faiss_params, exact, selector

    def search(self, queries: np.ndarray, fetch: int, params: SearchParams) -> tuple[np.ndarray, np.ndarray, bool]:
        """Top-``fetch`` (scores, item ids, exact) for normalized float32 queries (nq, dim); ids -1 pad."""
        self._ensure_threads()
        faiss_params, exact, keep_alive = self.faiss_params(params, fetch)
        if self.coalescer is not None and len(queries) == 1 and keep_alive is None:
            scores, ids = self.coalescer.search(queries[0], fetch)
            return scores[None], ids[None], exact
        scores, ids = self.index.search(queries, fetch, params=faiss_params)
        del keep_alive  # the selector (referenced by the parameters) lived until here
        return scores, ids, exact

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """Stored (normalized) vectors of known item ids, (n, dim) float32."""
        if len(item_ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.vstack([self.index.reconstruct(int(i)) for i in item_ids])

    def table_row(self, row: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(neighbour ids, scores) of an item row from the precomputed table, or None without one."""
        if self._table_ids is None or self._table_scores is None:
            return None
        return self._table_ids[row], self._table_scores[row]
