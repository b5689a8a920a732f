"""The index families a bundle may hold, and how to recognise one in a FAISS index read from disk.

Separate from ``indexer.index`` (which builds indexes and depends on the manifest) so that the bundle
reader can check an index against its manifest without an import cycle.
"""

from __future__ import annotations

import faiss
import numpy as np

BUILT_KINDS = ("flat", "ivf", "ivf-sq8", "ivf-fp16", "ivf-pq", "hnsw", "hnsw-sq8")
IVF_KINDS = ("ivf", "ivf-sq8", "ivf-fp16", "ivf-pq")
HNSW_KINDS = ("hnsw", "hnsw-sq8")
EXACT_KINDS = ("flat",)


def kind_of(index: faiss.Index) -> str:
    """The family of a FAISS index as this module builds it (what the reader checks against the manifest)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexRefine):
        return "ivf-pq"
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        return "hnsw-sq8" if isinstance(storage, faiss.IndexScalarQuantizer) else "hnsw"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    if faiss.try_extract_index_ivf(inner) is None:
        return type(inner).__name__
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        qtype = inner.sq.qtype
        return {faiss.ScalarQuantizer.QT_8bit: "ivf-sq8", faiss.ScalarQuantizer.QT_fp16: "ivf-fp16"}.get(
            qtype, f"ivf-sq{qtype}"
        )
    return "ivf"


def list_ids(ivf: faiss.IndexIVF, lst: int) -> np.ndarray:
    """The ids stored in one inverted list of ``ivf`` (int64, a copy)."""
    size = ivf.invlists.list_size(lst)
    if not size:
        return np.zeros(0, np.int64)
    ptr = ivf.invlists.get_ids(lst)
    try:
        return faiss.rev_swig_ptr(ptr, size).astype(np.int64, copy=True)
    finally:
        ivf.invlists.release_ids(lst, ptr)
