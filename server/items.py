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
from server.types import Item

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
        )

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
