"""Plain domain types shared by the searcher, the servicer's converters and the client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class Filter:
    """Which items a search may return; applied inside the index search (k filled whenever k items pass)."""

    genres_any: tuple[str, ...] = ()  # at least one of these genres
    genres_all: tuple[str, ...] = ()  # every one of these genres
    genres_none: tuple[str, ...] = ()  # none of these genres
    year_min: int | None = None  # release year (from the MovieLens title) at least this; unknown years fail
    year_max: int | None = None
    min_ratings: int | None = None  # rated at least this many times (bundles built with ratings.csv)
    allow_ids: tuple[int, ...] = ()  # only these items (unknown ids ignored)
    deny_ids: tuple[int, ...] = ()  # never these items

    def is_empty(self) -> bool:
        return self == EMPTY_FILTER


EMPTY_FILTER = Filter()


@dataclass(frozen=True)
class SearchOptions:
    k: int = 0  # 0: the server default
    candidate_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()
    min_score: float | None = None
    nprobe: int = 0  # 0: the bundle default
    exact: bool = False
    filter: Filter = EMPTY_FILTER
    ef_search: int = 0  # HNSW bundles; 0: the bundle default
    k_factor: int = 0  # IVF-PQ bundles (re-ranked candidates = k x k_factor); 0: the bundle default
    strict: bool = False  # unknown candidate/exclude/positive/negative ids: NOT_FOUND instead of missing_ids


class Item(NamedTuple):  # NamedTuples: immutable and cheap to build on the per-result hot path
    item_id: int
    title: str
    genres: tuple[str, ...]
    poster: str
    imdb_id: int = 0
    tmdb_id: int = 0
    year: int = 0  # 0: unknown
    rating_count: int = 0  # 0: unknown or never rated


class Hit(NamedTuple):
    item: Item
    score: float
    box: tuple[int, int, int, int] | None = None  # image queries: where in the upload this match was found


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    bundle_version: str
    exact: bool
    missing_ids: tuple[int, ...] = ()  # request ids that are not in the bundle (skipped; strict=False)


class PosterImage(NamedTuple):
    item_id: int
    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class PostersResult:
    """GetPosters: thumbnails in request order, and the ids without one (unknown, or none stored)."""

    posters: list[PosterImage]
    missing_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TitlePage:
    """One page of FindItems: the items, all matches, and where the next page starts (None: last page)."""

    items: list[Item]
    total: int
    next_offset: int | None


@dataclass(frozen=True)
class ItemsResult:
    """GetItems: the known items in request order and the ids that are not in the bundle."""

    items: list[Item]
    missing_ids: tuple[int, ...] = ()


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
    genres: tuple[str, ...] = ()
    year_min: int = 0
    year_max: int = 0
    has_ratings: bool = False
    has_posters: bool = False
    thumbnail_width: int = 0
    thumbnail_height: int = 0


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
    mode: str = "auto"  # whole | locate | auto: look for the poster inside the upload first


Query = ItemQuery | ItemsQuery | VectorQuery | ImageQuery
