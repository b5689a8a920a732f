"""Versioned index bundles: written to a staging directory, verified, published atomically.

Layout of an index root::

    ROOT/
      CURRENT                 the published build id (replaced by rename)
      builds/<build id>/      manifest.json, index.faiss, items.csv, failures.csv,
                              [neighbour_ids.npy, neighbour_scores.npy, posters.bin,
                              poster_offsets.npy, transform.npz]
      builds/.staging-*/      builds in progress (removed when a later build starts)
      cache/embeddings.sqlite the embedding cache
      .lock                   held by the one build running in this root

Modules: ``manifest`` (the typed, versioned contract), ``layout`` (names, CURRENT, lock,
durable writes), ``writer`` (staging, read-back verification, publish), ``reader``
(load and prove a bundle whole).
"""

from indexer.bundle.layout import (
    BUILDS,
    CURRENT,
    DEFAULT_KEEP_BUILDS,
    FAILURES_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST,
    NEIGHBOUR_IDS,
    NEIGHBOUR_SCORES,
    STAGING_PREFIX,
    build_lock,
    current_path,
    list_builds,
    new_build_id,
    prune,
    read_current,
    remove_stale_staging,
    write_current,
)
from indexer.bundle.manifest import (
    FORMAT_VERSION,
    EmbedderInfo,
    FileEntry,
    IndexParams,
    Manifest,
    NeighboursInfo,
    ThumbnailsInfo,
    TransformInfo,
    parse_manifest,
)
from indexer.bundle.reader import Bundle, bundle_digest, load_bundle, load_failures, read_manifest, verify_files
from indexer.bundle.writer import BundleContents, publish, write_staging
from indexer.errors import BundleError

__all__ = [
    "BUILDS",
    "CURRENT",
    "DEFAULT_KEEP_BUILDS",
    "FAILURES_FILE",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "ITEMS_FILE",
    "MANIFEST",
    "NEIGHBOUR_IDS",
    "NEIGHBOUR_SCORES",
    "STAGING_PREFIX",
    "Bundle",
    "BundleContents",
    "BundleError",
    "EmbedderInfo",
    "FileEntry",
    "IndexParams",
    "Manifest",
    "NeighboursInfo",
    "ThumbnailsInfo",
    "TransformInfo",
    "build_lock",
    "bundle_digest",
    "current_path",
    "list_builds",
    "load_bundle",
    "load_failures",
    "new_build_id",
    "parse_manifest",
    "prune",
    "publish",
    "read_current",
    "read_manifest",
    "remove_stale_staging",
    "verify_files",
    "write_current",
    "write_staging",
]
