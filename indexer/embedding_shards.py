"""Embedding shards: the on-disk output of ``posters-index embed`` (any engine), read by builds and the cache.

A shard directory holds

- ``part-00000.parquet``, ``part-00001.parquet``, ...: columns ``item_id`` (int64), ``content_hash`` (string:
  ``indexer.cache.content_hash`` of the poster file's bytes, the embedding cache's key) and ``embedding``
  (list<float32>: the embedder's raw output, not normalized, as the cache stores it); the schema metadata key
  ``posters.embedding_shards`` holds JSON ``{"format", "embedder" (the embedder's description: model, weights,
  dim, fingerprint, ...), "spec_key", "content_hash"}``;
- ``failures.csv``: item_id, file, stage, reason (the build's failure rows and sentences);
- ``_SUCCESS``: a JSON summary written last, atomically (counts, shard names and row counts, embedder): a
  directory without it is an unfinished job and is refused.

Every file is written under a temporary name and renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CatalogError

log = logging.getLogger(__name__)

SHARD_FORMAT = 1
METADATA_KEY = b"posters.embedding_shards"
ID_COLUMN = "item_id"
HASH_COLUMN = "content_hash"
VECTOR_COLUMN = "embedding"
HASH_ALGORITHM = "blake2b-160 of the poster file's bytes (indexer.cache.content_hash)"
SHARD_NAME = "part-{:05d}.parquet"
SHARD_GLOB = "part-*.parquet"
SHARD_RE = re.compile(r"^part-\d{5,}\.parquet$")
SUCCESS_FILE = "_SUCCESS"
FAILURES_FILE = "failures.csv"
DEFAULT_ROWS_PER_SHARD = 16_384  # 80 MB of float32 at D = 1280
_TMP_PREFIX = "."


def _atomic_path(path: Path) -> Path:
    return path.with_name(f"{_TMP_PREFIX}{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsynced, then renamed into place."""
    tmp = _atomic_path(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardEmbedder:
    """Which embedder made a shard's vectors: its description (as ``Embedder.describe()``) and spec key."""

    description: dict[str, Any]
    spec_key: str

    @property
    def fingerprint(self) -> str:
        return str(self.description["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.description["dim"])

    def metadata(self) -> bytes:
        doc = {
            "format": SHARD_FORMAT,
            "embedder": self.description,
            "spec_key": self.spec_key,
            "content_hash": HASH_ALGORITHM,
        }
        return json.dumps(doc, sort_keys=True).encode()


def shard_table(ids: np.ndarray, hashes: list[str], vectors: np.ndarray, embedder: ShardEmbedder) -> Any:
    """One shard as a pyarrow Table with the embedder in its schema metadata."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != embedder.dim or not len(ids) == len(hashes) == len(vectors):
        raise ValueError(
            f"expected {len(ids)} ids, hashes and vectors of dim {embedder.dim}, got {len(hashes)} hashes and "
            f"vectors of shape {vectors.shape}"
        )
    offsets = np.arange(0, vectors.size + 1, embedder.dim, dtype=np.int32)
    embedding = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.reshape(-1), pa.float32()))
    schema = pa.schema(
        [(ID_COLUMN, pa.int64()), (HASH_COLUMN, pa.string()), (VECTOR_COLUMN, pa.list_(pa.float32()))],
        metadata={METADATA_KEY: embedder.metadata()},
    )
    return pa.Table.from_arrays([pa.array(ids, pa.int64()), pa.array(hashes, pa.string()), embedding], schema=schema)


def write_shard(path: Path, ids: np.ndarray, hashes: list[str], vectors: np.ndarray, embedder: ShardEmbedder) -> None:
    """Write one shard atomically (temporary name, fsync, rename)."""
    import pyarrow.parquet as pq

    table = shard_table(ids, hashes, vectors, embedder)
    tmp = _atomic_path(path)
    try:
        pq.write_table(table, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ShardWriter:
    """Buffers embedded rows and writes a shard every ``rows_per_shard`` rows; every row of every shard must come
    from one embedder (a cluster node with another model or library version would otherwise mix vector spaces)."""

    def __init__(self, out: Path, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows per shard expected >= 1, got {rows_per_shard}")
        self.out = out
        self.rows_per_shard = rows_per_shard
        self.embedder: ShardEmbedder | None = None
        self.shards: dict[str, int] = {}
        self._ids: list[np.ndarray] = []
        self._hashes: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._buffered = 0

    @property
    def rows(self) -> int:
        return sum(self.shards.values()) + self._buffered

    def add(self, ids: np.ndarray, hashes: list[str], vectors: np.ndarray, embedder: ShardEmbedder) -> None:
        if self.embedder is None:
            self.embedder = embedder
        elif embedder != self.embedder:
            raise CatalogError(
                f"embedder expected fingerprint {self.embedder.fingerprint[:12]} (spec key "
                f"{self.embedder.spec_key[:12]}) for every batch, got {embedder.fingerprint[:12]} (spec key "
                f"{embedder.spec_key[:12]}): the workers do not all run the same model and library versions"
            )
        self._ids.append(np.asarray(ids, np.int64))
        self._hashes.extend(hashes)
        self._vectors.append(np.asarray(vectors, np.float32))
        self._buffered += len(ids)
        while self._buffered >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, rows: int) -> None:
        assert self.embedder is not None
        ids, vectors = np.concatenate(self._ids), np.concatenate(self._vectors)
        name = SHARD_NAME.format(len(self.shards))
        write_shard(self.out / name, ids[:rows], self._hashes[:rows], vectors[:rows], self.embedder)
        self.shards[name] = rows
        self._ids, self._vectors = [ids[rows:]], [vectors[rows:]]
        self._hashes = self._hashes[rows:]
        self._buffered -= rows
        log.debug("wrote %s (%d rows)", name, rows)

    def close(self) -> dict[str, int]:
        """Write the last, partial shard; returns {shard name: rows}."""
        if self._buffered:
            self._flush(self._buffered)
        return dict(self.shards)


def parquet_embedder(path: Path) -> ShardEmbedder | None:
    """The embedder a parquet file's schema metadata records (None: it records none)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        embedder = ShardEmbedder(dict(doc["embedder"]), str(doc["spec_key"]))
        _ = embedder.fingerprint, embedder.dim
    except (ValueError, KeyError, TypeError) as exc:
        raise CatalogError(
            f"{path}: schema metadata {METADATA_KEY.decode()} expected JSON with embedder (fingerprint, dim) and "
            f"spec_key, got {raw[:80]!r} ({type(exc).__name__}: {exc})"
        ) from None
    return embedder


@dataclass(frozen=True)
class ShardSet:
    """A finished shard directory: its shard files in order and the one embedder that made them (None: the
    shards carry no embedder description, e.g. written by another tool)."""

    directory: Path
    paths: tuple[Path, ...]
    embedder: ShardEmbedder | None
    summary: dict[str, Any]


def _read_success(directory: Path) -> dict[str, Any]:
    marker = directory / SUCCESS_FILE
    if not marker.is_file():
        raise CatalogError(
            f"{directory}: expected {SUCCESS_FILE} (written last by posters-index embed): without it the job did "
            f"not finish and its shards may be incomplete"
        )
    text = marker.read_text(encoding="utf-8").strip()
    if not text:  # another tool's empty success marker (Spark, Hadoop): nothing more to check
        return {}
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise CatalogError(f"{marker}: expected a JSON summary (or an empty file), got: {exc}") from None
    if not isinstance(summary, dict):
        raise CatalogError(f"{marker}: expected a JSON object, got {type(summary).__name__}")
    return summary


def _check_listing(directory: Path, paths: list[Path], summary: dict[str, Any]) -> None:
    """The shards on disk are exactly those the summary lists, with its row counts."""
    import pyarrow.parquet as pq

    listed = summary.get("shards")
    if not isinstance(listed, dict):
        return
    found = {p.name for p in paths}
    if found != set(listed):
        raise CatalogError(
            f"{directory}: shards expected {sorted(listed)} (as {SUCCESS_FILE} lists them), got {sorted(found)}: "
            f"missing {sorted(set(listed) - found)}, unexpected {sorted(found - set(listed))}"
        )
    for path in paths:
        rows = pq.read_metadata(path).num_rows
        if rows != listed[path.name]:
            raise CatalogError(f"{path}: expected {listed[path.name]} rows (as {SUCCESS_FILE} says), got {rows}")


def open_shards(directory: Path) -> ShardSet:
    """Check a shard directory: finished (``_SUCCESS``), shards as listed, one embedder (fingerprint and dim)."""
    if not directory.is_dir():
        raise CatalogError(f"{directory}: expected a directory of embedding shards, got no such directory")
    summary = _read_success(directory)
    paths = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(_TMP_PREFIX))
    if not paths:
        raise CatalogError(f"{directory}: expected {SHARD_GLOB} files, got none")
    _check_listing(directory, paths, summary)
    embedders = {p: parquet_embedder(p) for p in paths}
    kinds: dict[tuple[str, int] | None, list[str]] = {}
    for path, embedder in embedders.items():
        key = None if embedder is None else (embedder.fingerprint, embedder.dim)
        kinds.setdefault(key, []).append(path.name)
    if len(kinds) > 1:
        shown = "; ".join(
            f"{'no embedder' if k is None else f'fingerprint {k[0][:12]} dim {k[1]}'}: {', '.join(v[:3])}"
            + (f" (+{len(v) - 3})" if len(v) > 3 else "")
            for k, v in kinds.items()
        )
        raise CatalogError(
            f"{directory}: shards expected one embedder (one fingerprint and dimension), got {len(kinds)}: {shown}; "
            f"vectors of different models cannot share an index"
        )
    return ShardSet(directory, tuple(paths), embedders[paths[0]], summary)


@dataclass
class ShardRows:
    """The rows of one shard: ids, content hashes and float32 vectors (N, D)."""

    path: Path
    ids: np.ndarray
    hashes: list[str | None]
    vectors: np.ndarray
    bad_rows: dict[int, str]  # positions whose vector is missing or of another length, and why


def _vectors(column: Any, path: Path, dim: int | None) -> tuple[np.ndarray, dict[int, str]]:
    """A list column as (N, D) float32 without a per-row Python loop; D is ``dim`` or the most common length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (
        pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)
    ):
        raise CatalogError(f"{path}: column {VECTOR_COLUMN!r} expected a list of numbers, got {column.type}")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    present = lengths[valid].astype(np.int64)
    if dim is None:
        dim = int(np.bincount(present).argmax()) if len(present) else 0
    good = valid & (np.nan_to_num(lengths, nan=-1) == dim)
    out = np.full((len(column), dim), np.nan, np.float32)
    if good.any():
        values = column.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False)
        out[good] = np.asarray(values, np.float32).reshape(-1, dim)
    bad = {
        int(pos): "vector is missing" if not valid[pos] else f"vector has {int(lengths[pos])} values, expected {dim}"
        for pos in np.flatnonzero(~good)
    }
    return out, bad


def read_shard(path: Path, dim: int | None = None) -> ShardRows:
    """One shard's rows (``dim``: the expected vector length; default the most common one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in (ID_COLUMN, VECTOR_COLUMN) if c not in table.column_names]
    if missing:
        raise CatalogError(f"{path}: columns {[ID_COLUMN, VECTOR_COLUMN]} expected, got {table.column_names}")
    id_column = table.column(ID_COLUMN)
    if id_column.null_count or not pa.types.is_integer(id_column.type):  # exact: never through float64
        ids = np.array(id_column.to_pylist(), dtype=object)
    else:
        ids = id_column.to_numpy()
    hashes = table.column(HASH_COLUMN).to_pylist() if HASH_COLUMN in table.column_names else [None] * len(ids)
    vectors, bad = _vectors(table.column(VECTOR_COLUMN), path, dim)
    return ShardRows(path, ids, hashes, vectors, bad)


def iter_shards(shards: ShardSet) -> Iterator[ShardRows]:
    dim = shards.embedder.dim if shards.embedder is not None else None
    for path in shards.paths:
        rows = read_shard(path, dim)
        if dim is None:
            dim = rows.vectors.shape[1]
        elif rows.vectors.shape[1] != dim:
            raise CatalogError(f"{path}: vectors expected dim {dim} (as the other shards), got {rows.vectors.shape[1]}")
        yield rows
