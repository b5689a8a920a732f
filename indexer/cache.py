"""Embedding cache keyed by (model fingerprint, poster content hash).

SQLite (WAL, one commit per batch): a rebuild embeds only new or changed
posters, and a killed build resumes from the last committed batch. One cache may
be used from several threads (decoding workers look vectors up); a lock serializes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from indexer.errors import BuildError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, content_hash)
) WITHOUT ROWID
"""
_MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    spec_key TEXT PRIMARY KEY,
    description TEXT NOT NULL
) WITHOUT ROWID
"""
_LOOKUP_CHUNK = 500  # SQLite's host-parameter limit is 999 in old builds


def recall_model(path: Path, spec_key: str) -> dict | None:
    """The embedder description (fingerprint, dim, ...) a cache remembers for an embedder spec, if any: lets a
    build whose posters are all cached skip building the model."""
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(str(path))) as db:
            db.execute(_MODELS_SCHEMA)
            row = db.execute("SELECT description FROM models WHERE spec_key = ?", (spec_key,)).fetchone()
    except sqlite3.Error as exc:
        raise BuildError(f"embedding cache {path} is unusable: {exc} (delete it, or build with --no-cache)") from exc
    return json.loads(row[0]) if row else None


def content_hash(data: bytes) -> str:
    """Stable hash of a poster file's bytes."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


class EmbeddingCache:
    """Vectors for one model fingerprint; float32 of a fixed dimension."""

    def __init__(self, path: Path, fingerprint: str, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fingerprint = fingerprint
        self.dim = dim
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(_MODELS_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._unusable(exc) from exc

    def _unusable(self, exc: sqlite3.Error) -> BuildError:
        return BuildError(f"embedding cache {self.path} is unusable: {exc} (delete it, or build with --no-cache)")

    def remember_model(self, spec_key: str, description: dict) -> None:
        """Record the description of the embedder ``spec_key`` names (see ``recall_model``)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO models VALUES (?, ?)", (spec_key, json.dumps(description, sort_keys=True))
                )
                self._db.commit()
            except sqlite3.Error as exc:
                raise self._unusable(exc) from exc

    def get(self, content_hash: str) -> np.ndarray | None:
        """The vector stored for one content hash, or None."""
        return self.get_many([content_hash]).get(content_hash)

    def get_many(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        nbytes = self.dim * 4
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                try:
                    rows = self._db.execute(
                        f"SELECT content_hash, vector FROM embeddings WHERE fingerprint = ? "
                        f"AND content_hash IN ({marks})",
                        [self.fingerprint, *chunk],
                    ).fetchall()
                except sqlite3.Error as exc:
                    raise self._unusable(exc) from exc
            for key, blob in rows:
                if len(blob) == nbytes:  # a row of another dimension is ignored (re-embedded)
                    found[key] = np.frombuffer(blob, np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors and commit (durable once this returns)."""
        rows = [(self.fingerprint, k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in items.items()]
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
                self._db.commit()
            except sqlite3.Error as exc:  # e.g. "database or disk is full"
                self._db.rollback()
                raise self._unusable(exc) from exc

    def count(self) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", [self.fingerprint]
            ).fetchone()[0]

    def items(self) -> dict[str, np.ndarray]:
        """Every (content hash, vector) of this fingerprint (for tests and tools; loads them all)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT content_hash, vector FROM embeddings WHERE fingerprint = ?", [self.fingerprint]
            ).fetchall()
        return {key: np.frombuffer(blob, np.float32) for key, blob in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
