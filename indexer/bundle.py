"""Versioned index bundles: written to a staging directory, published atomically.

Layout of an index root::

    ROOT/
      CURRENT                 the published build id (replaced by rename)
      builds/<build id>/      manifest.json, index.faiss, items.csv, failures.csv,
                              [neighbour_ids.npy, neighbour_scores.npy]
      builds/.staging-*/      builds in progress (removed when a later build starts)
      cache/embeddings.sqlite the embedding cache
      .lock                   held by the one build running in this root

A build writes everything into a staging directory, fsyncs it, renames it into
``builds/`` and only then replaces ``CURRENT`` with ``os.replace``. A build that
fails or is killed at any point leaves ``CURRENT`` pointing at the previous,
complete bundle. Bundles are never unpickled: only JSON, CSV, ``.npy`` with
``allow_pickle=False`` and FAISS's own format are read.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
import pandas as pd

from indexer.catalog import ITEM_COLUMNS, Problem
from indexer.errors import BuildError, BundleError
from indexer.hashing import file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT = "CURRENT"
BUILDS = "builds"
STAGING_PREFIX = ".staging-"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.csv"
FAILURES_FILE = "failures.csv"
NEIGHBOUR_IDS = "neighbour_ids.npy"
NEIGHBOUR_SCORES = "neighbour_scores.npy"
FAILURE_COLUMNS = ("item_id", "file", "stage", "reason")
DEFAULT_KEEP_BUILDS = 3


@dataclass
class BundleContents:
    """What a build hands to the writer; independent of where vectors came from."""

    index: faiss.Index
    items: pd.DataFrame  # ITEM_COLUMNS, one row per indexed vector
    failures: list[Problem]
    manifest: dict[str, Any]  # model, index params, timings, source ...; files/counts are added
    neighbour_ids: np.ndarray | None = None
    neighbour_scores: np.ndarray | None = None


@dataclass
class Bundle:
    """A bundle read back from disk and verified."""

    path: Path
    manifest: dict[str, Any]
    index: faiss.Index
    items: pd.DataFrame
    neighbour_ids: np.ndarray | None
    neighbour_scores: np.ndarray | None

    @property
    def version(self) -> str:
        return str(self.manifest["build_id"])


def new_build_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}"  # sortable: prune keeps the newest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on an index root for the length of a build (released if the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build is running in {root} (lock {root / '.lock'} is held)") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_stale_staging(root: Path) -> None:
    """Delete staging directories left by killed builds (call with the build lock held)."""
    builds = root / BUILDS
    if builds.is_dir():
        for path in builds.glob(f"{STAGING_PREFIX}*"):
            log.info("removing unfinished build %s", path.name)
            shutil.rmtree(path, ignore_errors=True)


def _items_for_csv(items: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise BuildError(f"items table lacks columns {missing}")
    return items[list(ITEM_COLUMNS)]


def write_staging(root: Path, contents: BundleContents, build_id: str) -> Path:
    """Write a complete bundle into ``builds/.staging-<id>`` and return its path."""
    staging = root / BUILDS / f"{STAGING_PREFIX}{build_id}"
    staging.mkdir(parents=True)
    faiss.write_index(contents.index, str(staging / INDEX_FILE))
    _items_for_csv(contents.items).to_csv(staging / ITEMS_FILE, index=False)
    failures = pd.DataFrame([(p.item_id, p.file, p.stage, p.reason) for p in contents.failures],
                            columns=list(FAILURE_COLUMNS)).astype({"item_id": "Int64"})
    failures.to_csv(staging / FAILURES_FILE, index=False)
    names = [INDEX_FILE, ITEMS_FILE, FAILURES_FILE]
    if contents.neighbour_ids is not None and contents.neighbour_scores is not None:
        np.save(staging / NEIGHBOUR_IDS, np.ascontiguousarray(contents.neighbour_ids, np.int64), allow_pickle=False)
        np.save(staging / NEIGHBOUR_SCORES, np.ascontiguousarray(contents.neighbour_scores, np.float32),
                allow_pickle=False)
        names += [NEIGHBOUR_IDS, NEIGHBOUR_SCORES]
    for name in names:
        _fsync_file(staging / name)
    manifest = dict(contents.manifest)
    manifest.update({
        "format_version": FORMAT_VERSION,
        "build_id": build_id,
        "item_count": int(contents.index.ntotal),
        "failure_count": len(contents.failures),
        "files": {n: {"sha256": file_sha256(staging / n), "bytes": (staging / n).stat().st_size} for n in names},
    })
    tmp = staging / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_file(tmp)
    os.replace(tmp, staging / MANIFEST)
    _fsync_dir(staging)
    return staging


def publish(root: Path, staging: Path, build_id: str) -> Path:
    """Move a staged bundle into place, then atomically point CURRENT at it."""
    final = root / BUILDS / build_id
    log.info("publishing build %s", build_id)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    tmp = root / f"{CURRENT}.tmp-{build_id}"
    tmp.write_text(build_id + "\n")
    _fsync_file(tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)
    log.info("published build %s", build_id)
    return final


def list_builds(root: Path) -> list[str]:
    builds = root / BUILDS
    if not builds.is_dir():
        return []
    return sorted(p.name for p in builds.iterdir() if p.is_dir() and not p.name.startswith("."))


def prune(root: Path, keep: int) -> list[str]:
    """Delete the oldest published builds beyond ``keep``; never the current one."""
    current = read_current(root, missing_ok=True)
    removed = []
    for build_id in list_builds(root)[: max(0, len(list_builds(root)) - keep)]:
        if build_id != current:
            shutil.rmtree(root / BUILDS / build_id, ignore_errors=True)
            removed.append(build_id)
    return removed


def read_current(root: Path, missing_ok: bool = False) -> str | None:
    """The build id CURRENT points to."""
    path = root / CURRENT
    try:
        build_id = path.read_text().strip()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BundleError(f"{path} does not exist: no bundle has been published in {root}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not build_id or "/" in build_id or build_id.startswith("."):
        raise BundleError(f"{path} is corrupt: expected a build id, got {build_id[:60]!r}")
    return build_id


def current_path(root: Path) -> Path:
    return root / BUILDS / str(read_current(root))


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: not a bundle directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is corrupt: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version expected {FORMAT_VERSION}, got {version!r}")
    for key in ("build_id", "dim", "item_count", "files", "index", "model"):
        if key not in manifest:
            raise BundleError(f"{path} is corrupt: missing key {key!r}")
    return manifest


def verify_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Check each file's size and SHA-256 against the manifest; raise BundleError naming the file."""
    for name, meta in manifest["files"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path} is missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise BundleError(f"{path} is truncated or modified: expected {meta['bytes']} bytes, got {size}")
        if file_sha256(path) != meta["sha256"]:
            raise BundleError(f"{path} is corrupt: SHA-256 does not match the manifest")


def load_bundle(bundle_dir: Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle; every failure is a BundleError naming the file."""
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    index_path = bundle_dir / INDEX_FILE
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise BundleError(f"{index_path} is not a readable FAISS index: {str(exc).splitlines()[0]}") from exc
    dim, count = int(manifest["dim"]), int(manifest["item_count"])
    if index.d != dim or index.ntotal != count:
        raise BundleError(f"{index_path}: expected dim {dim} and {count} vectors, got dim {index.d} and {index.ntotal}")
    items_path = bundle_dir / ITEMS_FILE
    try:
        items = pd.read_csv(items_path, dtype={"item_id": "int64", "title": str, "genres": str, "poster": str,
                                               "imdb_id": "Int64", "tmdb_id": "Int64"}, keep_default_na=False,
                            na_values={"imdb_id": [""], "tmdb_id": [""]})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BundleError(f"{items_path} is corrupt: {exc}") from exc
    if len(items) != count or items["item_id"].duplicated().any():
        raise BundleError(f"{items_path}: expected {count} unique item ids, got {items['item_id'].nunique()} of {len(items)}")
    nids = nscores = None
    if NEIGHBOUR_IDS in manifest["files"]:
        try:
            nids = np.load(bundle_dir / NEIGHBOUR_IDS, allow_pickle=False)
            nscores = np.load(bundle_dir / NEIGHBOUR_SCORES, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{bundle_dir / NEIGHBOUR_IDS}: unreadable neighbour table: {exc}") from exc
        if nids.shape != nscores.shape or nids.shape[0] != count:
            raise BundleError(f"{bundle_dir}: neighbour table shape {nids.shape} does not match {count} items")
    return Bundle(bundle_dir, manifest, index, items, nids, nscores)


def load_failures(bundle_dir: Path) -> pd.DataFrame:
    return pd.read_csv(bundle_dir / FAILURES_FILE, dtype={"item_id": "Int64", "file": str, "stage": str, "reason": str},
                       keep_default_na=False, na_values={"item_id": [""]})
