"""A build: catalog (or precomputed vectors) -> embeddings -> index -> published bundle."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

import indexer
from indexer import bundle as bundles
from indexer.cache import EmbeddingCache, recall_model
from indexer.catalog import Catalog, CatalogConfig, Problem, empty_items, load_catalog, load_movies
from indexer.embedders import Embedder, EmbedderSpec
from indexer.embedders.embedder import LazyEmbedder, spec_key
from indexer.errors import BuildError
from indexer.images import DEFAULT_MAX_PIXELS, DecodeConfig
from indexer.index import IndexSpec, build_index, normalize
from indexer.neighbours import (
    DEFAULT_K,
    NEAR_DUPLICATE_COSINE,
    near_duplicate_pairs,
    neighbour_table,
    table_from_index,
    table_from_ivf_lists,
)
from indexer.pipeline import PipelineConfig, embed_files
from indexer.precomputed import PrecomputedConfig, load_precomputed, precomputed_embedder
from indexer.thumbnails import ThumbnailSpec, ThumbnailStore
from indexer.transform import TRANSFORM_FILE, WhitenSpec, learn_whitening

log = logging.getLogger(__name__)

# IVF families whose lists store item ids (no id map in front): their neighbour table is computed list by list
LIST_TABLE_KINDS = ("ivf", "ivf-sq8", "ivf-fp16")
CACHE_FILE = Path("cache") / "embeddings.sqlite"
THUMBNAIL_CACHE_FILE = "thumbnails.sqlite"  # beside the embedding cache


@dataclass(frozen=True)
class BuildConfig:
    index_root: Path
    catalog: CatalogConfig | None = None
    precomputed: PrecomputedConfig | None = None
    embedder: EmbedderSpec = field(default_factory=EmbedderSpec)
    index: IndexSpec = field(default_factory=IndexSpec)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    neighbours_k: int = DEFAULT_K  # 0 disables the precomputed neighbour table
    keep_builds: int = bundles.DEFAULT_KEEP_BUILDS
    use_cache: bool = True
    cache_path: Path | None = None  # default: <index_root>/cache/embeddings.sqlite
    max_pixels: int = DEFAULT_MAX_PIXELS
    thumbnails: ThumbnailSpec | None = field(default_factory=ThumbnailSpec)  # None: no thumbnails in the bundle
    whiten: WhitenSpec = field(default_factory=WhitenSpec)  # optional PCA-whitening before the index


@dataclass
class BuildReport:
    build_id: str
    path: Path
    item_count: int
    failure_count: int
    from_cache: int
    embedded: int
    phases: dict[str, float]
    near_duplicate_pairs: int | None = None  # None: not checked (no neighbour table)
    failures_by_stage: dict[str, int] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "indexer": indexer.__version__}
    for dist in ("numpy", "pandas", "faiss-cpu", "tensorflow-cpu", "tensorflow", "keras", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


@dataclass
class _Embedded:
    items: pd.DataFrame
    vectors: np.ndarray
    problems: list[Problem]
    info: bundles.EmbedderInfo
    from_cache: int
    embedded: int
    keys: list[str]  # content hash of each row's poster (thumbnail lookup)


def _thumbnail_store(config: BuildConfig, stack: contextlib.ExitStack) -> ThumbnailStore | None:
    if config.thumbnails is None:
        return None
    if config.use_cache:
        path = (config.cache_path or config.index_root / CACHE_FILE).parent / THUMBNAIL_CACHE_FILE
    else:  # no cache: thumbnails live only as long as this build
        path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="posters-thumbs-"))) / THUMBNAIL_CACHE_FILE
    store = ThumbnailStore(path, config.thumbnails)
    stack.callback(store.close)
    return store


def _embed_catalog(
    config: BuildConfig, catalog: Catalog, embedder: Embedder | None, thumbs: ThumbnailStore | None
) -> _Embedded:
    if len(catalog.items) == 0:  # before loading a model: an empty folder fails in a second, not after 40
        raise BuildError(
            f"nothing to index: no poster files found for the catalog ({len(catalog.problems)} problems, e.g. "
            f"{catalog.problems[0].reason if catalog.problems else 'an empty folder'}); "
            f"{config.index_root / bundles.CURRENT} unchanged"
        )
    cache_file = config.cache_path or config.index_root / CACHE_FILE
    key = spec_key(config.embedder)
    model: Embedder | LazyEmbedder
    if embedder is not None:
        model = embedder
    else:
        known = recall_model(cache_file, key) if config.use_cache else None
        # the cache knows this embedder: the model is built only if a poster is not cached
        model = LazyEmbedder(config.embedder, known) if known else Embedder(config.embedder)
    embedder_spec = model.spec
    if embedder_spec != config.embedder:
        raise BuildError(f"embedder spec mismatch: config {config.embedder}, embedder {embedder_spec}")
    decode = DecodeConfig(size=model.input_size, resize=embedder_spec.resize, max_pixels=config.max_pixels)
    paths = catalog.poster_paths()
    cache = None
    if config.use_cache:
        cache = EmbeddingCache(cache_file, model.fingerprint, model.dim)
        if isinstance(model, Embedder):
            cache.remember_model(key, model.describe())
    try:
        outcome = embed_files(paths, model.embed, decode, config.pipeline, cache, thumbs)
    finally:
        if cache is not None:
            cache.close()
    problems = list(catalog.problems)
    items = catalog.items
    for pos, reason in sorted(outcome.failures.items()):
        problems.append(Problem(int(items["item_id"].iat[pos]), items["poster"].iat[pos], "decode", reason))
    ok = np.array(sorted(outcome.vectors), dtype=np.int64)
    vectors = np.stack([outcome.vectors[p] for p in ok]) if len(ok) else np.zeros((0, model.dim), np.float32)
    rate = outcome.embedded / outcome.seconds if outcome.seconds else 0.0
    log.info(
        "embedded %d, from cache %d, failed %d in %.1fs (%.1f img/s)",
        outcome.embedded,
        outcome.from_cache,
        len(outcome.failures),
        outcome.seconds,
        rate,
    )
    info = bundles.EmbedderInfo(**model.describe())
    keys = [outcome.hashes[int(p)] for p in ok]
    return _Embedded(
        items.iloc[ok].reset_index(drop=True), vectors, problems, info, outcome.from_cache, outcome.embedded, keys
    )


def _load_precomputed(config: BuildConfig) -> tuple[pd.DataFrame, np.ndarray, list[Problem]]:
    assert config.precomputed is not None
    ids, vectors, problems = load_precomputed(config.precomputed)
    items = empty_items()
    if config.catalog is not None and config.catalog.movies_csv is not None:
        items = load_movies(config.catalog, problems).assign(poster="")
    meta = pd.DataFrame({"item_id": ids}).merge(items, on="item_id", how="left")
    meta = meta.assign(
        title=meta["title"].fillna(""), genres=meta["genres"].fillna(""), poster=meta["poster"].fillna("")
    )
    for column in ("imdb_id", "tmdb_id", "year", "rating_count"):
        meta[column] = meta[column].astype("Int64")
    return meta, vectors, problems


def build(config: BuildConfig, embedder: Embedder | None = None) -> BuildReport:
    """Run a build and publish it atomically. On any error CURRENT is unchanged."""
    if config.catalog is None and config.precomputed is None:
        raise BuildError("a build needs a catalog (posters) or precomputed embeddings")
    started = dt.datetime.now(dt.UTC)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    root = config.index_root
    with bundles.build_lock(root), contextlib.ExitStack() as stack:
        bundles.remove_stale_staging(root)
        from_cache = embedded = 0
        thumbs: ThumbnailStore | None = None
        keys: list[str] | None = None
        if config.precomputed is not None:
            items, vectors, problems = _load_precomputed(config)
            # shards of `posters-index embed` record their embedder: the bundle records it as an image build does
            embedder_info = precomputed_embedder(config.precomputed, int(vectors.shape[1]))
            model_name = embedder_info.model if embedder_info is not None else config.precomputed.model_name
            phases["load"] = time.perf_counter() - t0
        else:
            assert config.catalog is not None
            catalog = load_catalog(config.catalog)
            phases["catalog"] = time.perf_counter() - t0
            t = time.perf_counter()
            thumbs = _thumbnail_store(config, stack)
            done = _embed_catalog(config, catalog, embedder, thumbs)
            items, vectors, problems, embedder_info = done.items, done.vectors, done.problems, done.info
            from_cache, embedded, keys = done.from_cache, done.embedded, done.keys
            model_name = embedder_info.model
            phases["embed"] = time.perf_counter() - t
        vectors, ok = normalize(vectors, in_place=True)  # the raw vectors are not used again
        for pos in np.flatnonzero(~ok):
            problems.append(
                Problem(
                    int(items["item_id"].iat[pos]),
                    str(items["poster"].iat[pos]),
                    "embed",
                    "embedding is zero or not finite; cannot be normalized",
                )
            )
        items = items[ok].reset_index(drop=True)
        if not ok.all():  # boolean indexing copies the vectors: only when a row goes
            vectors = vectors[ok]
        if keys is not None:
            keys = [k for k, keep in zip(keys, ok.tolist()) if keep]
        if len(items) == 0:
            raise BuildError(
                f"nothing to index: 0 usable items ({len(problems)} problems); {root / bundles.CURRENT} unchanged"
            )
        ids = items["item_id"].to_numpy(np.int64)
        whitening, transform_info = None, None
        if config.whiten.enabled:
            t = time.perf_counter()
            whitening = learn_whitening(vectors, config.whiten)
            vectors, white = whitening.apply(vectors)
            if not white.all():  # a vector equal to the catalog mean whitens to zero: nothing to compare
                raise BuildError(
                    f"whitening expected every vector to keep a direction, got {int((~white).sum())} that whiten to "
                    f"zero (item ids {ids[~white][:5].tolist()}); build without --whiten"
                )
            transform_info = bundles.TransformInfo(
                in_dim=whitening.in_dim,
                out_dim=whitening.out_dim,
                shrinkage=whitening.shrinkage,
                trained_on=whitening.trained_on,
                file=TRANSFORM_FILE,
                sha256=whitening.digest(),
            )
            phases["whiten"] = time.perf_counter() - t
        t = time.perf_counter()
        log.info("building index over %d vectors of dim %d", len(ids), vectors.shape[1])
        built = build_index(vectors, ids, config.index)
        phases["index"] = time.perf_counter() - t
        nids = nscores = None
        table = bundles.NeighboursInfo()
        if config.neighbours_k > 0:
            t = time.perf_counter()
            if built.params.exact:
                log.info("computing the exact top-%d neighbour table", config.neighbours_k)
                nids, nscores = neighbour_table(vectors, ids, config.neighbours_k, progress=config.pipeline.progress)
                table = bundles.NeighboursInfo(k=int(nids.shape[1]), exact=True)
            else:
                log.info("searching the top-%d neighbour table in the %s index", config.neighbours_k, built.params.type)
                if built.params.type in LIST_TABLE_KINDS:  # lists hold item ids: list by list, at BLAS speed
                    nids, nscores, recall = table_from_ivf_lists(
                        faiss.extract_index_ivf(built.index),
                        built.params.nprobe,
                        vectors,
                        ids,
                        config.neighbours_k,
                        progress=config.pipeline.progress,
                    )
                else:
                    nids, nscores, recall = table_from_index(
                        built.index,
                        built.search,
                        vectors,
                        ids,
                        config.neighbours_k,
                        progress=config.pipeline.progress,
                    )
                table = bundles.NeighboursInfo(
                    k=int(nids.shape[1]), exact=False, recall=round(recall, 4), source="index"
                )
                log.info("neighbour table recall@%d = %.3f (sampled against exact search)", table.k, recall)
            phases["neighbours"] = time.perf_counter() - t
        duplicates = None if nids is None or nscores is None else near_duplicate_pairs(ids, nids, nscores)
        if duplicates:
            log.warning(
                "%d pairs of items have near-identical posters (cosine > %.2f): a catalog error? "
                "posters-index eval ROOT lists them",
                duplicates,
                NEAR_DUPLICATE_COSINE,
            )
        build_id = bundles.new_build_id(started)
        manifest = bundles.Manifest(
            build_id=build_id,
            created_at=started.isoformat(),
            model=model_name,
            embedder=embedder_info,
            dim=int(vectors.shape[1]),
            index=built.params,
            neighbours=table,
            item_count=len(ids),
            failure_count=len(problems),
            near_duplicate_pairs=duplicates,
            thumbnails=(
                bundles.ThumbnailsInfo(
                    width=thumbs.spec.width, height=thumbs.spec.height, quality=thumbs.spec.quality, count=0
                )
                if thumbs is not None
                else None
            ),
            source={
                "catalog": {k: str(v) for k, v in asdict(config.catalog).items()} if config.catalog else None,
                "precomputed": {k: str(v) for k, v in asdict(config.precomputed).items()}
                if config.precomputed
                else None,
            },
            embedding_counts={"from_cache": from_cache, "embedded": embedded},
            phase_seconds={k: round(v, 3) for k, v in phases.items()},
            versions=library_versions(),
            transform=transform_info,
        )
        t = time.perf_counter()
        log.info("writing bundle %s to staging", build_id)
        posters = thumbs.in_order(list(keys)) if thumbs is not None and keys is not None else None
        staged = bundles.write_staging(
            root, bundles.BundleContents(built.index, items, problems, manifest, nids, nscores, posters, whitening)
        )
        phases["write"] = time.perf_counter() - t
        path = bundles.publish(root, staged)
        removed = bundles.prune(root, config.keep_builds)
        if removed:
            log.info("pruned old builds: %s", ", ".join(removed))
    phases["total"] = time.perf_counter() - t0
    log.info(
        "build %s: %d items, %d failures; phases %s",
        build_id,
        len(items),
        len(problems),
        {k: round(v, 2) for k, v in phases.items()},
    )
    by_stage = dict(Counter(p.stage for p in problems))
    return BuildReport(build_id, path, len(items), len(problems), from_cache, embedded, phases, duplicates, by_stage)
