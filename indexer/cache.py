"""Embedding cache keyed by (model fingerprint, poster content hash).

SQLite (WAL, one commit per batch): a rebuild embeds only new or changed
posters, and a killed build resumes from the last committed batch.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, content_hash)
) WITHOUT ROWID
"""
_LOOKUP_CHUNK = 500  # SQLite's host-parameter limit is 999 in old builds


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
        self._db = sqlite3.connect(str(path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        nbytes = self.dim * 4
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT content_hash, vector FROM embeddings WHERE fingerprint = ? AND content_hash IN ({marks})",
                [self.fingerprint, *chunk],
            )
            for key, blob in rows:
                if len(blob) == nbytes:  # a row of another dimension is ignored (re-embedded)
                    found[key] = np.frombuffer(blob, np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors and commit (durable once this returns)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
            [(self.fingerprint, k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in items.items()],
        )
        self._db.commit()

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", [self.fingerprint]).fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
