"""Poster catalogs: MovieLens CSVs + a poster folder, or a bare folder of images.

Produces an items table (one row per movie with a poster file) and a list of
problems (missing posters, duplicate or malformed ids) that goes into the
bundle's failures report. Nothing here decodes images.
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from indexer.errors import CatalogError
from indexer.ids import parse_id_series, parse_id_text
from indexer.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_id", "title", "genres", "imdb_id", "tmdb_id", "poster", "year", "rating_count")
# MovieLens titles end with the release year: "Toy Story (1995)", "Babylon 5 (1994-1998)"
TITLE_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
PATTERN_FIELDS = ("movieId", "imdbId", "tmdbId")
DEFAULT_PATTERN = "{movieId}"
RATINGS_CHUNK_ROWS = 2_000_000
DEFAULT_ENCODING = "utf-8"
PATTERN_SAMPLE_ID = 1  # a pattern must format this integer for every field, or it is refused up front
_FILE_NAME_DIGITS = re.compile(r"[0-9]+")
_SHOWN_CHARS = 40  # raw values quoted in problems are cut to this length


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
    encoding: str = DEFAULT_ENCODING  # of every catalog CSV; MovieLens exports are sometimes Latin-1


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
    return pd.DataFrame(
        {
            "item_id": pd.Series(dtype="int64"),
            "title": pd.Series(dtype="object"),
            "genres": pd.Series(dtype="object"),
            "imdb_id": pd.Series(dtype="Int64"),
            "tmdb_id": pd.Series(dtype="Int64"),
            "poster": pd.Series(dtype="object"),
            "year": pd.Series(dtype="Int64"),
            "rating_count": pd.Series(dtype="Int64"),
        }
    )


def title_years(titles: pd.Series) -> pd.Series:
    """The release year at the end of each MovieLens title, or NA."""
    return pd.to_numeric(titles.astype(str).str.extract(TITLE_YEAR, expand=False), errors="coerce").astype("Int64")


def _codec(encoding: str) -> str:
    """The codec to read with: a UTF-8 byte-order mark is skipped; an unknown name is a CatalogError."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CatalogError(
            f"catalog encoding expected a Python codec name (utf-8, latin-1, cp1252, ...), got {encoding!r}"
        ) from None
    return "utf-8-sig" if name == "utf-8" else encoding


def _decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> CatalogError:
    """A CatalogError naming the file, the first undecodable line and its byte offset."""
    decoder = codecs.getincrementaldecoder(_codec(encoding))()
    offset = 0
    try:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    decoder.decode(line)
                except UnicodeDecodeError as bad:
                    return CatalogError(
                        f"{path}: line {number} (byte {offset + max(bad.start, 0)}) is not valid {encoding}: "
                        f"{bad.reason} (byte {bad.object[bad.start : bad.start + 1]!r}); if the file is Latin-1 "
                        f"(ISO-8859-1) or Windows-1252, pass its encoding (posters-index build --encoding latin-1)"
                    )
                offset += len(line)
    except OSError:
        pass
    return CatalogError(f"{path} is not valid {encoding}: {exc}; pass its encoding (e.g. --encoding latin-1)")


def _read_csv(path: Path, required: tuple[str, ...], encoding: str, problems: list[Problem]) -> pd.DataFrame:
    """A CSV as strings, indexed by each row's first line number. Rows whose field count differs from
    the header's are reported (file and line) and skipped; blank lines are ignored."""
    codec = _codec(encoding)
    rows: list[list[str]] = []
    lines: list[int] = []
    reader = None
    try:
        with path.open("r", encoding=codec, newline="") as fh:
            reader = csv.reader(fh)
            header = next((row for row in reader if row), None)  # blank lines before the header are skipped
            if not header:
                raise CatalogError(f"{path} is empty: a header row expected (columns {list(required)})")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise CatalogError(f"{path}: column names expected unique, got {header}")
            start = reader.line_num + 1
            for row in reader:
                end = reader.line_num
                where = f"line {start}" if start == end else f"lines {start}-{end}"
                if row and len(row) != len(header):
                    problems.append(
                        Problem(
                            None,
                            str(path),
                            "catalog",
                            f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}; row skipped",
                        )
                    )
                elif row:
                    rows.append(row)
                    lines.append(start)
                start = end + 1
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 0
        raise CatalogError(f"{path}: line {line}: malformed CSV: {exc}") from None
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise CatalogError(f"{path}: columns expected {list(required)}, missing {missing} (got {header})")
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, dtype="int64", name="line"), dtype=object)


def _shown(raw: object) -> str:
    text = str(raw)
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def _to_int_ids(raw: pd.Series) -> tuple[pd.Series, dict[object, str]]:
    """Parse ids that may be '862', '862.0', ' 862 ' or blank (indexer.ids, exact, never via float).

    Returns the ids (Int64, NA where invalid) and, by index label, why each invalid one is not an id.
    """
    parsed = parse_id_series(raw)
    out = pd.Series(pd.array(parsed.ids, dtype="Int64"), index=raw.index)
    out[~parsed.ok] = pd.NA
    return out, {raw.index[pos]: reason for pos, reason in parsed.reasons.items()}


def _dedupe(df: pd.DataFrame, what: str, path: Path, problems: list[Problem]) -> pd.DataFrame:
    dup = df["item_id"].duplicated(keep="first")
    for item_id in df.loc[dup, "item_id"]:
        problems.append(Problem(int(item_id), str(path), "catalog", f"duplicate movieId in {what}; first row kept"))
    return df[~dup]


def _valid_ids(df: pd.DataFrame, column: str, path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Rows of ``df`` whose ``column`` is an item id, as int64 ``item_id``; the others are reported."""
    ids, reasons = _to_int_ids(df[column])
    for line, reason in reasons.items():
        problems.append(
            Problem(
                None,
                str(path),
                "catalog",
                f"{column} {_shown(df.at[line, column])} {reason}; row skipped (line {line})",
            )
        )
    return df.assign(item_id=ids)[ids.notna()].astype({"item_id": "int64"})


def _link_ids(links: pd.DataFrame, column: str, path: Path, problems: list[Problem]) -> pd.Series:
    """imdbId/tmdbId as Int64; a non-blank value that is not an id is reported and left blank."""
    if column not in links:
        return pd.Series(pd.NA, index=links.index, dtype="Int64")
    ids, reasons = _to_int_ids(links[column])
    for line, reason in reasons.items():
        if str(links.at[line, column]).strip():
            problems.append(
                Problem(
                    int(links.at[line, "item_id"]),
                    str(path),
                    "catalog",
                    f"{column} {_shown(links.at[line, column])} {reason}; left blank (line {line})",
                )
            )
    return ids


def load_movies(config: CatalogConfig, problems: list[Problem]) -> pd.DataFrame:
    """movies.csv (+ links.csv, + popularity filter) as an items table without posters."""
    if config.movies_csv is None:
        raise CatalogError("movies.csv is required for MovieLens metadata")
    movies = _read_csv(config.movies_csv, ("movieId", "title"), config.encoding, problems)
    movies = _valid_ids(movies, "movieId", config.movies_csv, problems)
    movies = _dedupe(movies, "movies.csv", config.movies_csv, problems)
    genres = movies["genres"] if "genres" in movies.columns else pd.Series("", index=movies.index)
    out = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "title": movies["title"].astype(object),
            "genres": genres.astype(object).replace("(no genres listed)", ""),
        }
    )
    if config.links_csv is not None:
        links = _read_csv(config.links_csv, ("movieId",), config.encoding, problems)
        links = _valid_ids(links, "movieId", config.links_csv, problems)
        links = _dedupe(links, "links.csv", config.links_csv, problems)
        links = pd.DataFrame(
            {
                "item_id": links["item_id"],
                "imdb_id": _link_ids(links, "imdbId", config.links_csv, problems),
                "tmdb_id": _link_ids(links, "tmdbId", config.links_csv, problems),
            }
        )
        out = out.merge(links, on="item_id", how="left")
    else:
        out = out.assign(
            imdb_id=pd.Series(pd.NA, index=out.index, dtype="Int64"),
            tmdb_id=pd.Series(pd.NA, index=out.index, dtype="Int64"),
        )
    out = out.assign(year=title_years(out["title"]), rating_count=pd.Series(pd.NA, index=out.index, dtype="Int64"))
    if config.min_ratings > 0 and config.ratings_csv is None:
        raise CatalogError("--min-ratings needs ratings.csv (--ratings)")
    if config.ratings_csv is not None:  # the popularity column of filters, and the --min-ratings filter
        counts = _rating_counts(config.ratings_csv, config.encoding, problems)
        out = out.assign(rating_count=out["item_id"].map(counts).fillna(0).astype("Int64"))
    if config.min_ratings > 0:
        keep = out["rating_count"].fillna(0) > config.min_ratings
        log.info(
            "popularity filter: %d of %d movies rated more than %d times", int(keep.sum()), len(out), config.min_ratings
        )
        out = out[keep]
    return out.reset_index(drop=True)


def _rating_counts(path: Path, encoding: str, problems: list[Problem]) -> pd.Series:
    """Ratings per movieId, read in chunks; ratings whose movieId is not an id are counted and reported once."""
    counts: pd.Series | None = None
    invalid = 0
    first_invalid = ""
    try:
        for chunk in pd.read_csv(
            path,
            usecols=["movieId"],
            dtype=str,
            keep_default_na=False,
            chunksize=RATINGS_CHUNK_ROWS,
            encoding=_codec(encoding),
        ):
            ids, reasons = _to_int_ids(chunk["movieId"])
            if reasons and not invalid:
                label, reason = next(iter(reasons.items()))
                first_invalid = f"{_shown(chunk.at[label, 'movieId'])} {reason}"
            invalid += len(reasons)
            c = ids.dropna().astype("int64").value_counts()
            counts = c if counts is None else counts.add(c, fill_value=0)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CatalogError(f"cannot read ratings {path}: {exc}") from exc
    if invalid:
        log.warning(
            "%s: %d ratings have an invalid movieId and are not counted (first: %s)", path, invalid, first_invalid
        )
        problems.append(
            Problem(
                None,
                str(path),
                "catalog",
                f"{invalid} ratings with an invalid movieId not counted (first: {first_invalid})",
            )
        )
    return counts if counts is not None else pd.Series(dtype="int64")


def _pattern_fields(pattern: str) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise CatalogError(f"poster pattern {pattern!r} is not a valid format string: {exc}") from exc
    bad = [n for n in names if n not in PATTERN_FIELDS]
    if not names or bad:
        raise CatalogError(f"poster pattern {pattern!r}: fields expected among {PATTERN_FIELDS}, got {names}")
    try:
        pattern.format(**dict.fromkeys(PATTERN_FIELDS, PATTERN_SAMPLE_ID))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise CatalogError(
            f"poster pattern {pattern!r} cannot format an integer id: {exc} "
            f"(expected e.g. '{{tmdbId}}.jpg' or '{{imdbId:07d}}.jpg')"
        ) from None
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
        blank = [f for f in fields if pd.isna(values[f])]
        if blank:
            problems.append(
                Problem(
                    int(row.item_id), "", "catalog", f"{blank[0]} is blank; poster pattern {config.pattern!r} needs it"
                )
            )
            posters.append("")
            continue
        try:
            name = config.pattern.format(**{k: int(v) if not pd.isna(v) else "" for k, v in values.items()})
        except (ValueError, OverflowError) as exc:  # e.g. '{tmdbId:c}' with an id above 0x10FFFF
            problems.append(
                Problem(
                    int(row.item_id),
                    "",
                    "catalog",
                    f"poster pattern {config.pattern!r} cannot format this row's ids: {exc}",
                )
            )
            posters.append("")
            continue
        found = (exact.get(name) or exact.get(name.lower())) if has_ext else by_stem.get(name)
        if found is None:
            expected = name if has_ext else f"{name}.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}"
            problems.append(
                Problem(
                    int(row.item_id),
                    str(config.posters_dir / name),
                    "catalog",
                    f"poster file not found: expected {expected}",
                )
            )
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
        digits = _FILE_NAME_DIGITS.findall(stem)
        if not digits:
            problems.append(Problem(None, name, "catalog", "no digits in the file name to use as item id"))
            continue
        item_id, reason = parse_id_text(digits[-1])
        if item_id is None:
            problems.append(
                Problem(None, name, "catalog", f"id {_shown(digits[-1])} from the file name {reason}; file skipped")
            )
            continue
        rows.append({"item_id": item_id, "title": stem, "genres": "", "poster": name})
    items = pd.DataFrame(rows, columns=["item_id", "title", "genres", "poster"]).astype({"item_id": "int64"})
    dup = items["item_id"].duplicated(keep="first")
    for row in items[dup].itertuples(index=False):
        problems.append(
            Problem(
                int(row.item_id),
                row.poster,
                "catalog",
                f"duplicate item id {row.item_id} (from the file name); first file kept",
            )
        )
    items = items[~dup]
    return items.assign(
        imdb_id=pd.Series(pd.NA, index=items.index, dtype="Int64"),
        tmdb_id=pd.Series(pd.NA, index=items.index, dtype="Int64"),
        year=pd.Series(pd.NA, index=items.index, dtype="Int64"),
        rating_count=pd.Series(pd.NA, index=items.index, dtype="Int64"),
    )


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
