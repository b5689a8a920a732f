"""The search core's façade: validates a query once, composes the item store and the vector index,
and answers in plain Python types.

No gRPC here. Every input is validated before FAISS sees it (FAISS asserts without a message and
pads missing results with id -1); errors are the typed exceptions of ``server.errors`` with
messages saying expected vs got. The parts: ``server.items.ItemStore`` (ids, rows, metadata),
``server.vector_index.VectorIndex`` (FAISS, parameters, neighbour table), ``server.titles``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from indexer.bundle import Bundle
from indexer.index import MAX_EF_SEARCH, MAX_K_FACTOR
from indexer.query_image import ImageSearch, SearchFn
from indexer.thumbnails import jpeg_size
from server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, SearchError
from server.guard import UNGUARDED, CallGuard
from server.items import ItemStore, Lookup
from server.titles import TitleIndex
from server.types import (
    Hit,
    ImageQuery,
    IndexSummary,
    ItemQuery,
    ItemsQuery,
    ItemsResult,
    PosterImage,
    PostersResult,
    Query,
    SearchOptions,
    SearchResult,
    TitlePage,
    VectorQuery,
)
from server.vector_index import SearchParams, VectorIndex

log = logging.getLogger(__name__)

ZERO_QUERY_NORM = 1e-6  # a weighted query this small relative to its largest component is "zero"
# Filters passing fewer than this share of the items are searched exhaustively: an IVF probe tuned for
# the whole catalog would find too few of them.
SELECTIVE_FILTER_FRACTION = 0.05
# What one query of a batch can fail with on its own (cancellation and shutdown end the whole call).
QUERY_ERRORS = (InvalidArgument, NotFound, ResourceExhausted, FailedPrecondition)


@dataclass(frozen=True)
class _Scope:
    """What one search may return: the filter's rows (None: every item) and the known excluded ids."""

    mask: np.ndarray | None
    excluded: frozenset[int]


@dataclass(frozen=True)
class SearchLimits:
    default_k: int = 10
    max_k: int = 1000
    max_batch: int = 256
    max_ids: int = 10_000  # per id list (candidates, exclusions, positives, negatives)
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_query_chars: int = 256
    default_find_limit: int = 20
    max_find_limit: int = 1000
    max_posters: int = 100  # thumbnails per GetPosters call (~10 KB each)


class ImageEmbedder(Protocol):
    """Embeds an encoded image exactly as the bundle's posters were embedded (server.image_embedder)."""

    def search_image(
        self, data: bytes, k: int, search: SearchFn, mode: str, guard: CallGuard = UNGUARDED
    ) -> ImageSearch: ...


class Searcher:
    """Immutable view of one bundle; safe to share between request threads."""

    def __init__(
        self,
        bundle: Bundle,
        limits: SearchLimits | None = None,
        image_embedder: ImageEmbedder | None = None,
        image_unavailable_reason: str = "",
        threads: int = 1,
        coalesce: bool = False,
    ) -> None:
        self.limits = limits or SearchLimits()
        self.version = bundle.version
        self.manifest = bundle.manifest
        self.items = ItemStore(bundle.items, bundle.version)
        self.vectors = VectorIndex(bundle, threads=threads, coalesce=coalesce)
        self.titles = TitleIndex(self.items.titles.tolist())
        self.thumbnails = bundle.thumbnails
        self.whitening = bundle.whitening  # vectors from outside the index go through it (None: no transform)
        self.image_embedder = image_embedder
        self.image_unavailable_reason = image_unavailable_reason
        self.loaded_at = time.time()

    def with_image_embedder(self, embedder: ImageEmbedder | None, reason: str = "") -> Searcher:
        """This searcher (same bundle, same parts) with an image embedder, or the reason there is none."""
        other = copy.copy(self)
        other.image_embedder = embedder
        other.image_unavailable_reason = reason
        return other

    @property
    def dim(self) -> int:
        """The dimension of query vectors (the embedder's; the index's own differs under a whitening)."""
        return self.manifest.query_dim

    @property
    def item_count(self) -> int:
        return len(self.items)

    @property
    def index_type(self) -> str:
        return self.manifest.index.type

    def warm_up(self) -> None:
        """Exercise every path a request can take (table, index at the largest k, reconstruction) once,
        so a bundle that cannot answer fails here, off the request path, and not in front of a client."""
        if not self.item_count:
            return
        first = int(self.items.ids[0])
        k = min(self.limits.max_k, max(1, self.item_count - 1))
        self.similar_to_item(first, SearchOptions(k=min(k, self.vectors.table_k) or k))
        self.search_vector(self.vectors.vectors(self.items.ids[:1])[0], SearchOptions(k=k))
        self.similar_to_item(first, SearchOptions(k=k, exact=True, exclude_ids=(first,)))

    # ---- validation (once per query) -----------------------------------------
    def _check_ids(self, ids: Sequence[object], what: str) -> None:
        if len(ids) > self.limits.max_ids:
            raise InvalidArgument(f"{what} expected at most {self.limits.max_ids} ids, got {len(ids)}")

    def _check_options(self, options: SearchOptions) -> int:
        """Validate the options of a search; returns the effective k."""
        k = options.k or self.limits.default_k
        if k < 0 or k > self.limits.max_k:
            raise InvalidArgument(
                f"k expected 1..{self.limits.max_k} (0 for the default {self.limits.default_k}), got {options.k}",
                "options.k",
            )
        self._check_ids(options.candidate_ids, "candidate_ids")
        self._check_ids(options.exclude_ids, "exclude_ids")
        self._check_ids(options.filter.allow_ids, "filter.allow_ids")
        self._check_ids(options.filter.deny_ids, "filter.deny_ids")
        if options.filter.min_ratings is not None and options.filter.min_ratings < 0:
            raise InvalidArgument(
                f"filter.min_ratings expected >= 0, got {options.filter.min_ratings}", "options.filter.min_ratings"
            )
        if options.min_score is not None and not math.isfinite(options.min_score):
            raise InvalidArgument(f"min_score expected a finite number, got {options.min_score}", "options.min_score")
        nlist = self.vectors.nlist
        if options.nprobe < 0 or (nlist and options.nprobe > nlist):
            limit = f"1..{nlist}" if nlist else "0 (flat index)"
            raise InvalidArgument(
                f"nprobe expected 0 (bundle default) or {limit}, got {options.nprobe}", "options.nprobe"
            )
        if not 0 <= options.ef_search <= MAX_EF_SEARCH:
            raise InvalidArgument(
                f"ef_search expected 0 (bundle default) or 1..{MAX_EF_SEARCH}, got {options.ef_search}",
                "options.ef_search",
            )
        if not 0 <= options.k_factor <= MAX_K_FACTOR:
            raise InvalidArgument(
                f"k_factor expected 0 (bundle default) or 1..{MAX_K_FACTOR}, got {options.k_factor}",
                "options.k_factor",
            )
        return k

    def _outside(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """A client's vector (the embedder's space) -> a normalized query in the index's space (whitened
        exactly as the catalog was, when the bundle has a whitening)."""
        q = self._normalized(vector, self.dim)
        if self.whitening is None:
            return q
        white, ok = self.whitening.apply(q)
        if not ok.all():
            raise InvalidArgument("vector expected a direction after the bundle's whitening, got the catalog mean")
        return white

    def _normalized(self, vector: Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float64).reshape(-1)  # float64: 3e38-sized values do not overflow
        if v.size != dim:
            raise InvalidArgument(f"vector dimension expected {dim} (bundle {self.version}), got {v.size}", "vector")
        if not np.isfinite(v).all():
            raise InvalidArgument(f"vector values must be finite; got {int((~np.isfinite(v)).sum())} NaN/Inf values")
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            raise InvalidArgument("vector must be non-zero (it is L2-normalized server-side)", "vector")
        return np.ascontiguousarray((v / norm)[None, :], dtype=np.float32)

    # ---- composing results ---------------------------------------------------
    def _hits(
        self, ids: Sequence[int], scores: Sequence[float], k: int, exclude: set[int], min_score: float | None
    ) -> list[Hit]:
        hits: list[Hit] = []
        for item_id, score in zip(ids, scores):
            if item_id < 0 or item_id in exclude:  # -1: FAISS's padding (the id domain is non-negative)
                continue
            if min_score is not None and score < min_score:
                break  # sorted best first
            row = self.items.row_or_none(item_id)
            if row is None:
                continue
            hits.append(Hit(self.items.item(row), float(score)))
            if len(hits) == k:
                break
        return hits

    def _known(self, item_ids: Sequence[int], what: str, strict: bool) -> Lookup:
        """Rows of request ids; unknown ids are NotFound with ``strict``, else reported as missing."""
        found = self.items.lookup(item_ids, what)
        if strict and found.missing:
            raise NotFound(f"{what} {found.missing[0]} is not in bundle {self.version} ({self.item_count} items)")
        return found

    def _scope(self, options: SearchOptions) -> tuple[_Scope, tuple[int, ...]]:
        """What a search may return (filter, exclusions) and the request's unknown exclusion ids."""
        excluded = self._known(options.exclude_ids, "exclude item", options.strict)
        mask = None if options.filter.is_empty() else self.items.mask(options.filter)
        return _Scope(mask, frozenset(excluded.ids.tolist())), excluded.missing

    def _rank_candidates(
        self, q: np.ndarray, options: SearchOptions, k: int, exclude: set[int], scope: _Scope
    ) -> SearchResult:
        found = self._known(options.candidate_ids, "candidate item", options.strict)
        keep = np.array([i not in exclude for i in found.ids.tolist()], bool)
        if scope.mask is not None and len(found.rows):
            keep &= scope.mask[found.rows]
        ids = found.ids[keep]
        if len(ids) == 0:
            return SearchResult([], self.version, True, found.missing)
        scores = self.vectors.vectors(ids) @ q[0]
        order = np.argsort(-scores, kind="stable")
        hits = self._hits(ids[order].tolist(), scores[order].tolist(), k, set(), options.min_score)
        return SearchResult(hits, self.version, True, found.missing)

    def _search_many(
        self, queries: np.ndarray, options: SearchOptions, ks: list[int], excludes: list[set[int]], scope: _Scope
    ) -> list[SearchResult]:
        """One FAISS call for queries that share search parameters (and so one filter)."""
        params = SearchParams(options.nprobe, options.exact, ef_search=options.ef_search, k_factor=options.k_factor)
        passing = self.item_count
        if scope.mask is not None:
            passing = int(scope.mask.sum())
            if passing == 0:
                return [SearchResult([], self.version, True) for _ in ks]
            selective = passing < SELECTIVE_FILTER_FRACTION * self.item_count
            ids = self.items.ids
            params = SearchParams(
                options.nprobe,
                options.exact or selective,  # few items pass: an approximate probe could miss most of them
                allow=ids[scope.mask] if passing <= self.item_count // 2 else None,
                deny=ids[~scope.mask] if passing > self.item_count // 2 else None,
                ef_search=options.ef_search,
                k_factor=options.k_factor,
            )
        fetch = min(passing, max(k + len(e) for k, e in zip(ks, excludes)))
        scores, found, exact = self.vectors.search(queries, fetch, params)
        results = [
            SearchResult(self._hits(i.tolist(), s.tolist(), k, e, options.min_score), self.version, exact)
            for i, s, k, e in zip(found, scores, ks, excludes)
        ]
        short = any(len(r.hits) < min(k, passing - len(e)) for r, k, e in zip(results, ks, excludes))
        if scope.mask is not None and not exact and short and options.min_score is None:
            # the probed lists held fewer than k passing items: k are promised whenever k items pass
            return self._search_many(queries, replace(options, exact=True), ks, excludes, scope)
        return results

    def _search(
        self, q: np.ndarray, options: SearchOptions, k: int, exclude: set[int], missing: tuple[int, ...] = ()
    ) -> SearchResult:
        scope, missing_excluded = self._scope(options)
        exclude = exclude | scope.excluded
        if options.candidate_ids:
            result = self._rank_candidates(q, options, k, exclude, scope)
        else:
            result = self._search_many(q, options, [k], [exclude], scope)[0]
        return replace(result, missing_ids=missing + missing_excluded + result.missing_ids)

    # ---- public queries ------------------------------------------------------
    def similar_to_item(self, item_id: int, options: SearchOptions = SearchOptions()) -> SearchResult:
        """The k items most like ``item_id`` (itself excluded by id)."""
        k = self._check_options(options)
        row = self.items.row_of(item_id)
        table = self.vectors.table_row(row)
        if (
            table is not None
            and k <= self.vectors.table_k
            and not options.candidate_ids
            and not options.exclude_ids
            and not options.nprobe
            and not options.ef_search
            and not options.k_factor
            and (self.vectors.table_exact or not options.exact)
            and options.filter.is_empty()
        ):
            hits = self._hits(table[0].tolist(), table[1].tolist(), k, set(), options.min_score)
            return SearchResult(hits, self.version, self.vectors.table_exact)
        vector = self.vectors.vectors(np.array([item_id], np.int64))
        return self._search(vector, options, k, {int(item_id)})

    def _weighted_sum(
        self, items: Sequence[tuple[int, float]], what: str, strict: bool
    ) -> tuple[np.ndarray, list[int], tuple[int, ...]]:
        """(sum of weight x vector over the known items, their ids, the unknown ids)."""
        for item_id, weight in items:
            if not math.isfinite(weight) or weight <= 0:
                raise InvalidArgument(f"{what} weight of item {item_id} expected > 0, got {weight}")
        found = self._known([i for i, _ in items], f"{what} item", strict)
        known = set(found.ids.tolist())
        pairs = [(i, w) for i, w in items if i in known]
        if not pairs:
            return np.zeros(self.vectors.dim, np.float64), [], found.missing
        ids = np.array([i for i, _ in pairs], np.int64)
        weights = np.array([w for _, w in pairs], np.float64)
        total = weights @ self.vectors.vectors(ids).astype(np.float64)  # float64: large weights stay finite
        return total, ids.tolist(), found.missing

    def similar_to_items(
        self,
        positive: Sequence[tuple[int, float]],
        negative: Sequence[tuple[int, float]] = (),
        options: SearchOptions = SearchOptions(),
    ) -> SearchResult:
        """Items like the weighted positives and unlike the negatives: normalize(sum w*v+ - sum w*v-)."""
        k = self._check_options(options)
        if not positive:
            raise InvalidArgument("positive expected at least one item, got none", "positive")
        self._check_ids(positive, "positive")
        self._check_ids(negative, "negative")
        plus, plus_ids, plus_missing = self._weighted_sum(positive, "positive", options.strict)
        if not plus_ids:
            raise NotFound(
                f"positive items expected at least one in bundle {self.version}, got none of {list(plus_missing)}"
            )
        minus, minus_ids, minus_missing = self._weighted_sum(negative, "negative", options.strict)
        q = plus - minus
        if not np.isfinite(q).all() or float(np.linalg.norm(q)) <= ZERO_QUERY_NORM * max(1.0, np.abs(q).max()):
            raise InvalidArgument("the weighted query (positives minus negatives) is the zero vector")
        exclude = set(plus_ids) | set(minus_ids)
        return self._search(self._normalized(q, self.vectors.dim), options, k, exclude, plus_missing + minus_missing)

    def search_vector(
        self, vector: Sequence[float] | np.ndarray, options: SearchOptions = SearchOptions()
    ) -> SearchResult:
        k = self._check_options(options)
        return self._search(self._outside(vector), options, k, set())

    def _check_image(self, data: bytes) -> None:
        if not data:
            raise InvalidArgument("image expected non-empty encoded bytes, got 0 bytes", "image")
        if len(data) > self.limits.max_image_bytes:
            raise ResourceExhausted(f"image expected at most {self.limits.max_image_bytes} bytes, got {len(data)}")
        if self.image_embedder is None:
            raise FailedPrecondition(
                f"image search is unavailable for bundle {self.version}: "
                f"{self.image_unavailable_reason or 'no embedder'}"
            )

    def search_image(
        self,
        data: bytes,
        options: SearchOptions = SearchOptions(),
        guard: CallGuard = UNGUARDED,
        mode: str = "auto",
    ) -> SearchResult:
        """The k posters most like an upload. ``mode``: ``whole`` (the upload is the poster), ``locate`` (look
        for the poster in candidate regions of the upload too), ``auto`` (regions only when the whole image
        is not a confident match). Every region is searched with the same options and filters; each item
        keeps its best score, and a hit found in a region carries that region's box."""
        k = self._check_options(options)
        self._check_image(data)
        assert self.image_embedder is not None
        guard.check("image search")
        answers: list[SearchResult] = []

        def search_windows(vectors: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            scores = np.full((len(vectors), kk), -np.inf, np.float32)
            ids = np.full((len(vectors), kk), -1, np.int64)
            for row, vector in enumerate(vectors):
                # windows come embedded (and whitened) by the bundle's QueryImage: already in the index's space
                answer = self._search(self._normalized(vector, self.vectors.dim), options, kk, set())
                answers.append(answer)
                scores[row, : len(answer.hits)] = [h.score for h in answer.hits]
                ids[row, : len(answer.hits)] = [h.item.item_id for h in answer.hits]
            return scores, ids

        found = self.image_embedder.search_image(data, k, search_windows, mode, guard)
        hits = []
        for j, (item_id, score, window) in enumerate(
            zip(found.hits.ids.tolist(), found.hits.scores.tolist(), found.hits.windows.tolist())
        ):
            row = self.items.row_or_none(item_id)
            if row is None:
                continue
            box = None
            if found.localised and window != 0:  # window 0 is the whole upload
                x0, y0, x1, y1 = found.box_of(j)
                box = (int(x0), int(y0), int(round(x1)), int(round(y1)))
            hits.append(Hit(self.items.item(row), float(score), box))
        first = answers[0] if answers else SearchResult([], self.version, True)
        return SearchResult(hits, self.version, all(a.exact for a in answers), first.missing_ids)

    def search(self, query: Query, guard: CallGuard = UNGUARDED) -> SearchResult:
        if isinstance(query, ItemQuery):
            return self.similar_to_item(query.item_id, query.options)
        if isinstance(query, ItemsQuery):
            return self.similar_to_items(query.positive, query.negative, query.options)
        if isinstance(query, VectorQuery):
            return self.search_vector(query.vector, query.options)
        if isinstance(query, ImageQuery):
            return self.search_image(query.data, query.options, guard, query.mode)
        raise InvalidArgument(f"query expected item, items, vector or image, got {type(query).__name__}")

    def batch(
        self, queries: Sequence[Query | SearchError], guard: CallGuard = UNGUARDED
    ) -> list[SearchResult | SearchError]:
        """Answer many queries, each with its own outcome: a result, or the error that query alone gets (its
        message names the position). Plain vector queries sharing options go through FAISS in one call.

        ``guard`` is checked before every query: a cancelled or expired call stops between items (the whole
        call fails then, as it does for an empty or oversized batch)."""
        if not queries:
            raise InvalidArgument("queries expected at least one, got none", "queries")
        if len(queries) > self.limits.max_batch:
            raise InvalidArgument(f"queries expected at most {self.limits.max_batch}, got {len(queries)}", "queries")
        results: list[SearchResult | SearchError | None] = [None] * len(queries)
        groups: dict[SearchOptions, list[tuple[int, np.ndarray, int]]] = {}
        for pos, query in enumerate(queries):
            guard.check(f"batch query {pos}")
            if isinstance(query, SearchError):  # refused while parsing: kept at its position
                results[pos] = query
                continue
            try:
                if isinstance(query, VectorQuery) and not query.options.candidate_ids:
                    k = self._check_options(query.options)
                    vector = self._outside(query.vector)  # before setdefault: a refused vector leaves no empty group
                    groups.setdefault(query.options, []).append((pos, vector, k))
                else:
                    results[pos] = self.search(query, guard)
            except QUERY_ERRORS as exc:
                results[pos] = type(exc)(f"query {pos}: {exc}", f"queries[{pos}].{exc.field}" if exc.field else "")
        for options, members in groups.items():
            try:
                scope, missing = self._scope(options)
                answers = self._search_many(
                    np.vstack([m[1] for m in members]),
                    options,
                    [m[2] for m in members],
                    [set(scope.excluded)] * len(members),
                    scope,
                )
            except QUERY_ERRORS as exc:
                for pos, _, _ in members:
                    results[pos] = type(exc)(f"query {pos}: {exc}", f"queries[{pos}].{exc.field}" if exc.field else "")
                continue
            for (pos, _, _), answer in zip(members, answers):
                results[pos] = replace(answer, missing_ids=missing)
        return [r for r in results if r is not None]

    def find_items(self, text: str, limit: int = 0, offset: int = 0) -> TitlePage:
        """Title search (server.titles: articles, accents, punctuation, a year, typos), one page of ``limit``
        items from ``offset``, best first."""
        if not text.strip():
            raise InvalidArgument("query expected a non-empty title fragment, got an empty string", "query")
        if len(text.strip()) > self.limits.max_query_chars:
            raise InvalidArgument(
                f"query expected at most {self.limits.max_query_chars} characters, got {len(text.strip())}"
            )
        limit = limit or self.limits.default_find_limit
        if limit < 0 or limit > self.limits.max_find_limit:
            raise InvalidArgument(f"limit expected 1..{self.limits.max_find_limit}, got {limit}", "limit")
        if offset < 0:
            raise InvalidArgument(f"page offset expected >= 0, got {offset}", "page_token")
        try:
            matches = self.titles.search(text, offset, limit)
        except ValueError as exc:
            raise InvalidArgument(str(exc), "query") from exc
        return TitlePage([self.items.item(r) for r in matches.rows], matches.total, matches.next_offset)

    def get_posters(self, item_ids: Sequence[int]) -> PostersResult:
        """Thumbnails by id, in request order; ids without one are listed as missing."""
        if not item_ids:
            raise InvalidArgument("item_ids expected at least one id, got none", "item_ids")
        if len(item_ids) > self.limits.max_posters:
            raise InvalidArgument(
                f"item_ids expected at most {self.limits.max_posters} ids, got {len(item_ids)}", "item_ids"
            )
        if self.thumbnails is None:
            raise FailedPrecondition(
                f"bundle {self.version} stores no poster thumbnails (built with --no-thumbnails or before they "
                "existed); rebuild it to serve posters"
            )
        found = self.items.lookup(item_ids, "item")
        posters: list[PosterImage] = []
        missing = list(found.missing)
        for item_id, row in zip(found.ids.tolist(), found.rows.tolist()):
            jpeg = self.thumbnails.get(row)
            if jpeg is None:
                missing.append(item_id)
            else:
                posters.append(PosterImage(item_id, jpeg, *jpeg_size(jpeg)))
        return PostersResult(posters, tuple(missing))

    def get_items(self, item_ids: Sequence[int], strict: bool = False) -> ItemsResult:
        """Items by id in request order (duplicates once); unknown ids are listed, or NotFound with ``strict``."""
        if not item_ids:
            raise InvalidArgument("item_ids expected at least one id, got none", "item_ids")
        self._check_ids(item_ids, "item_ids")
        found = self._known(item_ids, "item", strict)
        return ItemsResult([self.items.item(int(r)) for r in found.rows], found.missing)

    def info(self) -> IndexSummary:
        return IndexSummary(
            bundle_version=self.version,
            model=self.manifest.model,
            dimension=self.dim,
            index_type=self.index_type,
            item_count=self.item_count,
            failure_count=self.manifest.failure_count,
            default_nprobe=self.vectors.default_nprobe,
            neighbour_table_k=self.vectors.table_k,
            image_search=self.image_embedder is not None,
            loaded_at=self.loaded_at,
            genres=tuple(self.items.genre_names),
            year_min=self.items.year_range[0],
            year_max=self.items.year_range[1],
            has_ratings=self.items.has_ratings,
            has_posters=self.thumbnails is not None,
            thumbnail_width=self.manifest.thumbnails.width if self.manifest.thumbnails else 0,
            thumbnail_height=self.manifest.thumbnails.height if self.manifest.thumbnails else 0,
        )
