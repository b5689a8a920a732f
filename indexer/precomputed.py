"""Vectors computed elsewhere (another job, another machine), indexed without images.

Accepted: ``.npy`` (N x D) with ids in a second ``.npy``/``.txt``/``.csv``;
``.npz`` with arrays ``ids`` and ``vectors``; ``.parquet`` with an ``item_id``
column and a list column ``embedding`` (or ``vector``); a directory of embedding shards
(``posters-index embed``'s output, ``indexer.embedding_shards``: finished, one embedder). When the
shards (or a ``.parquet``) carry the embedder's description, ``precomputed_embedder`` returns it and the
bundle records that embedder as an image build does (so it can answer image queries).

Ids follow ``indexer.ids`` (integers 0 .. 2**63-1, parsed exactly): a row whose id is not one is
reported and skipped, as are duplicate ids and rows whose vector is missing, ragged or not finite.
A file that cannot be read at all, vectors that are not numbers, or an ids file with no valid id is a
CatalogError naming the file.
"""

from __future__ import annotations

import csv
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indexer import embedding_shards as shards
from indexer.bundle.manifest import EmbedderInfo
from indexer.catalog import Problem
from indexer.errors import CatalogError
from indexer.ids import DOMAIN, ParsedIds, parse_id_array

VECTOR_COLUMNS = ("embedding", "vector")
ID_COLUMN = "item_id"
ID_SUFFIXES = (".npy", ".txt", ".csv")
FLOAT32_MAX = float(np.finfo(np.float32).max)
_SHOWN_CHARS = 40
CHECK_BLOCK_ROWS = 65_536  # rows checked at a time for NaN/Inf and range (bounded temporaries)
# what reading a hostile or foreign file raises (numpy: ValueError/EOFError; npz: BadZipFile; pyarrow: subclasses)
_READ_ERRORS = (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, ImportError)


@dataclass(frozen=True)
class PrecomputedConfig:
    vectors: Path
    ids: Path | None = None
    model_name: str = "precomputed"  # recorded in the manifest; image search is unavailable


@dataclass
class _Raw:
    ids: np.ndarray  # as stored (any dtype)
    ids_file: Path
    where: Callable[[int], str]  # "line 3" / "row 2" for a 0-based position
    vectors: np.ndarray  # (N, D), any numeric dtype
    bad_rows: dict[int, str]  # positions whose vector is unusable, and why


def _row(pos: int) -> str:
    return f"row {pos}"


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CatalogError(
            f"{path}: line {line} (byte {exc.start}) is not UTF-8 text; expected one integer item id per line"
        ) from None


def _text_ids(path: Path) -> np.ndarray:
    """A .txt of one id per line: every line counts (a blank one is a bad row), trailing blank lines aside."""
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return np.array(lines, dtype=object)


def _csv_ids(path: Path) -> np.ndarray:
    """A .csv with a header: the ``item_id`` column, or the first one."""
    rows = list(csv.reader(_read_text(path).splitlines()))
    while rows and not any(field.strip() for field in rows[-1]):
        rows.pop()
    if not rows:
        raise CatalogError(f"{path} is empty: expected a header row, then one item id per row")
    header = [h.strip() for h in rows[0]]
    col = header.index(ID_COLUMN) if ID_COLUMN in header else 0
    return np.array([row[col] if len(row) > col else "" for row in rows[1:]], dtype=object)


def _load_ids(path: Path) -> tuple[np.ndarray, Callable[[int], str]]:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), _row
    if suffix == ".txt":
        return _text_ids(path), lambda pos: f"line {pos + 1}"
    if suffix == ".csv":
        return _csv_ids(path), lambda pos: f"line {pos + 2}"
    raise CatalogError(f"{path}: ids file expected one of {ID_SUFFIXES}, got {suffix or 'no extension'}")


def _column_ids(column: pd.Series) -> np.ndarray:
    """A parquet id column as an exact NumPy array: nullable integers never pass through float64."""
    if column.hasnans or column.dtype == object or isinstance(column.dtype, pd.StringDtype):
        return column.to_numpy(dtype=object)
    numpy_dtype = getattr(column.dtype, "numpy_dtype", None)
    return column.to_numpy(dtype=numpy_dtype) if numpy_dtype is not None else column.to_numpy()


def _stack_rows(values: np.ndarray, path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """A parquet list column as (N, D) float64; D is the most common length, other rows are bad rows."""
    rows: list[np.ndarray | None] = []
    for pos, value in enumerate(values):
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            rows.append(None)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1:
            raise CatalogError(
                f"{path}: {_row(pos)}: vector expected a list of numbers, got "
                f"{arr.ndim}-D {arr.dtype} {str(value)[:_SHOWN_CHARS]!r}"
            )
        rows.append(arr)
    lengths = Counter(len(r) for r in rows if r is not None)
    if not lengths:
        return np.zeros((len(rows), 0)), {}
    dim = lengths.most_common(1)[0][0]
    out = np.full((len(rows), dim), np.nan)
    bad: dict[int, str] = {}
    for pos, row in enumerate(rows):
        if row is None:
            bad[pos] = "vector is missing"
        elif len(row) != dim:
            bad[pos] = f"vector has {len(row)} values, expected {dim} (the most common length)"
        else:
            out[pos] = row
    return out, bad


def _load_shards(directory: Path) -> _Raw:
    """Every shard of a finished shard directory, in order; positions are named by shard and row."""
    parts = list(shards.iter_shards(shards.open_shards(directory)))
    starts = np.cumsum([0] + [len(p.ids) for p in parts])

    def where(pos: int) -> str:
        n = int(np.searchsorted(starts, pos, side="right")) - 1
        return f"{parts[n].path.name} row {pos - int(starts[n])}"

    bad = {int(starts[n]) + pos: reason for n, part in enumerate(parts) for pos, reason in part.bad_rows.items()}
    same_dtype = len({p.ids.dtype for p in parts}) == 1  # else exact Python ints (int64 + uint64 would be float64)
    ids = np.concatenate([p.ids if same_dtype else p.ids.astype(object) for p in parts])
    return _Raw(ids, directory, where, np.concatenate([p.vectors for p in parts]), bad)


def precomputed_embedder(config: PrecomputedConfig, dim: int) -> EmbedderInfo | None:
    """The embedder a shard directory (or a ``.parquet``) records in its schema metadata, checked against the
    loaded vectors' dimension ``dim``; None for files that record none (``.npy``, ``.npz``, foreign parquet)."""
    path = config.vectors
    if path.is_dir():
        found = shards.open_shards(path).embedder
    elif path.suffix.lower() == ".parquet":
        found = shards.parquet_embedder(path)
    else:
        return None
    if found is None:
        return None
    try:
        info = EmbedderInfo.model_validate(found.description)
    except ValueError as exc:
        raise CatalogError(
            f"{path}: the shards' embedder description expected the fields of a bundle's embedder, got "
            f"{sorted(found.description)}: {' '.join(str(exc).split())}"
        ) from None
    if info.dim != dim:
        raise CatalogError(f"{path}: vectors expected dim {info.dim} (the recorded embedder's), got {dim}")
    return info


def _load_raw(config: PrecomputedConfig) -> _Raw:
    path = config.vectors
    if path.is_dir():
        return _load_shards(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "ids" not in data or "vectors" not in data:
                raise CatalogError(f"{path}: arrays 'ids' and 'vectors' expected, got {list(data.keys())}")
            return _Raw(data["ids"], path, _row, data["vectors"], {})
    if suffix == ".parquet":
        frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
        column = next((c for c in VECTOR_COLUMNS if c in frame.columns), None)
        if ID_COLUMN not in frame.columns or column is None:
            raise CatalogError(
                f"{path}: columns {ID_COLUMN!r} and one of {VECTOR_COLUMNS} expected, got {list(frame.columns)}"
            )
        vectors, bad = _stack_rows(frame[column].to_numpy(dtype=object), path)
        return _Raw(_column_ids(frame[ID_COLUMN]), path, _row, vectors, bad)
    if suffix == ".npy":
        if config.ids is None:
            raise CatalogError(f"{path}: a .npy of vectors needs --ids (a .npy, .txt or .csv of item ids)")
        vectors = np.load(path, allow_pickle=False)
        ids, where = _load_ids(config.ids)
        return _Raw(ids, config.ids, where, vectors, {})
    raise CatalogError(
        f"{path}: expected .npy (+ ids), .npz, .parquet or a directory of shards, got {suffix or 'no extension'}"
    )


def _parse_ids(raw: _Raw) -> ParsedIds:
    ids = np.asarray(raw.ids)
    if ids.ndim != 1:
        raise CatalogError(f"{raw.ids_file}: ids expected as a 1-D array, got shape {ids.shape}")
    try:
        parsed = parse_id_array(ids)
    except TypeError as exc:
        raise CatalogError(f"{raw.ids_file}: {exc}") from None
    if len(ids) and not parsed.ok.any():
        pos, reason = next(iter(parsed.reasons.items()))
        raise CatalogError(
            f"{raw.ids_file}: no valid item id in {len(ids)} rows ({raw.where(pos)}: "
            f"{str(ids[pos])[:_SHOWN_CHARS]!r} {reason}); {DOMAIN}"
        )
    return parsed


def load_precomputed(config: PrecomputedConfig) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Return (ids int64, vectors float32 (N, D), problems). Bad, duplicate or non-finite rows are reported."""
    try:
        raw = _load_raw(config)
    except CatalogError:
        raise
    except _READ_ERRORS as exc:
        source = config.vectors if config.ids is None else f"{config.vectors} / {config.ids}"
        raise CatalogError(f"cannot read precomputed embeddings {source}: {type(exc).__name__}: {exc}") from exc
    vectors = np.asarray(raw.vectors)
    if vectors.dtype.kind not in "iuf":
        raise CatalogError(
            f"{config.vectors}: vectors expected a numeric array (float or int), got dtype {vectors.dtype}"
        )
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise CatalogError(f"{config.vectors}: vectors expected as a 2-D array (N, D), got shape {vectors.shape}")
    parsed = _parse_ids(raw)
    if len(parsed.ids) != len(vectors):
        raise CatalogError(f"{raw.ids_file}: expected one id per vector ({len(vectors)}), got {len(parsed.ids)}")
    problems: list[Problem] = []
    keep = parsed.ok.copy()
    for pos, reason in parsed.reasons.items():
        shown = str(raw.ids[pos])[:_SHOWN_CHARS]
        problems.append(
            Problem(
                None, str(raw.ids_file), "precomputed", f"{raw.where(pos)}: item id {shown!r} {reason}; row skipped"
            )
        )
    ids = parsed.ids
    for pos in np.flatnonzero(keep).tolist():
        if pos in raw.bad_rows:
            problems.append(
                Problem(
                    int(ids[pos]),
                    str(config.vectors),
                    "precomputed",
                    f"{raw.where(int(pos))}: {raw.bad_rows[int(pos)]}; row skipped",
                )
            )
    keep[list(raw.bad_rows)] = False
    finite, in_range = _row_checks(vectors)
    for pos in np.flatnonzero(keep & ~finite).tolist():
        problems.append(Problem(int(ids[pos]), str(config.vectors), "precomputed", "vector has NaN or Inf values"))
    for pos in np.flatnonzero(keep & finite & ~in_range).tolist():
        problems.append(
            Problem(
                int(ids[pos]),
                str(config.vectors),
                "precomputed",
                f"vector has values beyond the float32 range (+-{FLOAT32_MAX:.3g})",
            )
        )
    keep &= finite & in_range
    first_kept = np.zeros(len(ids), bool)
    usable = np.flatnonzero(keep)
    _, first = np.unique(ids[usable], return_index=True)
    first_kept[usable[first]] = True
    for pos in np.flatnonzero(keep & ~first_kept).tolist():
        problems.append(
            Problem(
                int(ids[pos]), str(config.vectors), "precomputed", "duplicate item id; the first usable row is kept"
            )
        )
    keep &= first_kept
    if keep.all():  # the usual case: no copy of a float32 input (1M x 1280 is 5 GB)
        return ids, vectors.astype(np.float32, copy=False), problems
    return ids[keep], vectors[keep].astype(np.float32, copy=False), problems


def _row_checks(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(finite, within float32's range) per row, computed in blocks: the temporaries stay a block's size."""
    finite = np.ones(len(vectors), bool)
    in_range = np.ones(len(vectors), bool)
    if vectors.dtype.kind != "f":  # integers always fit float32's range
        return finite, in_range
    for start in range(0, len(vectors), CHECK_BLOCK_ROWS):
        block = vectors[start : start + CHECK_BLOCK_ROWS]
        ok = np.isfinite(block)
        finite[start : start + len(block)] = ok.all(axis=1)
        in_range[start : start + len(block)] = (np.abs(np.where(ok, block, 0)) <= FLOAT32_MAX).all(axis=1)
    return finite, in_range
