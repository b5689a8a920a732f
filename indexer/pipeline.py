"""Batched poster embedding: decoding on worker threads overlaps model inference.

Never a per-image ``predict`` loop, never all decoded images in memory: at most
``prefetch`` decoded posters wait for the model at any time.
"""
from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from indexer.cache import EmbeddingCache, content_hash
from indexer.errors import ImageError
from indexer.images import DecodeConfig, decode_image

log = logging.getLogger(__name__)

HASH_PREFETCH_PER_WORKER = 32  # files read and hashed ahead per decoding thread

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
    from_cache: int = 0
    embedded: int = 0
    seconds: float = 0.0


def _read(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read()


def _hash_file(path: Path, max_bytes: int) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError(f"file is {size} bytes, limit is {max_bytes}")
    return content_hash(_read(path))


def _decode_path(path: Path, config: DecodeConfig) -> np.ndarray:
    try:
        data = _read(path)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc}") from exc
    return decode_image(data, config)


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


def embed_files(
    paths: Sequence[Path],
    embed: EmbedFn,
    decode: DecodeConfig,
    config: PipelineConfig,
    cache: EmbeddingCache | None = None,
) -> EmbedOutcome:
    """Embed every file in ``paths`` (by position), reusing and filling ``cache``."""
    start = time.perf_counter()
    out = EmbedOutcome()
    with ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="decode") as pool:
        hashes: dict[int, str] = {}
        prefetch = HASH_PREFETCH_PER_WORKER * max(config.decode_workers, 1)
        reading = tqdm(total=len(paths), unit="file", desc="hashing", disable=not config.progress)
        for pos, fut in enumerate(_bounded_map(pool, lambda p: _hash_file(p, decode.max_bytes), paths, prefetch)):
            try:
                hashes[pos] = fut.result()
            except (ImageError, OSError) as exc:
                out.failures[pos] = f"cannot read file: {exc}" if isinstance(exc, OSError) else str(exc)
            reading.update(1)
        reading.close()
        cached = cache.get_many(hashes.values()) if cache is not None else {}
        todo_by_hash: dict[str, list[int]] = {}
        for pos, key in hashes.items():
            if key in cached:
                out.vectors[pos] = cached[key]
                out.from_cache += 1
            else:
                todo_by_hash.setdefault(key, []).append(pos)
        todo = [(key, positions[0]) for key, positions in todo_by_hash.items()]
        log.info("embedding %d posters (%d from cache, %d unreadable)", len(todo), out.from_cache, len(out.failures))
        bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not config.progress, smoothing=0.1)
        batch_keys: list[str] = []
        batch_images: list[np.ndarray] = []

        def flush() -> None:
            if not batch_images:
                return
            vectors = embed(np.stack(batch_images))
            fresh = dict(zip(batch_keys, vectors))
            if cache is not None:
                cache.put_many(fresh)
            for key, vec in fresh.items():
                for pos in todo_by_hash[key]:
                    out.vectors[pos] = vec
                    out.embedded += 1
            bar.update(len(batch_images))
            batch_keys.clear()
            batch_images.clear()

        decoded = _bounded_map(pool, lambda t: _decode_path(paths[t[1]], decode), todo,
                               prefetch=2 * config.batch_size)
        for (key, _), fut in zip(todo, decoded):
            try:
                batch_images.append(fut.result())
                batch_keys.append(key)
            except ImageError as exc:
                for pos in todo_by_hash[key]:
                    out.failures[pos] = str(exc)
                bar.update(1)
            if len(batch_images) >= config.batch_size:
                flush()
        flush()
        bar.close()
    out.seconds = time.perf_counter() - start
    return out
