"""The item store: a bundle's catalog rows as columns, id -> row by binary search, items built on demand.

Rows are positions in ``items.csv`` order; every other part of the search core speaks item ids
(FAISS ids are item ids) and asks the store for rows and metadata. Validation of ids (domain,
presence) happens here, once.

Memory is columnar (server.columns), with no Python object per row: ids as int64 (plus a permutation
sorting them when the file does not list them in ascending order) searched with ``np.searchsorted``
(O(log N) per id), titles and poster paths as one UTF-8 buffer each plus offsets, genres dictionary-encoded
(a code per row, a tuple and a boolean genre row per distinct genre list), the integer columns in the
smallest dtype that holds them. At 1M MovieLens-like items that is 84 MB of RSS (scripts/bench_memory.py;
the per-row Python objects it replaced took 547 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from server.columns import StringColumn, TagSetColumn, narrow_ints
from server.errors import InvalidArgument, NotFound
from server.types import Filter, Item

GENRE_SEPARATOR = "|"
INT64_MAX = int(np.iinfo(np.int64).max)
INT32_MAX = int(np.iinfo(np.int32).max)
ABSENT = -1  # the row of an id that is not in the store (rows_of)


def _ints(column: pd.Series) -> np.ndarray:
    """A nullable integer column with 0 for unknown (the proto's convention), in its smallest dtype."""
    return narrow_ints(column.astype("Int64").fillna(0).to_numpy(np.int64))


@dataclass(frozen=True)
class Lookup:
    """Rows of the ids that are in the store, in request order, and the ids that are not."""

    ids: np.ndarray  # int64, the known ids (duplicates removed, order kept)
    rows: np.ndarray  # int64 rows of ``ids``
    missing: tuple[int, ...]


class ItemStore:
    """Immutable and shared between request threads."""

    def __init__(self, items: pd.DataFrame, version: str) -> None:
        self.version = version
        self.ids = np.array(items["item_id"].to_numpy(np.int64), dtype=np.int64)  # a copy: not a view of the frame
        ascending = bool((self.ids[1:] > self.ids[:-1]).all())
        # rows in id order (None: the identity, ids already ascend) and the ids in that order
        row_dtype = np.int32 if len(self.ids) <= INT32_MAX else np.int64
        self._order = None if ascending else np.argsort(self.ids, kind="stable").astype(row_dtype)
        self._sorted_ids = self.ids if self._order is None else self.ids[self._order]
        repeated = np.flatnonzero(self._sorted_ids[1:] == self._sorted_ids[:-1])
        if len(repeated):
            raise ValueError(f"item ids expected unique, got {int(self._sorted_ids[repeated[0]])} more than once")
        self.titles = StringColumn.from_series(items["title"])
        self.genres = TagSetColumn(items["genres"], GENRE_SEPARATOR)
        self.posters = StringColumn.from_series(items["poster"])
        self.imdb_ids = _ints(items["imdb_id"])
        self.tmdb_ids = _ints(items["tmdb_id"])
        self.years = _ints(items["year"])
        self.rating_counts = _ints(items["rating_count"])
        self.has_ratings = bool(items["rating_count"].notna().any())
        self.genre_names = self.genres.names

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, row: int) -> Item:
        return Item(
            int(self.ids[row]),
            self.titles[row],
            self.genres[row],
            self.posters[row],
            int(self.imdb_ids[row]),
            int(self.tmdb_ids[row]),
            int(self.years[row]),
            int(self.rating_counts[row]),
        )

    @property
    def year_range(self) -> tuple[int, int]:
        """(first, last) known release year; (0, 0) when no title carries one."""
        known = self.years[self.years > 0]
        return (int(known.min()), int(known.max())) if len(known) else (0, 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the arrays and buffers; not the few per-store Python objects)."""
        arrays = (self.ids, self.imdb_ids, self.tmdb_ids, self.years, self.rating_counts)
        order = 0 if self._order is None else self._order.nbytes + self._sorted_ids.nbytes
        return sum(a.nbytes for a in arrays) + order + self.titles.nbytes + self.posters.nbytes + self.genres.nbytes

    def _genre_columns(self, names: Sequence[str], what: str) -> list[int]:
        columns = [self.genres.column(g) for g in names]
        unknown = [g for g, c in zip(names, columns) if c is None]
        if unknown:
            raise InvalidArgument(
                f"filter.{what} expected genres of this bundle ({', '.join(self.genre_names) or 'none'}), "
                f"got unknown {unknown}",
                f"options.filter.{what}",
            )
        return [c for c in columns if c is not None]

    def mask(self, flt: Filter) -> np.ndarray:
        """Rows that pass ``flt`` (bool per row). Validates the filter; unknown allow/deny ids are ignored."""
        keep = np.ones(len(self.ids), bool)
        genres = self.genres
        if flt.genres_any:
            keep &= genres.any_of(self._genre_columns(flt.genres_any, "genres_any"))
        if flt.genres_all:
            keep &= genres.all_of(self._genre_columns(flt.genres_all, "genres_all"))
        if flt.genres_none:
            keep &= ~genres.any_of(self._genre_columns(flt.genres_none, "genres_none"))
        if flt.year_min is not None or flt.year_max is not None:
            lo = flt.year_min if flt.year_min is not None else 0
            hi = flt.year_max if flt.year_max is not None else int(np.iinfo(np.int64).max)
            if lo > hi:
                raise InvalidArgument(f"filter.year_min expected <= year_max, got {lo} > {hi}")
            keep &= (self.years > 0) & (self.years >= lo) & (self.years <= hi)
        if flt.min_ratings is not None:
            if not self.has_ratings:
                raise InvalidArgument(
                    f"filter.min_ratings expected a bundle built with ratings.csv; bundle {self.version} has no "
                    "rating counts"
                )
            keep &= self.rating_counts >= flt.min_ratings
        if flt.allow_ids:
            keep &= self._rows_mask(flt.allow_ids, "filter.allow_ids")
        if flt.deny_ids:
            keep &= ~self._rows_mask(flt.deny_ids, "filter.deny_ids")
        return keep

    def _rows_mask(self, item_ids: Sequence[int], what: str) -> np.ndarray:
        out = np.zeros(len(self.ids), bool)
        out[self.lookup(item_ids, what).rows] = True
        return out

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """The row of each id (int64; ``ABSENT`` where an id is not in the store), vectorized."""
        wanted = np.asarray(item_ids, dtype=np.int64)
        if not len(self._sorted_ids):
            return np.full(wanted.shape, ABSENT, np.int64)
        at = np.minimum(np.searchsorted(self._sorted_ids, wanted), len(self._sorted_ids) - 1)
        rows = at if self._order is None else self._order[at]
        return np.where(self._sorted_ids[at] == wanted, rows, ABSENT).astype(np.int64)

    def has(self, item_id: int) -> bool:
        return self.row_or_none(item_id) is not None

    def row_of(self, item_id: int, what: str = "item") -> int:
        """The row of one id; InvalidArgument outside the id domain, NotFound when absent."""
        if item_id < 0:
            raise InvalidArgument(f"{what} id expected a non-negative int64, got {item_id}")
        row = self.row_or_none(item_id)
        if row is None:
            raise NotFound(f"{what} {item_id} is not in bundle {self.version} ({len(self)} items)")
        return row

    def lookup(self, item_ids: Sequence[int], what: str = "item") -> Lookup:
        """Rows of many ids (duplicates dropped); ids outside the domain are InvalidArgument."""
        unique = list(dict.fromkeys(item_ids))
        for item_id in unique:
            if item_id < 0:
                raise InvalidArgument(f"{what} id expected a non-negative int64, got {item_id}")
        # above int64: not an id of any item (ABSENT is never one either)
        wanted = np.fromiter((i if i <= INT64_MAX else ABSENT for i in unique), np.int64, len(unique))
        rows = self.rows_of(wanted)
        known = rows != ABSENT
        missing = tuple(i for i, k in zip(unique, known.tolist()) if not k)
        return Lookup(wanted[known], rows[known], missing)

    def row_or_none(self, item_id: int) -> int | None:
        if not 0 <= item_id <= INT64_MAX:
            return None
        ids = self._sorted_ids
        at = int(ids.searchsorted(item_id))
        if at == len(ids) or ids[at] != item_id:
            return None
        return at if self._order is None else int(self._order[at])
