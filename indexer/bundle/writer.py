"""Writing a bundle: staging directory, checked durable writes, full read-back, atomic publish.

Every byte goes through ``durable_file`` (Python-level writes: a full disk or a file-size
limit raises instead of being printed and ignored, as FAISS's own writer does), the FAISS
index is streamed through a Python callback writer, and the staged bundle is re-opened and
verified completely (``load_bundle``) *before* the rename that publishes it. A build that
fails at any point leaves ``CURRENT`` on the previous, complete bundle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
import pandas as pd

from indexer.bundle.layout import (
    BUILDS,
    CURRENT,
    FAILURES_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST,
    NEIGHBOUR_IDS,
    NEIGHBOUR_SCORES,
    POSTER_OFFSETS,
    POSTERS_FILE,
    STAGING_PREFIX,
    durable_file,
    fsync_dir,
    write_current,
)
from indexer.bundle.manifest import FileEntry, Manifest
from indexer.bundle.reader import Bundle, load_bundle
from indexer.catalog import ITEM_COLUMNS, Problem
from indexer.errors import BuildError, BundleError
from indexer.hashing import file_sha256
from indexer.transform import TRANSFORM_FILE, Whitening

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ("item_id", "file", "stage", "reason")


@dataclass
class BundleContents:
    """What a build hands to the writer; independent of where vectors came from."""

    index: faiss.Index
    items: pd.DataFrame  # ITEM_COLUMNS, one row per indexed vector
    failures: list[Problem]
    manifest: Manifest  # files, item_count and failure_count are filled in by the writer
    neighbour_ids: np.ndarray | None = None
    neighbour_scores: np.ndarray | None = None
    thumbnails: Iterable[bytes | None] | None = None  # one per items row, in order (None: that item has none)
    whitening: Whitening | None = None  # written as transform.npz when the manifest names a transform


def _items_for_csv(items: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise BuildError(f"items table lacks columns {missing}")
    return items[list(ITEM_COLUMNS)]


def _write_index(index: faiss.Index, path: Path) -> None:
    with durable_file(path) as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)  # the callback's OSError propagates out of FAISS
        try:
            faiss.write_index(index, writer)
        finally:
            del writer


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with durable_file(path) as fh:
        fh.write(frame.to_csv(index=False).encode("utf-8"))


class _PythonWrites:
    """Hides the real file from NumPy, which then writes through ``write`` (errors raise OSError with
    their errno) instead of C ``fwrite`` (errors become "N requested and M written")."""

    def __init__(self, fh: BinaryIO) -> None:
        self.write = fh.write


def _write_npy(array: np.ndarray, path: Path) -> None:
    with durable_file(path) as fh:
        np.lib.format.write_array(_PythonWrites(fh), array, allow_pickle=False)


def _write_thumbnails(thumbnails: Iterable[bytes | None], rows: int, staging: Path) -> int:
    """posters.bin (JPEGs back to back) and poster_offsets.npy; returns how many items have one."""
    offsets = np.zeros(rows + 1, np.int64)
    count = 0
    with durable_file(staging / POSTERS_FILE) as fh:
        for row, jpeg in enumerate(thumbnails):
            if row >= rows:
                raise BuildError(f"thumbnails expected one per item ({rows}), got more")
            if jpeg:
                fh.write(jpeg)
                count += 1
            offsets[row + 1] = offsets[row] + (len(jpeg) if jpeg else 0)
    _write_npy(offsets, staging / POSTER_OFFSETS)
    return count


def _write_files(staging: Path, contents: BundleContents) -> list[str]:
    _write_index(contents.index, staging / INDEX_FILE)
    _write_csv(_items_for_csv(contents.items), staging / ITEMS_FILE)
    failures = pd.DataFrame(
        [(p.item_id, p.file, p.stage, p.reason) for p in contents.failures], columns=list(FAILURE_COLUMNS)
    ).astype({"item_id": "Int64"})
    _write_csv(failures, staging / FAILURES_FILE)
    names = [INDEX_FILE, ITEMS_FILE, FAILURES_FILE]
    if contents.neighbour_ids is not None and contents.neighbour_scores is not None:
        _write_npy(np.ascontiguousarray(contents.neighbour_ids, np.int64), staging / NEIGHBOUR_IDS)
        _write_npy(np.ascontiguousarray(contents.neighbour_scores, np.float32), staging / NEIGHBOUR_SCORES)
        names += [NEIGHBOUR_IDS, NEIGHBOUR_SCORES]
    if contents.thumbnails is not None and contents.manifest.thumbnails is not None:
        count = _write_thumbnails(contents.thumbnails, len(contents.items), staging)
        contents.manifest = contents.manifest.model_copy(
            update={"thumbnails": contents.manifest.thumbnails.model_copy(update={"count": count})}
        )
        names += [POSTERS_FILE, POSTER_OFFSETS]
    if contents.whitening is not None:
        with durable_file(staging / TRANSFORM_FILE) as fh:
            fh.write(contents.whitening.to_bytes())
        names.append(TRANSFORM_FILE)
    return names


def write_staging(root: Path, contents: BundleContents) -> Bundle:
    """Write a complete bundle into ``builds/.staging-<id>``, read it back and verify it whole.

    Raises BuildError (naming the file and the OS error) when anything cannot be written or the
    read-back differs from what was meant to be written; the staging directory is then left for the
    next build to remove, and nothing is published.
    """
    build_id = contents.manifest.build_id
    staging = root / BUILDS / f"{STAGING_PREFIX}{build_id}"
    try:
        staging.mkdir(parents=True)
        names = _write_files(staging, contents)
        manifest = contents.manifest.model_copy(
            update={
                "item_count": int(contents.index.ntotal),
                "failure_count": len(contents.failures),
                "files": {
                    n: FileEntry(sha256=file_sha256(staging / n), bytes=(staging / n).stat().st_size) for n in names
                },
            }
        )
        tmp = staging / (MANIFEST + ".tmp")
        with durable_file(tmp) as fh:
            fh.write(manifest.to_json().encode("utf-8"))
        os.replace(tmp, staging / MANIFEST)
        fsync_dir(staging)
    except OSError as exc:
        where = exc.filename or staging
        raise BuildError(
            f"cannot write bundle {build_id}: {exc.strerror or exc} ({where}); {root / CURRENT} unchanged"
        ) from exc
    try:
        staged = load_bundle(staging, verify=True)
    except BundleError as exc:
        raise BuildError(f"the staged bundle {build_id} failed verification, not published: {exc}") from exc
    if staged.manifest != manifest:
        raise BuildError(f"the staged bundle {build_id} reads back a different manifest; not published")
    return staged


def publish(root: Path, staged: Bundle) -> Path:
    """Move a verified staged bundle into place, then atomically point CURRENT at it."""
    build_id = staged.version
    final = root / BUILDS / build_id
    log.info("publishing build %s", build_id)
    try:
        os.replace(staged.path, final)
        fsync_dir(final.parent)
        write_current(root, build_id)
    except OSError as exc:
        raise BuildError(f"cannot publish bundle {build_id}: {exc.strerror or exc} ({exc.filename or root})") from exc
    log.info("published build %s", build_id)
    return final
