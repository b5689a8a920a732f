"""What the quality tools need from a published bundle, read in one place.

``bundle_facts`` is the only function here that reads manifest keys (the manifest is about to become a
typed object: adapt this function and nothing else). ``bundle_vectors`` reads the stored vectors back from
the FAISS index, and ``served_item_neighbours`` answers item queries the way the server does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer import bundle as bundles
from indexer.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleFacts:
    build_id: str
    path: Path
    model: str
    dim: int
    item_count: int
    index_type: str  # "flat" or "ivf"
    nlist: int  # 0 for flat
    nprobe: int  # the stored default; 0 for flat
    embedder: dict[str, Any] | None  # EmbedderSpec.from_dict input + fingerprint; None: precomputed vectors
    fingerprint: str
    posters_dir: Path | None  # where the catalog's posters were read from at build time
    movies_csv: Path | None
    neighbours_k: int
    build_seconds: float | None
    embed_seconds: float | None
    embedded: int  # images embedded (not from the cache) during the build


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value not in (None, "", "None") else None


def bundle_facts(bundle: Bundle) -> BundleFacts:
    """Every manifest field the quality tools use (the one place that reads them)."""
    m = bundle.manifest
    catalog = m.source.get("catalog") or {}
    phases = m.phase_seconds
    ivf = _ivf(bundle.index)
    return BundleFacts(
        build_id=m.build_id,
        path=bundle.path,
        model=m.model,
        dim=m.dim,
        item_count=m.item_count,
        index_type=m.index.type,
        nlist=int(ivf.nlist) if ivf is not None else 0,
        nprobe=int(ivf.nprobe) if ivf is not None else 0,
        embedder=m.embedder.model_dump() if m.embedder is not None else None,
        fingerprint=m.embedder.fingerprint if m.embedder is not None else "",
        posters_dir=_path_or_none(catalog.get("posters_dir")),
        movies_csv=_path_or_none(catalog.get("movies_csv")),
        neighbours_k=0 if bundle.neighbour_ids is None else int(bundle.neighbour_ids.shape[1]),
        build_seconds=phases.get("total", sum(phases.values()) if phases else None),
        embed_seconds=phases.get("embed"),
        embedded=int(m.embedding_counts.get("embedded", 0)),
    )


def open_bundle(root: Path, verify: bool = True) -> Bundle:
    """An index root (its CURRENT bundle) or a bundle directory."""
    path = root if (root / bundles.MANIFEST).exists() else bundles.current_path(root)
    return bundles.load_bundle(path, verify=verify)


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    if isinstance(index, faiss.IndexIDMap):
        return None
    return faiss.try_extract_index_ivf(index)


def bundle_vectors(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """(item ids int64 in items.csv order, their stored L2-normalized vectors float32 (n, d))."""
    ids = bundle.items["item_id"].to_numpy(np.int64)
    try:
        vectors = bundle.index.reconstruct_batch(ids)
    except RuntimeError:  # an index type without batch reconstruction
        vectors = np.vstack([bundle.index.reconstruct(int(i)) for i in ids])
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def search_params(bundle: Bundle, nprobe: int | None) -> faiss.SearchParameters | None:
    """Search parameters for an IVF bundle at ``nprobe`` (None: the stored default); None for flat."""
    if _ivf(bundle.index) is None or nprobe is None:
        return None
    return faiss.SearchParametersIVF(nprobe=int(nprobe))


def search(bundle: Bundle, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, item ids) from the served index, as the server's vector and image queries get them."""
    k = min(k, bundle.index.ntotal)
    return bundle.index.search(np.ascontiguousarray(queries, np.float32), k, params=search_params(bundle, nprobe))


def ids_to_rows(ids: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Map item ids (any shape; -1 padding kept) to row positions in ``ids``."""
    found = np.asarray(found, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], found), 0, len(ids) - 1)
    rows = order[pos]
    ok = (found >= 0) & (ids[rows] == found)
    return np.where(ok, rows, -1)


def drop_ids(found: np.ndarray, scores: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's ``exclude`` id and -1 padding, keep the first k; pad with -1 / 0."""
    out_ids = np.full((len(found), k), -1, np.int64)
    out_scores = np.zeros((len(found), k), np.float32)
    for r, (f, s, drop) in enumerate(zip(found, scores, np.asarray(exclude).tolist(), strict=True)):
        keep = (f != drop) & (f >= 0)
        f, s = f[keep][:k], s[keep][:k]
        out_ids[r, : len(f)], out_scores[r, : len(s)] = f, s
    return out_ids, out_scores


def served_item_neighbours(
    bundle: Bundle,
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: np.ndarray,
    k: int,
    nprobe: int | None = None,
    use_table: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Item queries answered as the server does: (neighbour ids, scores) (len(rows), k), the item excluded.

    From the precomputed neighbour table when k fits in it (and neither nprobe nor ``use_table=False``
    says otherwise), else from the index with k + 1 results and the item removed by id. Missing: -1.
    """
    rows = np.asarray(rows, dtype=np.int64)
    k = min(k, len(ids) - 1)
    table = bundle.neighbour_ids
    if use_table and table is not None and nprobe is None and k <= table.shape[1]:
        assert bundle.neighbour_scores is not None
        return table[rows, :k].copy(), bundle.neighbour_scores[rows, :k].copy()
    scores, found = search(bundle, vectors[rows], k + 1, nprobe)
    return drop_ids(found, scores, ids[rows], k)
