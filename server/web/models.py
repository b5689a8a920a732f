"""Pydantic request and response schemas of the REST API (the OpenAPI document is generated from them).

Field names are the proto's (``protos/posters/v1/posters.proto``), in snake_case. The gateway checks only
what the wire types need (integers within int32/int64, valid Unicode, one kind per batch query); every rule
of meaning (k within the server cap, the vector's dimension, finite values, positive weights, known ids) is
the server's, so the messages are the same as over gRPC. Ids are JSON integers: JavaScript reads ids above
2^53 inexactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from server.client.api import Box, LocatedResult
from server.types import Filter, Item, ItemsResult, SearchOptions

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT_CHARS = 1000  # a title query or a genre name longer than this is not a real one


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("expected valid Unicode text, got a lone surrogate (\\ud800-\\udfff)") from None
    return text


Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]
ImageMode = Literal["auto", "whole", "locate"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class FilterIn(_In):
    """Which items a search may return (every set condition must hold; see GET /api/v1/info for genres/years)."""

    genres_any: list[Text] = Field(default=[], description="at least one of these genres (exact MovieLens names)")
    genres_all: list[Text] = Field(default=[], description="all of these genres")
    genres_none: list[Text] = Field(default=[], description="none of these genres")
    year_min: Int32 | None = Field(default=None, description="release year at least this; unknown years fail")
    year_max: Int32 | None = Field(default=None, description="release year at most this; unknown years fail")
    min_ratings: Int64 | None = Field(default=None, description="rated at least this many times (has_ratings)")
    allow_ids: list[Int64] = Field(default=[], description="only these items")
    deny_ids: list[Int64] = Field(default=[], description="never these items")

    def to_domain(self) -> Filter:
        return Filter(
            genres_any=tuple(self.genres_any),
            genres_all=tuple(self.genres_all),
            genres_none=tuple(self.genres_none),
            year_min=self.year_min,
            year_max=self.year_max,
            min_ratings=self.min_ratings,
            allow_ids=tuple(self.allow_ids),
            deny_ids=tuple(self.deny_ids),
        )


class SearchOptionsIn(_In):
    """Options shared by every search (SearchOptions)."""

    k: Int32 = Field(default=0, description="results wanted; 0: the server default (10); at most info.max_k")
    candidate_ids: list[Int64] = Field(default=[], description="rank only these items (exact)")
    exclude_ids: list[Int64] = Field(default=[], description="never return these items")
    min_score: float | None = Field(default=None, description="drop results whose cosine is below this")
    nprobe: Int32 = Field(default=0, description="IVF lists to probe; 0: the bundle's default")
    exact: bool = Field(default=False, description="force an exhaustive search")
    filter: FilterIn = Field(default_factory=FilterIn)
    strict: bool = Field(default=False, description="unknown ids are NOT_FOUND instead of listed in missing_ids")

    def to_domain(self) -> SearchOptions:
        return SearchOptions(
            k=self.k,
            candidate_ids=tuple(self.candidate_ids),
            exclude_ids=tuple(self.exclude_ids),
            min_score=self.min_score,
            nprobe=self.nprobe,
            exact=self.exact,
            filter=self.filter.to_domain(),
            strict=self.strict,
        )


class ItemSearchIn(_In):
    """SimilarToItem: the k posters most like one item (the item itself excluded)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"item_id": 1, "options": {"k": 10, "filter": {"genres_any": ["Comedy"]}}}]}
    )

    item_id: Int64
    options: SearchOptionsIn = Field(default_factory=SearchOptionsIn)


class WeightedItemIn(_In):
    item_id: Int64
    weight: float = Field(default=1.0, description="relative weight, > 0")


class ItemsSearchIn(_In):
    """SimilarToItems: query = normalize(sum w * positive - sum w * negative); the given items are excluded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "positive": [{"item_id": 1}, {"item_id": 2, "weight": 0.5}],
                    "negative": [{"item_id": 7}],
                    "options": {"k": 10},
                }
            ]
        }
    )

    positive: list[WeightedItemIn] = Field(description="items to move towards (at least one)")
    negative: list[WeightedItemIn] = Field(default=[], description="items to move away from")
    options: SearchOptionsIn = Field(default_factory=SearchOptionsIn)

    def weighted(self) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, float], ...]]:
        return tuple((w.item_id, w.weight) for w in self.positive), tuple((w.item_id, w.weight) for w in self.negative)


class VectorSearchIn(_In):
    """SearchByVector: a raw embedding of the bundle's dimension (info.dimension), L2-normalized by the server."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"vector": [0.1, 0.2, 0.3], "options": {"k": 5}}]})

    vector: list[float]
    options: SearchOptionsIn = Field(default_factory=SearchOptionsIn)


class ImageQueryIn(_In):
    """An image query inside a batch: the file as standard base64."""

    image_base64: str = Field(description="the encoded image file (JPEG, PNG, WebP...) in standard base64")
    mode: ImageMode = Field(default="auto", description="whole: the image is the poster; locate: find it inside")
    options: SearchOptionsIn = Field(default_factory=SearchOptionsIn)


class QueryIn(_In):
    """One query of a batch: exactly one of ``item``, ``items``, ``vector``, ``image``."""

    # the document says "exactly one" as minProperties = maxProperties = 1 (null is not a kind)
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    item: ItemSearchIn | SkipJsonSchema[None] = None
    items: ItemsSearchIn | SkipJsonSchema[None] = None
    vector: VectorSearchIn | SkipJsonSchema[None] = None
    image: ImageQueryIn | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _one_kind(self) -> QueryIn:
        kinds = [k for k in ("item", "items", "vector", "image") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"expected exactly one of item, items, vector, image; got {kinds or 'none'}")
        return self


class BatchIn(_In):
    """BatchSearch: up to info.max_batch queries of any kind, answered in order by one bundle."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "queries": [
                        {"item": {"item_id": 1, "options": {"k": 5}}},
                        {"items": {"positive": [{"item_id": 1}, {"item_id": 2}], "options": {"k": 5}}},
                        {"item": {"item_id": 999999999, "options": {"strict": True}}},
                    ]
                }
            ]
        }
    )

    queries: list[QueryIn]


# ---- responses -----------------------------------------------------------------------------------------------


class BoxOut(BaseModel):
    """A rectangle of the uploaded image, in pixels after EXIF orientation: x0 <= x < x1, y0 <= y < y1."""

    x0: int
    y0: int
    x1: int
    y1: int


class ItemOut(BaseModel):
    item_id: int
    title: str
    genres: list[str]
    poster: str = Field(description="poster file name relative to the catalog's poster folder")
    imdb_id: int
    tmdb_id: int
    year: int = Field(description="release year from the title; 0 when unknown")
    rating_count: int = Field(description="ratings in ratings.csv; 0 when unknown")

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            item_id=item.item_id,
            title=item.title,
            genres=list(item.genres),
            poster=item.poster,
            imdb_id=item.imdb_id,
            tmdb_id=item.tmdb_id,
            year=item.year,
            rating_count=item.rating_count,
        )


class NeighborOut(ItemOut):
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")
    query_box: BoxOut | None = Field(
        default=None, description="image queries in locate/auto mode: the region of the upload that matched"
    )


class SearchOut(BaseModel):
    neighbors: list[NeighborOut] = Field(description="at most k results, best first")
    bundle_version: str
    exact: bool
    missing_ids: list[int] = Field(description="request ids not in the bundle (skipped; strict=false)")

    @classmethod
    def of(cls, located: LocatedResult) -> SearchOut:
        result = located.result
        boxes: tuple[Box | None, ...] = located.boxes or (None,) * len(result.hits)
        return cls(
            neighbors=[
                NeighborOut(
                    **ItemOut.of(hit.item).model_dump(),
                    score=hit.score,
                    query_box=BoxOut(**box._asdict()) if box is not None else None,
                )
                for hit, box in zip(result.hits, boxes)
            ],
            bundle_version=result.bundle_version,
            exact=result.exact,
            missing_ids=list(result.missing_ids),
        )


class StatusOut(BaseModel):
    """A query's status inside a batch: code OK, or the error that query alone got."""

    code: str = Field(description="gRPC status name: OK, INVALID_ARGUMENT, NOT_FOUND...")
    http_status: int = Field(description="the HTTP status this error would have as a call of its own")
    message: str
    details: list[dict[str, Any]]


class BatchOut(BaseModel):
    results: list[SearchOut] = Field(description="in request order; empty for a failed query")
    statuses: list[StatusOut] = Field(description="in request order")
    bundle_version: str


class FindOut(BaseModel):
    items: list[ItemOut] = Field(description="best matches first")
    total: int = Field(description="matches in all pages")
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last")
    bundle_version: str


class ItemsOut(BaseModel):
    items: list[ItemOut] = Field(description="in request order, each id once")
    missing_ids: list[int]

    @classmethod
    def of(cls, result: ItemsResult) -> ItemsOut:
        return cls(items=[ItemOut.of(i) for i in result.items], missing_ids=list(result.missing_ids))


class PosterOut(BaseModel):
    item_id: int
    width: int
    height: int
    jpeg_base64: str = Field(description="the JPEG thumbnail in standard base64")


class PostersOut(BaseModel):
    posters: list[PosterOut] = Field(description="in request order; items without a thumbnail are left out")
    missing_ids: list[int]


class InfoOut(BaseModel):
    """GetIndexInfo: the serving bundle, the server's limits and its reload state."""

    bundle_version: str
    model: str
    dimension: int
    index_type: str
    item_count: int
    failure_count: int
    default_nprobe: int
    neighbour_table_k: int
    max_k: int
    max_batch: int
    max_image_bytes: int
    max_image_pixels: int
    image_search: bool
    loaded_at: float
    desired_version: str
    reload_failures: int
    last_reload_error: str
    previous_bundle_version: str
    previous_model: str
    previous_dimension: int
    genres: list[str]
    year_min: int
    year_max: int
    has_ratings: bool
    has_posters: bool
    max_posters: int
    thumbnail_width: int
    thumbnail_height: int
    gateway_max_image_bytes: int = Field(description="the gateway's upload cap (it may be below the server's)")
    manifest: dict[str, Any]


class HealthOut(BaseModel):
    status: str = Field(description="posters-serve's health: SERVING, NOT_SERVING...")
    image_search: str = Field(description="health of SearchByImage (SERVING once the model is loaded)")


class QualityChartOut(BaseModel):
    name: str
    url: str


class QualitySectionOut(BaseModel):
    name: Literal["eval", "analyze"]
    markdown: str = Field(description="the report's tables (Markdown)")
    charts: list[QualityChartOut]
    modified_at: float = Field(description="Unix time the report was written")


class QualityOut(BaseModel):
    bundle_version: str
    configured: bool = Field(description="whether posters-web was given --quality-dir")
    sections: list[QualitySectionOut]
    how_to: str = Field(description="the commands that write the reports")


class ErrorOut(BaseModel):
    code: str = Field(description="gRPC status name")
    http_status: int
    message: str
    details: list[dict[str, Any]] = Field(description="google.rpc details (BadRequest, ErrorInfo...) with @type")
    request_id: str


class ErrorBody(BaseModel):
    error: ErrorOut
