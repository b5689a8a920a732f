"""Copy detection: edited copies of catalog posters, queried through the SearchByImage path, beside pHash."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer.errors import ImageError
from indexer.quality import QualityError, metrics
from indexer.quality.bundle_view import search
from indexer.quality.edits import IDENTITY, check_kinds, edited_copy
from indexer.quality.eval_config import ID_COLUMN, STREAM_COPY, EvalConfig, Loaded, rng_for, sample_rows
from indexer.query_image import WHOLE_WINDOW, QueryImage, QueryMode

log = logging.getLogger(__name__)

COPY_KS = (1, 5)
PHASH_CHUNK = 64  # queries per Hamming-distance block
PHASH_BYTES = 8  # imagehash's default 8x8 pHash
PHASH_DRAFT_SIZE = 128  # pHash works on a 32x32 reduction: decoding JPEGs at >= 128 px loses nothing it uses
PHASH_WORKERS = 4


@dataclass
class CopyQueries:
    rows: np.ndarray  # the original's row, per query
    kinds: list[str]  # the edit, per query
    vectors: np.ndarray  # (nq, d) the whole-image vector of each query (the held-out vector queries)
    found: np.ndarray  # (nq, depth) item ids answered through the SearchByImage path (fused windows), -1 padded
    cosines: np.ndarray  # (nq,) best cosine of the query's windows to its original
    windows: np.ndarray  # (nq,) windows searched (1: the whole image only)
    matched_window: np.ndarray  # (nq,) window of the top answer (0: the whole image)
    hashes: np.ndarray | None  # (nq, 8) packed pHash
    latency_samples: list[bytes]  # a few encoded queries, for the image-query latency
    example: list[tuple[str, bytes]]  # the first poster's copies, for the example sheet
    seconds: dict[str, float] = field(default_factory=dict)


def _phash_one(src: bytes | Path) -> np.ndarray | None:
    import imagehash
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.draft("RGB", (PHASH_DRAFT_SIZE, PHASH_DRAFT_SIZE))  # JPEG: decode at a reduced scale, much faster
            return np.packbits(imagehash.phash(im.convert("RGB")).hash.reshape(-1))
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        log.warning("pHash: cannot read %s: %s", src if isinstance(src, Path) else "query", exc)
        return None


def phash_codes(images: Sequence[bytes | Path], workers: int = PHASH_WORKERS) -> np.ndarray:
    """Packed 64-bit pHash per image (imagehash), on threads; an unreadable image gets all-ones bits."""
    try:
        import imagehash  # noqa: F401
    except ImportError as exc:
        raise QualityError(
            "the pHash baseline expected the imagehash package (pip install 'poster-similarity[eval]'),"
            " or run without it (--no-phash)"
        ) from exc
    out = np.full((len(images), PHASH_BYTES), 0xFF, np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, code in enumerate(pool.map(_phash_one, images)):
            if code is not None:
                out[i] = code
    return out


def _copy_candidates(data: Loaded, config: EvalConfig) -> np.ndarray:
    items = data.bundle.items
    assert data.posters_dir is not None
    has_file = np.array([bool(p) and (data.posters_dir / p).is_file() for p in items["poster"]], dtype=bool)
    if config.copy_items_csv is not None:
        try:
            wanted = pd.read_csv(config.copy_items_csv, usecols=[ID_COLUMN])[ID_COLUMN]
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise QualityError(
                f"copy items {config.copy_items_csv}: expected a CSV with a {ID_COLUMN} column: {exc}"
            ) from exc
        has_file &= np.isin(data.ids, wanted.to_numpy(np.int64))
    return np.flatnonzero(has_file)


@dataclass
class _Answers:
    """What the SearchByImage path answered for a batch of queries."""

    vectors: np.ndarray
    found: np.ndarray
    cosines: np.ndarray
    windows: np.ndarray
    matched: np.ndarray


def answer_queries(
    data: Loaded, query: QueryImage, images: list[bytes], originals: np.ndarray, depth: int, mode: QueryMode
) -> _Answers:
    """Search ``images`` as SearchByImage does in ``mode``. ``whole``: one model call and one search for the
    batch (the same vectors as one by one); ``locate`` / ``auto``: ``QueryImage.search`` per query, exactly the
    server's code. ``originals`` are the rows whose cosine to the best window is reported."""
    n = len(images)
    found = np.full((n, depth), -1, np.int64)
    try:
        if mode is QueryMode.WHOLE:
            vectors = query.embed_whole_batch(images)
            _, ids = search(data.bundle, vectors, depth)
            found[:, : ids.shape[1]] = ids
            cosines = np.einsum("ij,ij->i", vectors, data.vectors[originals])
            return _Answers(vectors, found, cosines, np.ones(n, np.int64), np.zeros(n, np.int64))
        vectors = np.zeros((n, query.dim), np.float32)
        cosines = np.zeros(n, np.float32)
        windows = np.ones(n, np.int64)
        matched = np.zeros(n, np.int64)
        for i, image in enumerate(images):
            result = query.search(image, depth, lambda q, k: search(data.bundle, q, k), mode)
            hits, emb = result.hits, result.embedding
            found[i, : len(hits.ids)] = hits.ids
            vectors[i] = emb.vectors[WHOLE_WINDOW]
            cosines[i] = float((emb.vectors @ data.vectors[originals[i]]).max())
            windows[i] = len(emb)
            matched[i] = int(hits.windows[0]) if len(hits.ids) else WHOLE_WINDOW
        return _Answers(vectors, found, cosines, windows, matched)
    except ImageError as exc:
        raise QualityError(f"image queries: {exc}") from exc


def make_copy_queries(data: Loaded, query: QueryImage, config: EvalConfig) -> CopyQueries:
    """Edited copies of sampled posters, searched through the SearchByImage path (and pHashed)."""
    kinds = check_kinds(list(config.edit_kinds))
    candidates = _copy_candidates(data, config)
    if len(candidates) == 0:
        raise QualityError(
            f"copy detection expected poster files under {data.posters_dir}, found none for the "
            "bundle's items (pass --posters, or --copy-sample 0)"
        )
    sample = sample_rows(candidates, config.copy_sample, rng_for(config.seed, STREAM_COPY))
    items = data.bundle.items
    assert data.posters_dir is not None
    originals = [(data.posters_dir / items["poster"].iat[r]).read_bytes() for r in sample]
    rows: list[int] = []
    kind_of: list[str] = []
    answers: list[_Answers] = []
    hashes: list[np.ndarray] = []
    mode = QueryMode.parse(config.query_mode)
    depth = min(config.copy_depth, len(data.ids))
    samples: list[bytes] = []
    example: list[tuple[str, bytes]] = []
    seconds = {"edit": 0.0, "embed": 0.0, "phash": 0.0}
    per_kind_samples = max(1, -(-config.image_latency_queries // len(kinds)))
    for kind in kinds:
        for start in range(0, len(sample), config.batch_size):
            chunk = range(start, min(start + config.batch_size, len(sample)))
            t = time.perf_counter()
            data_bytes = [edited_copy(kind, originals[i], int(data.ids[sample[i]]), config.seed) for i in chunk]
            seconds["edit"] += time.perf_counter() - t
            t = time.perf_counter()
            answers.append(
                answer_queries(data, query, data_bytes, np.asarray([sample[i] for i in chunk], np.int64), depth, mode)
            )
            seconds["embed"] += time.perf_counter() - t
            if config.phash:
                t = time.perf_counter()
                hashes.append(phash_codes(data_bytes))
                seconds["phash"] += time.perf_counter() - t
            rows.extend(sample[i] for i in chunk)
            kind_of.extend([kind] * len(chunk))
            if start == 0:
                example.append((kind, data_bytes[0]))
                samples.extend(data_bytes[:per_kind_samples])
    log.info(
        "copy detection: %d posters x %d edits searched (%s mode) in %.1fs",
        len(sample),
        len(kinds),
        mode.value,
        seconds["embed"],
    )
    return CopyQueries(
        rows=np.asarray(rows, np.int64),
        kinds=kind_of,
        vectors=np.vstack([a.vectors for a in answers]),
        found=np.vstack([a.found for a in answers]),
        cosines=np.concatenate([a.cosines for a in answers]),
        windows=np.concatenate([a.windows for a in answers]),
        matched_window=np.concatenate([a.matched for a in answers]),
        hashes=np.vstack(hashes) if hashes else None,
        latency_samples=samples[: config.image_latency_queries],
        example=example,
        seconds=seconds,
    )


def _phash_ranks(query_codes: np.ndarray, catalog_codes: np.ndarray, rows: np.ndarray, depth: int) -> np.ndarray:
    ranks = np.empty(len(rows), np.int64)
    for start in range(0, len(rows), PHASH_CHUNK):
        dist = metrics.hamming_distances(query_codes[start : start + PHASH_CHUNK], catalog_codes)
        ranks[start : start + PHASH_CHUNK] = metrics.rank_with_ties(
            dist, rows[start : start + PHASH_CHUNK], higher_is_better=False
        )
    return np.where(ranks < depth, ranks, -1)


def _rank_summary(ranks: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": metrics.recall_at_rank(ranks, k) for k in COPY_KS}
    out["mAP"] = float(metrics.ap_from_rank(ranks).mean()) if len(ranks) else float("nan")
    return out


def measure_copy_detection(data: Loaded, copies: CopyQueries, config: EvalConfig) -> tuple[dict[str, Any], dict]:
    depth = copies.found.shape[1]
    model_ranks = metrics.first_match_rank(copies.found, data.ids[copies.rows])
    phash_ranks = None
    catalog_seconds = 0.0
    if copies.hashes is not None:
        t = time.perf_counter()
        posters = [data.posters_dir / p if p else Path("/nonexistent") for p in data.bundle.items["poster"]]
        catalog_codes = phash_codes(posters)
        catalog_seconds = time.perf_counter() - t
        phash_ranks = _phash_ranks(copies.hashes, catalog_codes, copies.rows, depth)
    cosine = copies.cosines
    kinds = np.asarray(copies.kinds)
    edits = []
    for kind in dict.fromkeys(copies.kinds):
        m = kinds == kind
        row: dict[str, Any] = {"edit": kind, "queries": int(m.sum()), "model": _rank_summary(model_ranks[m])}
        if phash_ranks is not None:
            row["phash"] = _rank_summary(phash_ranks[m])
        c = cosine[m]
        row["cosine_to_original"] = {
            "min": float(c.min()),
            "p5": float(np.percentile(c, 5)),
            "median": float(np.median(c)),
        }
        row["windows"] = {
            "mean": float(copies.windows[m].mean()),
            "localised": float((copies.windows[m] > 1).mean()),
            "top_from_window": float((copies.matched_window[m] != WHOLE_WINDOW).mean()),
        }
        edits.append(row)
    edited = kinds != IDENTITY
    overall: dict[str, Any] = {"queries": int(edited.sum()), "model": _rank_summary(model_ranks[edited])}
    if phash_ranks is not None:
        overall["phash"] = _rank_summary(phash_ranks[edited])
    result = {
        "originals": int(len(np.unique(copies.rows))),
        "original_ids": data.ids[np.unique(copies.rows)].tolist(),
        "depth": depth,
        "edits": edits,
        "all_edits": overall,
        "ties": "pHash ranks count ties against the original (pessimistic)",
        "query_mode": config.query_mode,
        "cosine": "cosine_to_original: the best cosine of the query's windows (the whole image in whole mode)",
    }
    return result, {"catalog_phash_seconds": catalog_seconds, **copies.seconds}
