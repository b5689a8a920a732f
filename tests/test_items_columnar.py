"""The columnar item store (issue #13, item 5): lookups, items and filters against plain oracles built from the
source DataFrame (a dict for ids, per-row Python for items, brute-force pandas for filters), on seeded catalogs
with unicode titles, empty and unordered genre lists, missing years and ids, ids in and out of order; and
the memory it keeps: the text itself plus a few bytes per row, no Python object per row."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from indexer.bundle.manifest import Manifest
from indexer.bundle.reader import _read_items
from indexer.catalog import ITEM_COLUMNS
from server.columns import StringColumn, TagSetColumn, narrow_ints
from server.errors import InvalidArgument, NotFound
from server.items import INT64_MAX, ItemStore
from server.titles import TitleIndex, parse_title
from server.types import Filter, Item
from tests.title_catalog import synthetic_titles

SEED = 13
ROWS = 3000
FILTERS = 150
SPECIAL_TITLES = [
    "Toy Story (1995)",
    "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "千と千尋の神隠し (2001)",
    "🎬 Émoji: the Film (2020)",
    "שלום עולם (1999)",
    "Cafe\u0301 Society (2016)",  # a combining accent, kept as is
    "",
    "NA",
    "  leading and trailing spaces  ",
    'Quote "inside", comma (1990)',
    "Line\nbreak (1980)",
    "Pipe | in title",
]
GENRE_NAMES = ["Action", "Comedy", "Drama", "Sci-Fi", "Ciência", "(no genres listed)", "Film-Noir", "Ação"]
LETTERS = list("abcdefghijklmnopqrstuvwxyzéøßñçü") + ["日", "本", "😀", " "]
BYTES_PER_ROW_BESIDES_TEXT = 64  # ids, offsets, genre code and the integer columns, at their widest
FIXED_BYTES = 256 * 1024  # the store's own few objects: genre tuples and names, dicts, array headers


def _genres_field(rng: np.random.Generator) -> str:
    """A genres field as catalogs write them, and some they should not (empty parts, repeats, any order)."""
    kind = rng.integers(8)
    if kind == 0:
        return ""
    names = list(rng.choice(GENRE_NAMES, size=int(rng.integers(1, 4)), replace=False))
    if kind == 1:
        return "|".join(names + [names[0]])  # a repeat
    if kind == 2:
        return "||".join(names)  # empty parts
    return "|".join(names if kind < 5 else sorted(names))


def catalog(n: int, order: str, ratings: str, seed: int = SEED) -> pd.DataFrame:
    """A seeded items table with the bundle's columns and dtypes (before any CSV round trip)."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[0, INT64_MAX], rng.choice(2**40, size=n - 2, replace=False) + 1])
    ids = np.sort(ids) if order == "sorted" else rng.permutation(ids)
    lengths = rng.integers(1, 30, size=n)
    letters = "".join(rng.choice(LETTERS, size=int(lengths.sum())))
    ends = np.cumsum(lengths).tolist()
    titles = (SPECIAL_TITLES + [letters[a:b] for a, b in zip([0, *ends], ends)][len(SPECIAL_TITLES) :])[:n]

    def nullable(values: np.ndarray, p_missing: float) -> pd.Series:
        return pd.Series(values, dtype="Int64").mask(rng.random(n) < p_missing)

    counts = {"all": 0.0, "some": 0.3, "none": 1.0}[ratings]
    frame = pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": pd.Series(titles, dtype=str),
            "genres": pd.Series([_genres_field(rng) for _ in range(n)], dtype=str),
            "imdb_id": nullable(rng.integers(1, 10_000_000, size=n), 0.1),
            "tmdb_id": nullable(rng.integers(1, 2**40, size=n), 0.1),  # wider than int32
            "poster": pd.Series([f"posters/{i}/ø {i}.jpg" if i % 7 else "" for i in ids.tolist()], dtype=str),
            "year": nullable(rng.integers(1890, 2030, size=n), 0.15),
            "rating_count": nullable(rng.integers(0, 5000, size=n), counts),
        }
    )
    return frame[list(ITEM_COLUMNS)]


def as_loaded(frame: pd.DataFrame, how: str, tmp_path: Path) -> pd.DataFrame:
    """``frame`` as the store receives it: read back from items.csv by the bundle reader, or with object
    string columns (what pandas 2 gives)."""
    if how == "object":
        return frame.astype({"title": object, "genres": object, "poster": object})
    path = tmp_path / "items.csv"
    frame.to_csv(path, index=False)
    return _read_items(path, cast(Manifest, SimpleNamespace(item_count=len(frame))))


def expected_item(frame: pd.DataFrame, row: int) -> Item:
    """What the store must return for a row, straight from the source table (unknown integers are 0)."""
    r = frame.iloc[row]

    def known(value: Any) -> int:
        return 0 if pd.isna(value) else int(value)

    genres = tuple(g for g in r["genres"].split("|") if g)
    return Item(
        int(r["item_id"]),
        r["title"],
        genres,
        r["poster"],
        known(r["imdb_id"]),
        known(r["tmdb_id"]),
        known(r["year"]),
        known(r["rating_count"]),
    )


@pytest.fixture(params=[("sorted", "reader", "some"), ("shuffled", "reader", "all"), ("shuffled", "object", "none")])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[pd.DataFrame, ItemStore]:
    order, how, ratings = request.param
    frame = catalog(ROWS, order, ratings)
    return frame, ItemStore(as_loaded(frame, how, tmp_path), "v1")


def test_items_round_trip_exactly(case: tuple[pd.DataFrame, ItemStore]) -> None:
    frame, store = case
    assert len(store) == len(frame)
    for row in range(len(frame)):
        want = expected_item(frame, row)
        got = store.item(row)
        assert tuple(got) == tuple(want), row
        assert type(got.item_id) is int and type(got.year) is int and type(got.rating_count) is int
    assert store.titles.tolist() == frame["title"].tolist()
    assert list(store.posters) == frame["poster"].tolist()
    known_years = frame["year"].dropna()
    assert store.year_range == (int(known_years.min()), int(known_years.max()))
    assert store.has_ratings == bool(frame["rating_count"].notna().any())
    every = {g for field in frame["genres"] for g in field.split("|") if g}
    assert store.genre_names == sorted(every)


def test_lookups_agree_with_a_dict(case: tuple[pd.DataFrame, ItemStore]) -> None:
    frame, store = case
    oracle = {int(i): row for row, i in enumerate(frame["item_id"])}
    rng = np.random.default_rng(SEED)
    present = [int(i) for i in rng.choice(frame["item_id"].to_numpy(), size=200)]  # with repeats
    absent = [i + 1 for i in present if i + 1 not in oracle][:100] + [2**63, 2**64, 10**30]
    for _ in range(50):
        query = [
            int(x)
            for x in rng.permutation(np.array(present[:30] + absent[:17] + absent[-3:] + present[:5], dtype=object))
        ]
        found = store.lookup(query)
        unique = list(dict.fromkeys(query))
        assert found.ids.tolist() == [i for i in unique if i in oracle]
        assert found.rows.tolist() == [oracle[i] for i in unique if i in oracle]
        assert found.missing == tuple(i for i in unique if i not in oracle)
        assert found.ids.dtype == found.rows.dtype == np.int64
    for item_id in present + absent:
        assert store.row_or_none(item_id) == oracle.get(item_id)
        assert store.has(item_id) == (item_id in oracle)
        if item_id in oracle:
            assert store.row_of(item_id) == oracle[item_id]
        else:
            with pytest.raises(NotFound, match=f"item {item_id} is not in bundle v1"):
                store.row_of(item_id)
    in_domain = np.array([i for i in present + absent if i <= INT64_MAX], np.int64)
    assert store.rows_of(in_domain).tolist() == [oracle.get(int(i), -1) for i in in_domain]
    assert store.row_of(INT64_MAX) == oracle[INT64_MAX] and store.row_of(0) == oracle[0]


def test_negative_ids_are_invalid(case: tuple[pd.DataFrame, ItemStore]) -> None:
    _, store = case
    with pytest.raises(InvalidArgument, match="candidate id expected a non-negative int64, got -3"):
        store.lookup([0, -3, -4], "candidate")
    with pytest.raises(InvalidArgument, match="expected a non-negative int64, got -1"):
        store.row_of(-1)
    assert store.row_or_none(-1) is None and not store.has(-1)


def genre_sets(frame: pd.DataFrame) -> list[set[str]]:
    return [{g for g in field.split("|") if g} for field in frame["genres"]]


def oracle_mask(frame: pd.DataFrame, genres: list[set[str]], flt: Filter) -> np.ndarray:
    """Brute force over the source table: each condition written out in pandas, row by row for genres."""
    keep = pd.Series(True, index=frame.index)
    if flt.genres_any:
        keep &= np.array([bool(gs & set(flt.genres_any)) for gs in genres], bool)
    if flt.genres_all:
        keep &= np.array([set(flt.genres_all) <= gs for gs in genres], bool)
    if flt.genres_none:
        keep &= np.array([not gs & set(flt.genres_none) for gs in genres], bool)
    if flt.year_min is not None or flt.year_max is not None:
        year = frame["year"]
        lo = flt.year_min if flt.year_min is not None else -(2**62)
        hi = flt.year_max if flt.year_max is not None else 2**62
        keep &= (year.notna() & (year >= lo) & (year <= hi)).fillna(False).astype(bool)
    if flt.min_ratings is not None:
        keep &= frame["rating_count"].fillna(0) >= flt.min_ratings
    if flt.allow_ids:
        keep &= frame["item_id"].isin(flt.allow_ids)
    if flt.deny_ids:
        keep &= ~frame["item_id"].isin(flt.deny_ids)
    return keep.to_numpy(bool)


def random_filter(rng: np.random.Generator, frame: pd.DataFrame, ratings: bool) -> Filter:
    def some_genres() -> tuple[str, ...]:
        return tuple(rng.choice(GENRE_NAMES, size=int(rng.integers(1, 3)), replace=False)) if rng.random() < 0.4 else ()

    def some_ids() -> tuple[int, ...]:
        if rng.random() > 0.3:
            return ()
        known = rng.choice(frame["item_id"].to_numpy(), size=int(rng.integers(1, 50))).tolist()
        return tuple(known + [7, 2**50 + 3])  # and ids that are not items

    year_min = int(rng.integers(1880, 2040)) if rng.random() < 0.4 else None
    year_max = int(rng.integers(year_min or 1880, 2040)) if rng.random() < 0.4 else None
    min_ratings = int(rng.integers(0, 6000)) if ratings and rng.random() < 0.4 else None
    return Filter(some_genres(), some_genres(), some_genres(), year_min, year_max, min_ratings, some_ids(), some_ids())


def test_filters_agree_with_pandas(case: tuple[pd.DataFrame, ItemStore]) -> None:
    frame, store = case
    rng = np.random.default_rng(SEED)
    genres = genre_sets(frame)
    passing = []
    for _ in range(FILTERS):
        flt = random_filter(rng, frame, store.has_ratings)
        got = store.mask(flt)
        assert got.dtype == bool and np.array_equal(got, oracle_mask(frame, genres, flt)), flt
        passing.append(int(got.sum()))
    assert min(passing) < len(frame) // 10 and max(passing) == len(frame)  # the filters were not all trivial


def test_filter_errors(case: tuple[pd.DataFrame, ItemStore]) -> None:
    _, store = case
    with pytest.raises(
        InvalidArgument, match=r"filter.genres_all expected genres of this bundle .* got unknown \['X'\]"
    ):
        store.mask(Filter(genres_all=("Drama", "X")))
    with pytest.raises(InvalidArgument, match="year_min expected <= year_max, got 2001 > 2000"):
        store.mask(Filter(year_min=2001, year_max=2000))
    with pytest.raises(InvalidArgument, match="filter.deny_ids id expected a non-negative int64, got -2"):
        store.mask(Filter(deny_ids=(1, -2)))
    if not store.has_ratings:
        with pytest.raises(InvalidArgument, match="expected a bundle built with ratings.csv"):
            store.mask(Filter(min_ratings=1))


def test_duplicate_ids_are_refused() -> None:
    frame = catalog(50, "shuffled", "some")
    frame.loc[7, "item_id"] = frame.loc[31, "item_id"]
    with pytest.raises(ValueError, match=f"item ids expected unique, got {frame.loc[31, 'item_id']} more than once"):
        ItemStore(frame, "v1")


def test_an_empty_store(tmp_path: Path) -> None:
    store = ItemStore(as_loaded(catalog(2, "sorted", "none").iloc[:0], "reader", tmp_path), "empty")
    assert len(store) == 0 and store.genre_names == [] and store.year_range == (0, 0)
    assert store.lookup([0, 5]).missing == (0, 5) and store.row_or_none(0) is None
    assert store.rows_of(np.array([0, 1], np.int64)).tolist() == [-1, -1]
    assert store.mask(Filter(year_min=1990)).shape == (0,)


@pytest.mark.parametrize("slicing", ["whole", "sliced", "chunked", "with missing"])
def test_string_column_from_any_series(slicing: str) -> None:
    values = ["α", "", "bc", "日本語", "😀 x", "last"]
    if slicing == "whole":
        series, want = pd.Series(values, dtype=str), values
    elif slicing == "sliced":  # an Arrow array that starts inside its buffers
        series, want = pd.Series(values, dtype="string[pyarrow]").iloc[2:5], values[2:5]
    elif slicing == "chunked":
        parts = [pd.Series(values[:3], dtype="string[pyarrow]"), pd.Series(values[3:], dtype="string[pyarrow]")]
        series, want = pd.concat(parts, ignore_index=True), values
    else:
        series, want = pd.Series(["a", None, np.nan, "b"], dtype=object), ["a", "", "", "b"]
    column = StringColumn.from_series(series)
    assert len(column) == len(want) and [column[i] for i in range(len(want))] == want and column.tolist() == want
    assert "bc" in column or "bc" not in want


def test_tag_sets_keep_order_repeats_and_empties() -> None:
    fields = ["B|A", "A|B", "", "A||A", "C", "B|A"]
    tags = TagSetColumn(pd.Series(fields, dtype=str), "|")
    assert [tags[i] for i in range(len(fields))] == [("B", "A"), ("A", "B"), (), ("A", "A"), ("C",), ("B", "A")]
    assert tags.names == ["A", "B", "C"] and tags.column("B") == 1 and tags.column("Z") is None
    assert tags.any_of([0, 2]).tolist() == [True, True, False, True, True, True]
    assert tags.all_of([0, 1]).tolist() == [True, True, False, False, False, True]


def test_narrow_ints_keep_values() -> None:
    cases = [
        ([0, 127], np.int8),
        ([-1, 2**15], np.int32),
        ([-(2**20), 5], np.int32),
        ([0, 2**40], np.int64),
        ([], np.int8),
    ]
    for values, dtype in cases:
        out = narrow_ints(np.array(values, np.int64))
        assert out.dtype == dtype and out.tolist() == values


def test_memory_is_the_text_plus_a_few_bytes_per_row() -> None:
    """No Python object per row: a str per title or poster (49+ bytes each), a tuple per genre list or a dict
    entry per id would each break this bound."""
    n = 10_000
    frame = catalog(n, "shuffled", "some")
    text = sum(len(s.encode()) for column in ("title", "poster") for s in frame[column])
    gc.collect()
    tracemalloc.start()
    try:
        store = ItemStore(frame, "v1")
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.nbytes <= kept <= text + BYTES_PER_ROW_BESIDES_TEXT * n + FIXED_BYTES, (kept, text)


def test_title_index_keys_from_the_compact_offsets() -> None:
    """The title index keeps only key starts (a key ends one separator before the next starts): every key
    read back from them is the title's parsed key, in row order, from a column of the store."""
    titles = [*SPECIAL_TITLES, *synthetic_titles(500, seed=SEED)]
    index = TitleIndex(StringColumn.from_strings(titles))
    expected = [key for title in titles for key in parse_title(title).keys]
    assert [index._key(k) for k in range(len(expected))] == expected
    assert len(index) == len(titles)
