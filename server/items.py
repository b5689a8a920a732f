"""The item store: a bundle's catalog rows as columns, one id -> row map, items built on demand.

Rows are positions in ``items.csv`` order; every other part of the search core speaks item ids
(FAISS ids are item ids) and asks the store for rows and metadata. Validation of ids (domain,
presence) happens here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from server.errors import InvalidArgument, NotFound
from server.types import Filter, Item

GENRE_SEPARATOR = "|"


def _genres(value: str) -> tuple[str, ...]:
    return tuple(g for g in str(value).split(GENRE_SEPARATOR) if g)


def _ints(column: pd.Series) -> np.ndarray:
    """A nullable integer column as int64 with 0 for unknown (the proto's convention)."""
    return column.astype("Int64").fillna(0).to_numpy(np.int64)


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
        self.ids = items["item_id"].to_numpy(np.int64)
        self._row = dict(zip(self.ids.tolist(), range(len(self.ids))))
        self.titles = items["title"].astype(str).to_numpy(object)
        self.genres = [_genres(g) for g in items["genres"].astype(str)]
        self.posters = items["poster"].astype(str).to_numpy(object)
        self.imdb_ids = _ints(items["imdb_id"])
        self.tmdb_ids = _ints(items["tmdb_id"])
        self.years = _ints(items["year"])
        self.rating_counts = _ints(items["rating_count"])
        self.has_ratings = bool(items["rating_count"].notna().any())
        self.genre_names = sorted({g for gs in self.genres for g in gs})
        self._genre_column = {g: n for n, g in enumerate(self.genre_names)}
        self._genre_matrix = np.zeros((len(self.ids), len(self.genre_names)), bool)  # rows x genres
        for row, gs in enumerate(self.genres):
            self._genre_matrix[row, [self._genre_column[g] for g in gs]] = True

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

    def _genre_columns(self, names: Sequence[str], what: str) -> list[int]:
        unknown = [g for g in names if g not in self._genre_column]
        if unknown:
            raise InvalidArgument(
                f"filter.{what} expected genres of this bundle ({', '.join(self.genre_names) or 'none'}), "
                f"got unknown {unknown}",
                f"options.filter.{what}",
            )
        return [self._genre_column[g] for g in names]

    def mask(self, flt: Filter) -> np.ndarray:
        """Rows that pass ``flt`` (bool per row). Validates the filter; unknown allow/deny ids are ignored."""
        keep = np.ones(len(self.ids), bool)
        genres = self._genre_matrix
        if flt.genres_any:
            keep &= genres[:, self._genre_columns(flt.genres_any, "genres_any")].any(axis=1)
        if flt.genres_all:
            keep &= genres[:, self._genre_columns(flt.genres_all, "genres_all")].all(axis=1)
        if flt.genres_none:
            keep &= ~genres[:, self._genre_columns(flt.genres_none, "genres_none")].any(axis=1)
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

    def has(self, item_id: int) -> bool:
        return item_id in self._row

    def row_of(self, item_id: int, what: str = "item") -> int:
        """The row of one id; InvalidArgument outside the id domain, NotFound when absent."""
        if item_id < 0:
            raise InvalidArgument(f"{what} id expected a non-negative int64, got {item_id}")
        row = self._row.get(item_id)
        if row is None:
            raise NotFound(f"{what} {item_id} is not in bundle {self.version} ({len(self)} items)")
        return row

    def lookup(self, item_ids: Sequence[int], what: str = "item") -> Lookup:
        """Rows of many ids (duplicates dropped); ids outside the domain are InvalidArgument."""
        known: list[int] = []
        rows: list[int] = []
        missing: list[int] = []
        for item_id in dict.fromkeys(item_ids):
            if item_id < 0:
                raise InvalidArgument(f"{what} id expected a non-negative int64, got {item_id}")
            row = self._row.get(item_id)
            if row is None:
                missing.append(item_id)
            else:
                known.append(item_id)
                rows.append(row)
        return Lookup(np.array(known, np.int64), np.array(rows, np.int64), tuple(missing))

    def row_or_none(self, item_id: int) -> int | None:
        return self._row.get(item_id)
