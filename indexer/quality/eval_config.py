"""Shared pieces of an evaluation: its options, the loaded bundle, seeded streams and timing helpers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.bundle import Bundle
from indexer.quality import QualityError
from indexer.quality.bundle_view import BundleFacts
from indexer.quality.duplicates import DEFAULT_DUPLICATE_THRESHOLD
from indexer.quality.edits import DEFAULT_EDIT_KINDS, check_kinds
from indexer.query_image import DEFAULT_QUERY_MODE, QueryMode

DEFAULT_COPY_SAMPLE = 100
DEFAULT_FIDELITY_KS = (1, 10, 100)
DEFAULT_FIDELITY_QUERIES = 1000
DEFAULT_GENRE_K = 10
DEFAULT_GENRE_QUERIES = 5000
DEFAULT_COLLECTION_KS = (1, 5, 10)
DEFAULT_COPY_DEPTH = 100
DEFAULT_LATENCY_QUERIES = 200
DEFAULT_IMAGE_LATENCY_QUERIES = 20
DEFAULT_BATCH_SIZE = 32
LATENCY_K = 10
ID_COLUMN = "movieId"  # the id column of the CSVs an evaluation reads (collections, copy items)
# One independent random stream per purpose: changing one option does not reshuffle another's sample.
STREAM_COPY, STREAM_FIDELITY, STREAM_GENRES, STREAM_RANDOM, STREAM_PRIOR, STREAM_LATENCY, STREAM_PERTURB = range(7)


@dataclass(frozen=True)
class EvalConfig:
    root: Path  # index root (its CURRENT bundle) or a bundle directory
    out: Path | None = None  # default: <index root>/quality/<build id>/eval
    posters_dir: Path | None = None  # default: the folder the bundle was built from
    collections_csv: Path | None = None  # default: families.csv beside the catalog's movies.csv, if present
    collection_column: str = "family"
    copy_items_csv: Path | None = None  # draw copy-detection originals only from this CSV's movieId column
    copy_sample: int = DEFAULT_COPY_SAMPLE  # posters to edit (0: no copy detection)
    edit_kinds: tuple[str, ...] = DEFAULT_EDIT_KINDS
    copy_depth: int = DEFAULT_COPY_DEPTH
    fidelity_ks: tuple[int, ...] = DEFAULT_FIDELITY_KS
    fidelity_queries: int = DEFAULT_FIDELITY_QUERIES
    nprobes: tuple[int, ...] | None = None  # IVF: default powers of two up to nlist, plus the stored value
    genre_k: int = DEFAULT_GENRE_K
    genre_queries: int = DEFAULT_GENRE_QUERIES
    collection_ks: tuple[int, ...] = DEFAULT_COLLECTION_KS
    latency_queries: int = DEFAULT_LATENCY_QUERIES
    image_latency_queries: int = DEFAULT_IMAGE_LATENCY_QUERIES
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    phash: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    query_mode: str = DEFAULT_QUERY_MODE.value  # image queries: whole, locate or auto (as SearchByImage)
    seed: int = 0
    charts: bool = True
    verify: bool = True

    def validate(self) -> None:
        check_kinds(list(self.edit_kinds))
        try:
            QueryMode.parse(self.query_mode)
        except ValueError as exc:
            raise QualityError(str(exc)) from None
        for name in ("copy_sample", "fidelity_queries", "genre_queries", "latency_queries", "image_latency_queries"):
            if getattr(self, name) < 0:
                raise QualityError(f"{name} expected >= 0, got {getattr(self, name)}")
        for name in ("copy_depth", "genre_k", "batch_size"):
            if getattr(self, name) < 1:
                raise QualityError(f"{name} expected >= 1, got {getattr(self, name)}")
        if not self.fidelity_ks or min(self.fidelity_ks) < 1 or not self.collection_ks or min(self.collection_ks) < 1:
            raise QualityError(
                f"k values expected >= 1, got fidelity {self.fidelity_ks}, collections {self.collection_ks}"
            )
        if not -1.0 <= self.duplicate_threshold <= 1.0:
            raise QualityError(f"duplicate threshold expected a cosine in [-1, 1], got {self.duplicate_threshold}")


@dataclass
class Loaded:
    bundle: Bundle
    facts: BundleFacts
    ids: np.ndarray
    vectors: np.ndarray
    posters_dir: Path | None


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """The seeded generator of one purpose (STREAM_*)."""
    return np.random.default_rng([seed, stream])


@contextlib.contextmanager
def faiss_single_thread() -> Iterator[None]:
    """Like each server request thread: FAISS on one OpenMP thread (restored afterwards)."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def time_each(fn: Callable[[Any], Any], args: Sequence[Any]) -> np.ndarray:
    """Seconds per call of ``fn(arg)``, after one untimed warm-up call."""
    if not args:
        return np.zeros(0)
    fn(args[0])
    out = np.empty(len(args))
    for i, a in enumerate(args):
        t = time.perf_counter()
        fn(a)
        out[i] = time.perf_counter() - t
    return out


def sample_rows(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n of ``candidates`` drawn without replacement, sorted."""
    n = min(n, len(candidates))
    return np.sort(rng.choice(candidates, size=n, replace=False)) if n else np.zeros(0, np.int64)
