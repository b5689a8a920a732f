"""``posters-index cache import``: load a shard directory's vectors into an embedding cache.

Each vector is stored under (the shards' embedder fingerprint, the poster's content hash), exactly where a build
looks for it, and the cache remembers the embedder's description under its spec key, so a following build of
the same posters with the same options embeds nothing and never loads the model. Refused: shards that record no
embedder, and shards whose embedder is not the one this machine builds for the same options (another Keras major
version or weights file: a build here would never find their vectors), or that the cache already knows under
another fingerprint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer import embedding_shards as shards
from indexer.cache import EmbeddingCache, recall_model
from indexer.embedders import EmbedderSpec
from indexer.embedders.embedder import spec_key
from indexer.errors import CatalogError, ModelError

log = logging.getLogger(__name__)

SHOWN_KEY_CHARS = 12


@dataclass(frozen=True)
class CacheImport:
    cache: Path
    fingerprint: str
    shards: int
    rows: int  # rows read from the shards
    skipped: int  # rows without a content hash or a usable vector
    added: int  # vectors the cache did not hold before (for this fingerprint)
    cached: int  # vectors the cache holds for this fingerprint now


def _local_spec_key(made_by: shards.ShardEmbedder, directory: Path) -> str:
    spec = EmbedderSpec.from_dict(made_by.description)
    try:
        return spec_key(spec)
    except (OSError, ModelError) as exc:
        raise CatalogError(
            f"{directory}: the shards' embedder expected to be buildable here ({spec.model}, weights {spec.weights}), "
            f"got {type(exc).__name__}: {exc}"
        ) from None


def import_shards(directory: Path, cache_path: Path) -> CacheImport:
    """Import every usable row of a finished shard directory into the cache at ``cache_path``."""
    shard_set = shards.open_shards(directory)
    made_by = shard_set.embedder
    if made_by is None:
        raise CatalogError(
            f"{directory}: expected shards that record their embedder (posters-index embed writes it), got none: "
            f"without a fingerprint their vectors cannot be keyed in an embedding cache"
        )
    key = _local_spec_key(made_by, directory)
    if key != made_by.spec_key:
        raise CatalogError(
            f"{directory}: expected shards made by the embedder this machine builds for the same options (spec key "
            f"{key[:SHOWN_KEY_CHARS]}), got spec key {made_by.spec_key[:SHOWN_KEY_CHARS]}: another Keras major "
            f"version or weights file made them, and a build here would never use their vectors"
        )
    known = recall_model(cache_path, key)
    if known is not None and known.get("fingerprint") != made_by.fingerprint:
        theirs = str(known.get("fingerprint"))[:SHOWN_KEY_CHARS]
        raise CatalogError(
            f"{cache_path}: expected the cache's embedder for these options to have fingerprint "
            f"{made_by.fingerprint[:SHOWN_KEY_CHARS]} (the shards'), got {theirs}"
        )
    rows = skipped = 0
    with EmbeddingCache(cache_path, made_by.fingerprint, made_by.dim) as cache:
        before = cache.count()
        for part in shards.iter_shards(shard_set):
            finite = np.isfinite(part.vectors).all(axis=1)
            good = [bool(h) and bool(finite[pos]) and pos not in part.bad_rows for pos, h in enumerate(part.hashes)]
            usable = {str(h): part.vectors[pos] for pos, (h, ok) in enumerate(zip(part.hashes, good)) if ok}
            skipped += good.count(False)
            rows += len(part.ids)
            cache.put_many(usable)
            log.info("imported %s: %d vectors", part.path.name, len(usable))
        cache.remember_model(key, made_by.description)
        after = cache.count()
    return CacheImport(cache_path, made_by.fingerprint, len(shard_set.paths), rows, skipped, after - before, after)
