"""``posters-index embed``: embed a catalog's posters into a directory of shards, with an engine.

The engine only decides where the work runs: ``local`` is the build's own pipeline (``indexer.pipeline``) in
this process; ``ray`` runs the same decode (``indexer.pipeline``'s read-hash-decode of each file) in Ray Data
tasks and the same embedder (``indexer.embedders.Embedder``, one model per actor) in an actor pool
(``indexer.distributed.ray_embed``). Either way the output is the same (``indexer.embedding_shards``): shards
of (item id, content hash, raw vector) recording the embedder, ``failures.csv`` with the build's reasons, and
``_SUCCESS`` (a JSON summary) written last. ``posters-index build --embeddings DIR`` indexes it and
``posters-index cache import DIR`` fills an embedding cache from it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer import embedding_shards as shards
from indexer.bundle.writer import FAILURE_COLUMNS
from indexer.catalog import Catalog, CatalogConfig, Problem, load_catalog
from indexer.embedders import Embedder, EmbedderSpec
from indexer.embedders.embedder import spec_key
from indexer.embedders.registry import get_backbone
from indexer.errors import BuildError
from indexer.failure_reasons import count_reasons
from indexer.images import DEFAULT_MAX_PIXELS, DecodeConfig
from indexer.pipeline import PipelineConfig, embed_files

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
DEFAULT_BATCH_SIZE = 32
DEFAULT_DECODE_WORKERS = 2
DEFAULT_ACTORS = 2
DEFAULT_ACTOR_CPUS = 1.0
MIN_ACTOR_CPUS = 1.0  # an actor runs TensorFlow on at least one whole CPU
LOCAL_CHUNK_ROWS = 1024  # posters per embed_files call on the local engine: bounded memory, steady progress
PROGRESS_SECONDS = 10.0  # a progress line at most this often
DECODE_STAGE = "decode"
SECONDS_DIGITS = 3


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    actors: int = DEFAULT_ACTORS  # embedding actors, one model each
    actor_cpus: float = DEFAULT_ACTOR_CPUS  # CPUs reserved per actor (its TensorFlow threads)
    address: str | None = None  # a running cluster ("ray://head:10001", "auto"); None: a local Ray on 127.0.0.1
    num_cpus: int | None = None  # local Ray only: logical CPUs (default: enough for the actors plus decoding)


@dataclass(frozen=True)
class EmbedJobConfig:
    catalog: CatalogConfig
    out: Path
    embedder: EmbedderSpec = field(default_factory=EmbedderSpec)
    engine: str = "local"
    batch_size: int = DEFAULT_BATCH_SIZE  # images per model call
    decode_workers: int = DEFAULT_DECODE_WORKERS  # local engine: decoding threads
    rows_per_shard: int = shards.DEFAULT_ROWS_PER_SHARD
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False  # replace a previous embed output in ``out``
    progress: bool = True
    ray: RayOptions = field(default_factory=RayOptions)

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise BuildError(f"engine expected one of {ENGINES}, got {self.engine!r}")
        for name, value in (
            ("batch size", self.batch_size),
            ("decode workers", self.decode_workers),
            ("rows per shard", self.rows_per_shard),
            ("actors", self.ray.actors),
        ):
            if value < 1:
                raise BuildError(f"{name} expected >= 1, got {value}")
        if self.ray.actor_cpus < MIN_ACTOR_CPUS:
            raise BuildError(f"CPUs per actor expected >= {MIN_ACTOR_CPUS:g}, got {self.ray.actor_cpus:g}")
        if self.ray.num_cpus is not None and self.ray.num_cpus < 1:
            raise BuildError(f"Ray CPUs expected >= 1, got {self.ray.num_cpus}")
        if self.ray.num_cpus is not None and self.ray.address is not None:
            raise BuildError(f"Ray CPUs apply to a local Ray only, got them with the cluster {self.ray.address}")
        self.embedder.validate()


@dataclass
class EmbeddedBatch:
    """What an engine hands back: embedded rows (by item id) and the items that failed, with the reason."""

    ids: np.ndarray  # int64
    hashes: list[str]
    vectors: np.ndarray  # float32 (n, dim), raw embedder output
    embedder: shards.ShardEmbedder
    failures: dict[int, str]  # item id -> reason (ImageError sentences, as the build records them)
    worker: str  # which process embedded them ("local", or host:pid of a Ray actor)


@dataclass
class EmbedReport:
    out: Path
    rows: int
    failure_count: int
    seconds: float
    summary: dict[str, Any]  # what _SUCCESS holds


def _ours(path: Path) -> bool:
    name = path.name
    return (
        name in (shards.SUCCESS_FILE, shards.FAILURES_FILE)
        or shards.SHARD_RE.match(name) is not None
        or (name.startswith(".") and ".tmp-" in name)
    )


def prepare_out(out: Path, overwrite: bool) -> None:
    """An empty output directory; with ``overwrite``, a previous embed output in it is removed (``_SUCCESS``
    first, so it never marks a half-replaced directory). Files this command did not write are never removed."""
    out.mkdir(parents=True, exist_ok=True)
    present = sorted(out.iterdir())
    if not present:
        return
    foreign = [p.name for p in present if not _ours(p)]
    if not overwrite or foreign:
        raise BuildError(
            f"{out}: expected an empty or new directory, got {len(present)} entries (e.g. "
            f"{', '.join(p.name for p in present[:3])})"
            + ("; --overwrite replaces a previous embed output" if not foreign else "; not an embed output")
        )
    (out / shards.SUCCESS_FILE).unlink(missing_ok=True)
    for path in present:
        path.unlink(missing_ok=True)


class _Progress:
    """A log line at most every PROGRESS_SECONDS: posters done of the total, rate, time left."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.start = time.perf_counter()
        self.last = self.start
        self.first_batch: float | None = None  # seconds to the first result (start-up: Ray, models)
        self.first_rows = 0
        self.end = self.start

    def update(self, embedded: int, failed: int) -> None:
        now = time.perf_counter()
        self.end = now
        if self.first_batch is None:
            self.first_batch = now - self.start
            self.first_rows = embedded
        self.done += embedded + failed
        self.failed += failed
        if now - self.last >= PROGRESS_SECONDS or self.done == self.total:
            self.last = now
            rate = self.done / (now - self.start)
            left = (self.total - self.done) / rate if rate else float("inf")
            log.info(
                "embed: %d/%d posters (%d failed), %.1f/s, about %.0fs left",
                self.done,
                self.total,
                self.failed,
                rate,
                left,
            )


def _local_batches(
    catalog: Catalog, config: EmbedJobConfig, decode: DecodeConfig, embedder: Embedder | None
) -> Iterator[EmbeddedBatch]:
    """The build's pipeline (read once, hash, decode on threads, batched inference), chunk by chunk."""
    model = embedder if embedder is not None else Embedder(config.embedder)
    if model.spec != config.embedder:
        raise BuildError(f"embedder spec expected {config.embedder}, got {model.spec}")
    made_by = shards.ShardEmbedder(model.describe(), spec_key(config.embedder))
    ids = catalog.items["item_id"].to_numpy(np.int64)
    paths = catalog.poster_paths()
    pipeline = PipelineConfig(batch_size=config.batch_size, decode_workers=config.decode_workers, progress=False)
    for start in range(0, len(paths), LOCAL_CHUNK_ROWS):
        outcome = embed_files(paths[start : start + LOCAL_CHUNK_ROWS], model.embed, decode, pipeline)
        ok = sorted(outcome.vectors)
        vectors = np.stack([outcome.vectors[p] for p in ok]) if ok else np.zeros((0, model.dim), np.float32)
        yield EmbeddedBatch(
            ids=ids[start + np.asarray(ok, np.int64)],
            hashes=[outcome.hashes[p] for p in ok],
            vectors=vectors,
            embedder=made_by,
            failures={int(ids[start + pos]): reason for pos, reason in outcome.failures.items()},
            worker="local",
        )


def _failure_rows(catalog: Catalog, failures: dict[int, str]) -> list[Problem]:
    poster = dict(zip(catalog.items["item_id"].astype("int64").tolist(), catalog.items["poster"].tolist()))
    decode = [Problem(item, str(poster[item]), DECODE_STAGE, reason) for item, reason in sorted(failures.items())]
    return [*catalog.problems, *decode]


def _write_failures(out: Path, problems: list[Problem]) -> None:
    frame = pd.DataFrame([(p.item_id, p.file, p.stage, p.reason) for p in problems], columns=list(FAILURE_COLUMNS))
    frame["item_id"] = frame["item_id"].astype("Int64")
    shards.write_atomic(out / shards.FAILURES_FILE, frame.to_csv(index=False).encode("utf-8"))


def run_embed(config: EmbedJobConfig, embedder: Embedder | None = None) -> EmbedReport:
    """Embed the catalog's posters into ``config.out`` (see the module doc); ``embedder``: a model already built
    for ``config.embedder`` (local engine only)."""
    config.validate()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    prepare_out(config.out, config.overwrite)
    catalog = load_catalog(config.catalog)
    items = len(catalog.items)
    if items == 0:
        raise BuildError(
            f"nothing to embed: no poster files found for the catalog ({len(catalog.problems)} problems, e.g. "
            f"{catalog.problems[0].reason if catalog.problems else 'an empty folder'})"
        )
    spec = config.embedder
    decode = DecodeConfig(size=get_backbone(spec.model).input_size, resize=spec.resize, max_pixels=config.max_pixels)
    log.info("embedding %d posters with %s on the %s engine -> %s", items, spec.model, config.engine, config.out)
    if config.engine == "local":
        batches = _local_batches(catalog, config, decode, embedder)
    else:
        from indexer.distributed.ray_embed import ray_batches

        ids = catalog.items["item_id"].to_numpy(np.int64)
        paths = [str(p) for p in catalog.poster_paths()]
        batches = ray_batches(ids, paths, spec, decode, config.ray, config.batch_size, config.progress)
    writer = shards.ShardWriter(config.out, config.rows_per_shard)
    failures: dict[int, str] = {}
    workers: Counter[str] = Counter()
    progress = _Progress(items)
    for batch in batches:
        if len(batch.ids):
            writer.add(batch.ids, batch.hashes, batch.vectors, batch.embedder)
        failures.update(batch.failures)
        workers[batch.worker] += len(batch.ids) + len(batch.failures)
        progress.update(len(batch.ids), len(batch.failures))
    written = writer.close()
    problems = _failure_rows(catalog, failures)
    _write_failures(config.out, problems)
    seconds = time.perf_counter() - t0
    if writer.embedder is None:
        raise BuildError(
            f"nothing embedded: all {items} posters failed (e.g. {next(iter(failures.values()), '?')}); "
            f"see {config.out / shards.FAILURES_FILE}"
        )
    summary = _summary(config, started, seconds, progress, items, writer, written, problems, workers)
    shards.write_atomic(config.out / shards.SUCCESS_FILE, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    log.info(
        "embedded %d of %d posters into %d shards in %.1fs (%.1f/s); %d failures",
        writer.rows,
        items,
        len(written),
        seconds,
        writer.rows / seconds if seconds else 0.0,
        len(problems),
    )
    return EmbedReport(config.out, writer.rows, len(problems), seconds, summary)


def _summary(
    config: EmbedJobConfig,
    started: dt.datetime,
    seconds: float,
    progress: _Progress,
    items: int,
    writer: shards.ShardWriter,
    written: dict[str, int],
    problems: list[Problem],
    workers: Counter[str],
) -> dict[str, Any]:
    assert writer.embedder is not None
    return {
        "ok": True,
        "format": shards.SHARD_FORMAT,
        "created_at": started.isoformat(),
        "engine": config.engine,
        "catalog": {k: str(v) for k, v in asdict(config.catalog).items()},
        "catalog_items": items,
        "rows": writer.rows,
        "failure_count": len(problems),
        "failures_by_stage": dict(sorted(Counter(p.stage for p in problems).items())),
        "failures_by_reason": count_reasons(p.reason for p in problems),
        "shards": written,
        "embedder": writer.embedder.description,
        "spec_key": writer.embedder.spec_key,
        "content_hash": shards.HASH_ALGORITHM,
        "batch_size": config.batch_size,
        "ray": asdict(config.ray) if config.engine == "ray" else None,
        "workers": dict(sorted(workers.items())),
        "seconds": round(seconds, SECONDS_DIGITS),
        "first_batch_seconds": round(progress.first_batch or 0.0, SECONDS_DIGITS),
        "embeddings_per_second": round(writer.rows / seconds, SECONDS_DIGITS) if seconds else None,
        "steady_embeddings_per_second": _steady_rate(progress, writer.rows),
    }


def _steady_rate(progress: _Progress, rows: int) -> float | None:
    """Embeddings per second after the first result arrived (start-up excluded); None with a single batch."""
    if progress.first_batch is None:
        return None
    seconds = progress.end - progress.start - progress.first_batch
    return round((rows - progress.first_rows) / seconds, SECONDS_DIGITS) if seconds > 0 else None
