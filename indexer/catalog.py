"""Poster catalogs: MovieLens CSVs + a poster folder, or a bare folder of images.

Produces an items table (one row per movie with a poster file) and a list of
problems (missing posters, duplicate or malformed ids) that goes into the
bundle's failures report. Nothing here decodes images.
"""
from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from indexer.errors import CatalogError
from indexer.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_id", "title", "genres", "imdb_id", "tmdb_id", "poster")
PATTERN_FIELDS = ("movieId", "imdbId", "tmdbId")
DEFAULT_PATTERN = "{movieId}"
RATINGS_CHUNK_ROWS = 2_000_000


@dataclass(frozen=True)
class CatalogConfig:
    """Where a catalog lives. With ``movies_csv`` None, ``posters_dir`` is a bare folder."""

    posters_dir: Path
    movies_csv: Path | None = None
    links_csv: Path | None = None
    ratings_csv: Path | None = None
    min_ratings: int = 0  # keep movies rated more than this many times (needs ratings_csv)
    # str.format pattern over movieId/imdbId/tmdbId; without an extension any image extension matches
    pattern: str = DEFAULT_PATTERN


@dataclass(frozen=True)
class Problem:
    """One catalog row or file that will not be indexed, and why."""

    item_id: int | None
    file: str
    stage: str
    reason: str


@dataclass
class Catalog:
    items: pd.DataFrame  # ITEM_COLUMNS; poster is relative to posters_dir
    posters_dir: Path
    problems: list[Problem] = field(default_factory=list)

    def poster_paths(self) -> list[Path]:
        return [self.posters_dir / p for p in self.items["poster"]]


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": pd.Series(dtype="int64"),
        "title": pd.Series(dtype="object"),
        "genres": pd.Series(dtype="object"),
        "imdb_id": pd.Series(dtype="Int64"),
        "tmdb_id": pd.Series(dtype="Int64"),
        "poster": pd.Series(dtype="object"),
    })


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CatalogError(f"{path}: columns expected {list(required)}, missing {missing} (got {list(df.columns)})")
    return df


def _to_int_ids(raw: pd.Series) -> pd.Series:
    """Parse ids that may be '862', '862.0', ' 862 ' or blank; non-integers become NA."""
    num = pd.to_numeric(raw.astype(str).str.strip(), errors="coerce")
    ok = num.notna() & np.isfinite(num) & (num == np.round(num)) & (num.abs() < 2**62)
    out = pd.Series(pd.NA, index=raw.index, dtype="Int64")
    out[ok] = num[ok].astype("int64")
    return out


def _dedupe(df: pd.DataFrame, what: str, path: Path, problems: list[Problem]) -> pd.DataFrame:
    dup = df["item_id"].duplicated(keep="first")
    for item_id in df.loc[dup, "item_id"]:
        problems.append(Problem(int(item_id), str(path), "catalog", f"duplicate movieId in {what}; first row kept"))
    return df[~dup]


def load_movies(config: CatalogConfig, problems: list[Problem]) -> pd.DataFrame:
    """movies.csv (+ links.csv, + popularity filter) as an items table without posters."""
    if config.movies_csv is None:
        raise CatalogError("movies.csv is required for MovieLens metadata")
    movies = _read_csv(config.movies_csv, ("movieId", "title"))
    ids = _to_int_ids(movies["movieId"])
    for raw in movies.loc[ids.isna(), "movieId"]:
        problems.append(Problem(None, str(config.movies_csv), "catalog", f"movieId {raw!r} is not an integer; row skipped"))
    movies = movies.assign(item_id=ids)[ids.notna()]
    movies = movies.assign(item_id=movies["item_id"].astype("int64"))
    movies = _dedupe(movies, "movies.csv", config.movies_csv, problems)
    genres = movies["genres"] if "genres" in movies.columns else pd.Series("", index=movies.index)
    out = pd.DataFrame({"item_id": movies["item_id"], "title": movies["title"].astype(object),
                        "genres": genres.astype(object).replace("(no genres listed)", "")})
    if config.links_csv is not None:
        links = _read_csv(config.links_csv, ("movieId",))
        links = links.assign(item_id=_to_int_ids(links["movieId"]))
        links = links[links["item_id"].notna()].assign(item_id=lambda d: d["item_id"].astype("int64"))
        links = _dedupe(links, "links.csv", config.links_csv, problems)
        links = pd.DataFrame({
            "item_id": links["item_id"],
            "imdb_id": _to_int_ids(links["imdbId"]) if "imdbId" in links else pd.Series(pd.NA, dtype="Int64"),
            "tmdb_id": _to_int_ids(links["tmdbId"]) if "tmdbId" in links else pd.Series(pd.NA, dtype="Int64"),
        })
        out = out.merge(links, on="item_id", how="left")
    else:
        out = out.assign(imdb_id=pd.Series(pd.NA, index=out.index, dtype="Int64"),
                         tmdb_id=pd.Series(pd.NA, index=out.index, dtype="Int64"))
    if config.min_ratings > 0:
        if config.ratings_csv is None:
            raise CatalogError("--min-ratings needs ratings.csv (--ratings)")
        counts = _rating_counts(config.ratings_csv)
        keep = out["item_id"].map(counts).fillna(0) > config.min_ratings
        log.info("popularity filter: %d of %d movies rated more than %d times",
                 int(keep.sum()), len(out), config.min_ratings)
        out = out[keep]
    return out.reset_index(drop=True)


def _rating_counts(path: Path) -> pd.Series:
    counts: pd.Series | None = None
    try:
        for chunk in pd.read_csv(path, usecols=["movieId"], dtype=str, chunksize=RATINGS_CHUNK_ROWS):
            c = _to_int_ids(chunk["movieId"]).dropna().astype("int64").value_counts()
            counts = c if counts is None else counts.add(c, fill_value=0)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CatalogError(f"cannot read ratings {path}: {exc}") from exc
    return counts if counts is not None else pd.Series(dtype="int64")


def _pattern_fields(pattern: str) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise CatalogError(f"poster pattern {pattern!r} is not a valid format string: {exc}") from exc
    bad = [n for n in names if n.split(":")[0] not in PATTERN_FIELDS]
    if not names or bad:
        raise CatalogError(f"poster pattern {pattern!r}: fields expected among {PATTERN_FIELDS}, got {names}")
    return names


def _list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise CatalogError(f"poster folder {folder} does not exist or is not a directory")
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _resolve_posters(items: pd.DataFrame, config: CatalogConfig, problems: list[Problem]) -> pd.DataFrame:
    fields = _pattern_fields(config.pattern)
    names = _list_images(config.posters_dir)
    exact = {n: n for n in names}
    exact.update({n.lower(): n for n in names if n.lower() not in exact})
    by_stem: dict[str, str] = {}
    for ext in IMAGE_EXTENSIONS:  # preference order
        for n in names:
            stem, dot, suffix = n.rpartition(".")
            if dot and f".{suffix.lower()}" == ext:
                by_stem.setdefault(stem, n)
    has_ext = Path(config.pattern).suffix.lower() in IMAGE_EXTENSIONS
    column = {"movieId": "item_id", "imdbId": "imdb_id", "tmdbId": "tmdb_id"}
    posters: list[str] = []
    for row in items.itertuples(index=False):
        values = {f: getattr(row, column[f]) for f in PATTERN_FIELDS}
        blank = [f for f in fields if pd.isna(values[f.split(":")[0]])]
        if blank:
            problems.append(Problem(int(row.item_id), "", "catalog",
                                    f"{blank[0]} is blank; poster pattern {config.pattern!r} needs it"))
            posters.append("")
            continue
        name = config.pattern.format(**{k: int(v) if not pd.isna(v) else "" for k, v in values.items()})
        found = (exact.get(name) or exact.get(name.lower())) if has_ext else by_stem.get(name)
        if found is None:
            expected = name if has_ext else f"{name}.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}"
            problems.append(Problem(int(row.item_id), str(config.posters_dir / name), "catalog",
                                    f"poster file not found: expected {expected}"))
            posters.append("")
        else:
            posters.append(found)
    return items.assign(poster=posters)


def _bare_folder(config: CatalogConfig, problems: list[Problem]) -> pd.DataFrame:
    rows = []
    for name in _list_images(config.posters_dir):
        stem, _, suffix = name.rpartition(".")
        if f".{suffix.lower()}" not in IMAGE_EXTENSIONS or not stem:
            continue
        digits = re.findall(r"\d+", stem)
        if not digits:
            problems.append(Problem(None, name, "catalog", "no digits in the file name to use as item id"))
            continue
        rows.append({"item_id": int(digits[-1]), "title": stem, "genres": "", "poster": name})
    items = pd.DataFrame(rows, columns=["item_id", "title", "genres", "poster"]).astype({"item_id": "int64"})
    dup = items["item_id"].duplicated(keep="first")
    for row in items[dup].itertuples(index=False):
        problems.append(Problem(int(row.item_id), row.poster, "catalog",
                                f"duplicate item id {row.item_id} (from the file name); first file kept"))
    items = items[~dup]
    return items.assign(imdb_id=pd.Series(pd.NA, index=items.index, dtype="Int64"),
                        tmdb_id=pd.Series(pd.NA, index=items.index, dtype="Int64"))


def load_catalog(config: CatalogConfig) -> Catalog:
    """Load the catalog; raise CatalogError only when nothing usable can be read."""
    problems: list[Problem] = []
    if config.movies_csv is None:
        items = _bare_folder(config, problems)
    else:
        items = _resolve_posters(load_movies(config, problems), config, problems)
        items = items[items["poster"] != ""]
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)[list(ITEM_COLUMNS)]
    log.info("catalog: %d items with posters, %d problems", len(items), len(problems))
    return Catalog(items=items, posters_dir=config.posters_dir, problems=problems)
