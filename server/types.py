"""Plain domain types shared by the searcher, the servicer's converters and the client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class SearchOptions:
    k: int = 0  # 0: the server default
    candidate_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()
    min_score: float | None = None
    nprobe: int = 0  # 0: the bundle default
    exact: bool = False


class Item(NamedTuple):  # NamedTuples: immutable and cheap to build on the per-result hot path
    item_id: int
    title: str
    genres: tuple[str, ...]
    poster: str
    imdb_id: int = 0
    tmdb_id: int = 0


class Hit(NamedTuple):
    item: Item
    score: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    bundle_version: str
    exact: bool


@dataclass(frozen=True)
class IndexSummary:
    """What the serving bundle is (GetIndexInfo's bundle fields)."""

    bundle_version: str
    model: str
    dimension: int
    index_type: str
    item_count: int
    failure_count: int
    default_nprobe: int
    neighbour_table_k: int
    image_search: bool
    loaded_at: float  # Unix seconds


@dataclass(frozen=True)
class ItemQuery:
    item_id: int
    options: SearchOptions = field(default_factory=SearchOptions)


@dataclass(frozen=True)
class ItemsQuery:
    positive: tuple[tuple[int, float], ...]  # (item id, weight)
    negative: tuple[tuple[int, float], ...] = ()
    options: SearchOptions = field(default_factory=SearchOptions)


@dataclass(frozen=True)
class VectorQuery:
    vector: Sequence[float] | np.ndarray
    options: SearchOptions = field(default_factory=SearchOptions)


@dataclass(frozen=True)
class ImageQuery:
    data: bytes
    options: SearchOptions = field(default_factory=SearchOptions)


Query = ItemQuery | ItemsQuery | VectorQuery | ImageQuery
