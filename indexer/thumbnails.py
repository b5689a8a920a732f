"""Poster thumbnails: made at build time from the same bytes that are embedded, cached by content
hash, stored in the bundle as one file of JPEGs plus an offset table, served by ``GetPosters``.

A client on another host cannot open the build machine's poster files; thumbnails travel with the
bundle instead (about 10 KB each: 60,000 posters ~ 0.6 GB). The cache (SQLite, keyed by the poster's
content hash and the thumbnail settings) means a rebuild only makes thumbnails for new posters.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from indexer.errors import ImageError
from indexer.images import DecodeConfig, decode_full

THUMBNAIL_SIZE = (185, 278)  # TMDB's w185 posters: 2:3
JPEG_QUALITY = 80
SQLITE_LOOKUP_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbnails (
    settings TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    jpeg BLOB NOT NULL,
    PRIMARY KEY (settings, content_hash)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class ThumbnailSpec:
    width: int = THUMBNAIL_SIZE[0]
    height: int = THUMBNAIL_SIZE[1]
    quality: int = JPEG_QUALITY

    @property
    def key(self) -> str:
        return f"jpeg:{self.width}x{self.height}:q{self.quality}"


def make_thumbnail(data: bytes, spec: ThumbnailSpec, decode: DecodeConfig) -> bytes:
    """JPEG bytes of the poster fitted into ``spec``'s box (aspect kept), with ``decode``'s guards."""
    rgb = decode_full(data, decode, max_side=2 * max(spec.width, spec.height))
    rgb.thumbnail((spec.width, spec.height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=spec.quality, optimize=True)
    return buf.getvalue()


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


class ThumbnailStore:
    """Thumbnails by content hash (SQLite; shared by decoding threads, one connection under a lock)."""

    def __init__(self, path: Path, spec: ThumbnailSpec) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.spec = spec
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            raise ImageError(
                f"thumbnail cache {path} is unusable ({exc}): delete it, or build with --no-cache"
            ) from exc

    def has(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM thumbnails WHERE settings = ? AND content_hash = ?", (self.spec.key, key)
            ).fetchone()
        return row is not None

    def put(self, key: str, jpeg: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?)", (self.spec.key, key, jpeg))

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(keys))
        out: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(wanted), SQLITE_LOOKUP_CHUNK):
                chunk = wanted[start : start + SQLITE_LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT content_hash, jpeg FROM thumbnails WHERE settings = ? AND content_hash IN ({marks})",
                    [self.spec.key, *chunk],
                )
                out.update(dict(rows))
        return out

    def in_order(self, keys: list[str | None]) -> Iterator[bytes | None]:
        """Thumbnails for ``keys`` in order (None where a key is None or has none), read in chunks."""
        for start in range(0, len(keys), SQLITE_LOOKUP_CHUNK):
            chunk = keys[start : start + SQLITE_LOOKUP_CHUNK]
            found = self.get_many(k for k in chunk if k is not None)
            for key in chunk:
                yield found.get(key) if key is not None else None

    def close(self) -> None:
        with self._lock:
            self._db.commit()
            self._db.close()
