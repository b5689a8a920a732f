"""Batched poster embedding: reading and decoding on worker threads overlap model inference.

Each poster file is read once: its bytes are hashed (the cache key) and the same bytes are decoded,
so a vector is always stored under the hash of exactly the bytes it was computed from, even if the
file changes during the build. Never a per-image ``predict`` loop, never all decoded images in
memory: at most ``PREFETCH_BATCHES`` batches of prepared posters wait for the model at any time.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.cache import EmbeddingCache, content_hash
from indexer.errors import ImageError, ImageTooLargeError
from indexer.images import DecodeConfig, decode_image
from indexer.thumbnails import ThumbnailStore, make_thumbnail

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # prepared posters (read, hashed, looked up, decoded) in flight, in batches

EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int = 32
    decode_workers: int = 2
    progress: bool = True


@dataclass
class EmbedOutcome:
    """Per input position: a vector, or the reason it has none."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)  # content hash of each readable poster
    thumbnails_made: int = 0
    from_cache: int = 0
    embedded: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Prepared:
    """One poster after its single read: the hash of its bytes, and either the cached vector for that
    hash or the image decoded from those same bytes."""

    key: str
    cached: np.ndarray | None
    image: np.ndarray | None
    thumbnail: bytes | None = None  # made from the same bytes when the store lacks it


def _read(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a file, in one open (one more than allowed shows it is too large)."""
    with path.open("rb") as fh:
        return fh.read(limit + 1)


def _prepare(
    path: Path, decode: DecodeConfig, cache: EmbeddingCache | None, thumbs: ThumbnailStore | None
) -> _Prepared:
    try:
        data = _read(path, decode.max_bytes)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc}") from exc
    if len(data) > decode.max_bytes:
        raise ImageTooLargeError(f"file is more than {decode.max_bytes} bytes, the limit")
    key = content_hash(data)
    thumbnail = None
    if thumbs is not None and not thumbs.has(key):
        thumbnail = make_thumbnail(data, thumbs.spec, decode)
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return _Prepared(key, cached, None, thumbnail)
    return _Prepared(key, None, decode_image(data, decode), thumbnail)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, prefetch: int) -> Iterator[Future]:
    """Like ``pool.map`` but with at most ``prefetch`` tasks in flight, yielding futures in order."""
    pending: collections.deque[Future] = collections.deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= prefetch:
            break
    while pending:
        yield pending.popleft()
        for item in it:
            pending.append(pool.submit(fn, item))
            break


class _Batcher:
    """Main-thread state: groups positions by content hash, batches new images, fills the cache."""

    def __init__(self, embed: EmbedFn, cache: EmbeddingCache | None, out: EmbedOutcome, bar: tqdm) -> None:
        self.embed = embed
        self.cache = cache
        self.out = out
        self.bar = bar
        self.resolved: dict[str, np.ndarray] = {}  # hashes embedded in this run
        self.pending: dict[str, list[int]] = {}  # hashes in the current batch -> positions waiting for them
        self.keys: list[str] = []
        self.images: list[np.ndarray] = []

    def add(self, pos: int, prepared: _Prepared) -> None:
        key = prepared.key
        self.out.hashes[pos] = key
        if key in self.resolved:  # same content as a poster embedded earlier in this run
            self.out.vectors[pos] = self.resolved[key]
            self.out.embedded += 1
            self.bar.update(1)
        elif key in self.pending:
            self.pending[key].append(pos)
        elif prepared.cached is not None:
            self.out.vectors[pos] = prepared.cached
            self.out.from_cache += 1
            self.bar.update(1)
        else:
            assert prepared.image is not None
            self.pending[key] = [pos]
            self.keys.append(key)
            self.images.append(prepared.image)

    def flush(self) -> None:
        if not self.images:
            return
        vectors = self.embed(np.stack(self.images))
        fresh = dict(zip(self.keys, vectors))
        if self.cache is not None:
            self.cache.put_many(fresh)
        for key, vec in fresh.items():
            self.resolved[key] = vec
            positions = self.pending.pop(key)
            for pos in positions:
                self.out.vectors[pos] = vec
            self.out.embedded += len(positions)
            self.bar.update(len(positions))
        self.keys.clear()
        self.images.clear()


def embed_files(
    paths: Sequence[Path],
    embed: EmbedFn,
    decode: DecodeConfig,
    config: PipelineConfig,
    cache: EmbeddingCache | None = None,
    thumbs: ThumbnailStore | None = None,
) -> EmbedOutcome:
    """Embed every file in ``paths`` (by position), reusing and filling ``cache``; with ``thumbs``, make the
    missing thumbnails from the same bytes (each file is still read once)."""
    start = time.perf_counter()
    out = EmbedOutcome()
    bar = tqdm(total=len(paths), unit="poster", desc="embedding", disable=not config.progress, smoothing=0.1)
    batcher = _Batcher(embed, cache, out, bar)
    prepare = functools.partial(_prepare, decode=decode, cache=cache, thumbs=thumbs)
    try:
        with ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="decode") as pool:
            prepared = _bounded_map(pool, prepare, paths, prefetch=PREFETCH_BATCHES * config.batch_size)
            for pos, fut in enumerate(prepared):
                try:
                    prepared_poster = fut.result()
                    if thumbs is not None and prepared_poster.thumbnail is not None:
                        thumbs.put(prepared_poster.key, prepared_poster.thumbnail)
                        out.thumbnails_made += 1
                    batcher.add(pos, prepared_poster)
                except ImageError as exc:
                    out.failures[pos] = str(exc)
                    bar.update(1)
                if len(batcher.images) >= config.batch_size:
                    batcher.flush()
            batcher.flush()
    finally:
        bar.close()
        if thumbs is not None:
            thumbs.commit()
    out.seconds = time.perf_counter() - start
    log.info("posters: %d embedded, %d from cache, %d unusable", out.embedded, out.from_cache, len(out.failures))
    return out
