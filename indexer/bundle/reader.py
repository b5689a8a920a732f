"""Reading a bundle back and proving it whole before anything serves it.

``load_bundle`` checks, and reports every problem it finds with the file it is in:
the manifest parses (any readable format version) and names the directory it lives
in; every required file is listed and every listed file matches its size and
SHA-256; the index loads, uses the inner-product metric, has the manifest's
dimension and type, and stores exactly the item ids of ``items.csv``; item ids are
unique and non-negative; the neighbour table has the right dtype and shape and
holds only item ids. ``posters-index info`` reports the same problems. Nothing is
unpickled: JSON, CSV, ``.npy`` with ``allow_pickle=False`` and FAISS's format only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from indexer.bundle.layout import (
    FAILURES_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST,
    NEIGHBOUR_FILES,
    NEIGHBOUR_IDS,
    NEIGHBOUR_SCORES,
    POSTER_FILES,
    POSTER_OFFSETS,
    POSTERS_FILE,
    REQUIRED_FILES,
    STAGING_PREFIX,
)
from indexer.bundle.manifest import Manifest, manifest_digest, parse_manifest
from indexer.errors import BundleError
from indexer.hashing import file_sha256
from indexer.index_kinds import kind_of, list_ids
from indexer.transform import Whitening, read_whitening

log = logging.getLogger(__name__)

ITEM_DTYPES = {
    "item_id": "int64",
    "title": str,
    "genres": str,
    "poster": str,
    "imdb_id": "Int64",
    "tmdb_id": "Int64",
    "year": "Int64",
    "rating_count": "Int64",
}
OPTIONAL_ITEM_COLUMNS = ("year", "rating_count")  # absent from format-1 bundles: unknown (NA)
FAILURE_DTYPES = {"item_id": "Int64", "file": str, "stage": str, "reason": str}
SCORE_TOLERANCE = 1e-4  # neighbour scores are cosines: within [-1, 1] up to float32 rounding


class PosterThumbnails:
    """The bundle's thumbnails, memory-mapped: ``get(row)`` is one JPEG (or None), read on demand."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self._data = data  # uint8 memmap of posters.bin
        self._offsets = offsets

    def get(self, row: int) -> bytes | None:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._data[start:end]) if end > start else None


@dataclass
class Bundle:
    """A bundle read back from disk and verified."""

    path: Path
    manifest: Manifest
    digest: str  # SHA-256 of manifest.json: the bundle's content identity
    index: faiss.Index
    items: pd.DataFrame
    neighbour_ids: np.ndarray | None
    neighbour_scores: np.ndarray | None
    thumbnails: PosterThumbnails | None = None
    whitening: Whitening | None = None  # the transform queries from outside the index go through

    @property
    def version(self) -> str:
        return self.manifest.build_id


def read_manifest_bytes(bundle_dir: Path) -> bytes:
    path = bundle_dir / MANIFEST
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: not a bundle directory") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def read_manifest(bundle_dir: Path) -> Manifest:
    return parse_manifest(read_manifest_bytes(bundle_dir), str(bundle_dir / MANIFEST))


def bundle_digest(bundle_dir: Path) -> str:
    """Content identity of the bundle in ``bundle_dir`` without loading it (cheap: one small file)."""
    return manifest_digest(read_manifest_bytes(bundle_dir))


def _expected_build_id(bundle_dir: Path) -> str:
    name = bundle_dir.name
    return name[len(STAGING_PREFIX) :] if name.startswith(STAGING_PREFIX) else name


def _listing_problems(bundle_dir: Path, manifest: Manifest) -> list[str]:
    problems = []
    expected = _expected_build_id(bundle_dir)
    if manifest.build_id != expected:
        problems.append(
            f"{bundle_dir / MANIFEST}: build_id is {manifest.build_id!r} but the bundle lives in "
            f"directory {bundle_dir.name!r} (a copied or renamed bundle: rebuild or restore it)"
        )
    wanted = (
        REQUIRED_FILES
        + (NEIGHBOUR_FILES if manifest.neighbours.k else ())
        + (POSTER_FILES if manifest.thumbnails is not None else ())
        + ((manifest.transform.file,) if manifest.transform is not None else ())
    )
    for name in wanted:
        if name not in manifest.files:
            problems.append(f"{bundle_dir / MANIFEST}: required file {name} has no checksum entry")
    if not manifest.neighbours.k:
        problems += [
            f"{bundle_dir / MANIFEST}: lists {n} but neighbours.k is 0" for n in NEIGHBOUR_FILES if n in manifest.files
        ]
    return problems


def verify_files(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """Each listed file's size and SHA-256 against the manifest; the problems found (empty: all good)."""
    problems = []
    for name, meta in sorted(manifest.files.items()):
        path = bundle_dir / name
        if Path(name).name != name:
            problems.append(f"{bundle_dir / MANIFEST}: file name {name!r} is not a plain file name")
            continue
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != meta.bytes:
            problems.append(f"{path} is truncated or modified: expected {meta.bytes} bytes, got {size}")
        elif file_sha256(path) != meta.sha256:
            problems.append(f"{path} is corrupt: SHA-256 does not match the manifest")
    return problems


def _read_index(path: Path, manifest: Manifest, mmap: bool) -> faiss.Index:
    try:
        # IO_FLAG_MMAP_IFC: the vectors/codes stay in the file, memory-mapped (shared by every server process,
        # paged in on use); only the small structures (ids, lists' bookkeeping, graph levels) are read.
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as exc:
        raise BundleError(f"{path} is not a readable FAISS index: {str(exc).splitlines()[0]}") from exc
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise BundleError(
            f"{path}: metric expected inner product (cosine over L2-normalized vectors), "
            f"got FAISS metric {index.metric_type}"
        )
    if index.d != manifest.dim or index.ntotal != manifest.item_count:
        raise BundleError(
            f"{path}: expected dim {manifest.dim} and {manifest.item_count} vectors, "
            f"got dim {index.d} and {index.ntotal}"
        )
    found = kind_of(index)
    if found != manifest.index.type:
        raise BundleError(f"{path}: index type expected {manifest.index.type!r} (manifest), got {found!r}")
    return index


def _read_items(path: Path, manifest: Manifest) -> pd.DataFrame:
    try:
        items = pd.read_csv(
            path,
            dtype=ITEM_DTYPES,
            keep_default_na=False,
            na_values={c: [""] for c in ("imdb_id", "tmdb_id", *OPTIONAL_ITEM_COLUMNS)},
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from exc
    for column in OPTIONAL_ITEM_COLUMNS:
        if column not in items.columns:
            items[column] = pd.Series(pd.NA, index=items.index, dtype="Int64")
    count = manifest.item_count
    if len(items) != count or items["item_id"].duplicated().any():
        raise BundleError(f"{path}: expected {count} unique item ids, got {items['item_id'].nunique()} of {len(items)}")
    if (items["item_id"] < 0).any():
        raise BundleError(f"{path}: item ids expected non-negative, got {int(items['item_id'].min())}")
    return items


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The item ids stored in an index (an IDMap over a flat index, or IVF lists), as int64."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise BundleError(f"index type {type(index).__name__} does not store item ids")
    parts = [list_ids(ivf, lst) for lst in range(ivf.nlist)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _check_index_ids(index: faiss.Index, items: pd.DataFrame, path: Path) -> None:
    ids = stored_ids(index)
    expected = items["item_id"].to_numpy(np.int64)
    if len(ids) != len(expected) or not np.array_equal(np.sort(ids), np.sort(expected)):
        stray = np.setdiff1d(ids, expected)[:5].tolist()
        absent = np.setdiff1d(expected, ids)[:5].tolist()
        raise BundleError(
            f"{path}: index ids differ from {ITEMS_FILE}: in the index only {stray}, in {ITEMS_FILE} only {absent}"
        )


def _read_neighbours(bundle_dir: Path, manifest: Manifest, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    try:
        nids = np.load(bundle_dir / NEIGHBOUR_IDS, allow_pickle=False)
        nscores = np.load(bundle_dir / NEIGHBOUR_SCORES, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle_dir / NEIGHBOUR_IDS}: unreadable neighbour table: {exc}") from exc
    shape = (manifest.item_count, manifest.neighbours.k)
    if nids.dtype != np.int64 or nscores.dtype != np.float32 or nids.shape != shape or nscores.shape != shape:
        raise BundleError(
            f"{bundle_dir}: neighbour table expected int64 ids and float32 scores of shape {shape}, "
            f"got {nids.dtype}{nids.shape} and {nscores.dtype}{nscores.shape}"
        )
    item_ids = items["item_id"].to_numpy(np.int64)
    unknown = np.setdiff1d(nids, item_ids)
    if len(unknown):
        raise BundleError(f"{bundle_dir / NEIGHBOUR_IDS}: holds ids that are not items: {unknown[:5].tolist()}")
    if (nids == item_ids[:, None]).any():
        raise BundleError(f"{bundle_dir / NEIGHBOUR_IDS}: an item is listed as its own neighbour")
    if not np.isfinite(nscores).all():
        bad = int((~np.isfinite(nscores)).sum())
        raise BundleError(f"{bundle_dir / NEIGHBOUR_SCORES}: scores expected finite cosines, got {bad} NaN/inf")
    if np.abs(nscores).max(initial=0) > 1 + SCORE_TOLERANCE:
        raise BundleError(
            f"{bundle_dir / NEIGHBOUR_SCORES}: scores expected cosines in [-1, 1], "
            f"got values from {float(nscores.min()):.6f} to {float(nscores.max()):.6f}"
        )
    return nids, nscores


def _read_thumbnails(bundle_dir: Path, manifest: Manifest) -> PosterThumbnails:
    offsets_path, data_path = bundle_dir / POSTER_OFFSETS, bundle_dir / POSTERS_FILE
    try:
        offsets = np.load(offsets_path, allow_pickle=False)
        size = data_path.stat().st_size
        data = np.memmap(data_path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{offsets_path}: unreadable thumbnails: {exc}") from exc
    expected = (manifest.item_count + 1,)
    if offsets.dtype != np.int64 or offsets.shape != expected:
        raise BundleError(
            f"{offsets_path}: expected int64 offsets of shape {expected}, got {offsets.dtype}{offsets.shape}"
        )
    steps = np.diff(offsets)
    if offsets[0] != 0 or (steps < 0).any() or offsets[-1] != size:
        raise BundleError(f"{offsets_path}: offsets expected to run from 0 up to the size of {POSTERS_FILE} ({size})")
    assert manifest.thumbnails is not None
    if int((steps > 0).sum()) != manifest.thumbnails.count:
        raise BundleError(
            f"{offsets_path}: expected {manifest.thumbnails.count} thumbnails (manifest), got {int((steps > 0).sum())}"
        )
    return PosterThumbnails(data, offsets)


def load_bundle(bundle_dir: Path, verify: bool = True, mmap: bool = True) -> Bundle:
    """Read and validate a bundle; every failure is a BundleError naming the file(s).

    ``verify=False`` skips only the checksums (the structural checks always run). ``mmap``: the index's
    vectors are memory-mapped from the file rather than read (bundles are immutable once published).
    """
    raw = read_manifest_bytes(bundle_dir)
    manifest = parse_manifest(raw, str(bundle_dir / MANIFEST))
    problems = _listing_problems(bundle_dir, manifest)
    if verify:
        problems += verify_files(bundle_dir, manifest)
    if problems:
        raise BundleError("; ".join(problems))
    index = _read_index(bundle_dir / INDEX_FILE, manifest, mmap)
    items = _read_items(bundle_dir / ITEMS_FILE, manifest)
    _check_index_ids(index, items, bundle_dir / INDEX_FILE)
    nids = nscores = None
    if manifest.neighbours.k:
        nids, nscores = _read_neighbours(bundle_dir, manifest, items)
    thumbnails = _read_thumbnails(bundle_dir, manifest) if manifest.thumbnails is not None else None
    whitening = _read_transform(bundle_dir, manifest)
    load_failures(bundle_dir)
    return Bundle(bundle_dir, manifest, manifest_digest(raw), index, items, nids, nscores, thumbnails, whitening)


def _read_transform(bundle_dir: Path, manifest: Manifest) -> Whitening | None:
    info = manifest.transform
    if info is None:
        return None
    if info.out_dim != manifest.dim:
        raise BundleError(
            f"{bundle_dir / MANIFEST}: transform.out_dim expected the index dimension {manifest.dim}, "
            f"got {info.out_dim}"
        )
    if manifest.embedder is not None and info.in_dim != manifest.embedder.dim:
        raise BundleError(
            f"{bundle_dir / MANIFEST}: transform.in_dim expected the embedder dimension {manifest.embedder.dim}, "
            f"got {info.in_dim}"
        )
    return read_whitening(bundle_dir / info.file, info.in_dim, info.out_dim)


def load_failures(bundle_dir: Path) -> pd.DataFrame:
    path = bundle_dir / FAILURES_FILE
    try:
        return pd.read_csv(path, dtype=FAILURE_DTYPES, keep_default_na=False, na_values={"item_id": [""]})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from exc
