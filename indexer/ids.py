"""The item-id domain, in one place: integers 0 .. 2**63-1 (FAISS int64 ids; -1 is FAISS's "no result").

Every id entering a build (catalog CSVs, file names, precomputed id files and columns) goes through
this module, which parses exactly and never through float64:

- text: optional surrounding spaces, an optional ``+``, decimal digits, optionally a fraction of zeros
  (``862.0``: MovieLens writes ``tmdbId`` as a float column) and/or an exponent (``8.62e+02``:
  ``numpy.savetxt``'s default), evaluated exactly with ``Decimal``; the value must be integral and in range.
  Rejected with a reason: blanks, ``-5``, ``862.5``, ``abc``, ``1e20``, ``0x10``, ``1_000``, NaN/inf.
- integer arrays (any width, signed or unsigned): each value must be in range (``uint64`` above 2**63-1
  and negative values are rejected).
- float arrays: each value must be finite, integral and at most 2**53 (above that a float cannot tell
  neighbouring integers apart, so the id was probably rounded before it reached us).
- anything else (bool, complex, dates, ...) is not an id array.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

MIN_ITEM_ID = 0
MAX_ITEM_ID = 2**63 - 1
MAX_EXACT_FLOAT_ID = 2**53  # every integer up to here is exactly representable in float64
DOMAIN = "item ids must be integers in 0 .. 2**63-1"
_PLAIN = re.compile(r"[0-9]{1,18}")  # at most 18 digits: always in range (the fast path)
_PLAIN_PATTERN = _PLAIN.pattern
# what Decimal parses, minus underscores, NaN and infinities
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_TEXT = 64  # longer strings are never valid ids (19 digits + zeros/exponent): rejected without parsing


@dataclass(frozen=True)
class ParsedIds:
    """Ids by input position: ``ids[i]`` is valid where ``ok[i]``; ``reasons[i]`` says why not elsewhere."""

    ids: np.ndarray  # int64, 0 where not ok
    ok: np.ndarray  # bool
    reasons: dict[int, str]


def id_problem(value: int | Decimal) -> str | None:
    """Why an exact integer is not an item id, or None if it is one."""
    if value < MIN_ITEM_ID:
        return f"is negative; {DOMAIN}"
    if value > MAX_ITEM_ID:
        return f"is above 2**63-1; {DOMAIN}"
    return None


def parse_id_text(text: str) -> tuple[int | None, str | None]:
    """Parse one id written as text: ``(id, None)`` or ``(None, reason)``. Exact (no float on the way)."""
    s = text.strip()
    if not s:
        return None, "is blank"
    if _PLAIN.fullmatch(s):
        return int(s), None
    if not _NUMBER.fullmatch(s):
        return None, "is not an integer"
    if len(s) > _MAX_TEXT:
        return None, f"has {len(s)} characters; {DOMAIN}"
    try:
        value = Decimal(s)
    except InvalidOperation:  # the regex above admits only what Decimal parses; kept for safety
        return None, "is not an integer"
    if value != value.to_integral_value():
        return None, "is not an integer"
    reason = id_problem(value)
    return (int(value), None) if reason is None else (None, reason)


def parse_id_texts(values: Iterable[Any]) -> ParsedIds:
    """Parse ids given as strings (None and NA count as blank)."""
    texts = ["" if v is None or (not isinstance(v, str) and _is_na(v)) else str(v) for v in values]
    ids = np.zeros(len(texts), np.int64)
    ok = np.zeros(len(texts), bool)
    reasons: dict[int, str] = {}
    for pos, text in enumerate(texts):
        value, reason = parse_id_text(text)
        if value is None:
            reasons[pos] = reason or "is not an integer"
        else:
            ids[pos], ok[pos] = value, True
    return ParsedIds(ids, ok, reasons)


def parse_id_series(values: pd.Series) -> ParsedIds:
    """Parse a column of ids read as text; plain digit strings take a vectorized path (ratings.csv)."""
    text = values.astype("string").str.strip()
    plain = text.str.fullmatch(_PLAIN_PATTERN).fillna(False).to_numpy(bool)
    ids = np.zeros(len(text), np.int64)
    ok = plain.copy()
    if plain.any():
        ids[plain] = text[plain].to_numpy(dtype=object).astype(np.int64)  # exact: numpy parses digit strings
    reasons: dict[int, str] = {}
    rest = np.flatnonzero(~plain)
    if len(rest):
        parsed = parse_id_texts(text.iloc[rest].tolist())
        ids[rest] = parsed.ids
        ok[rest] = parsed.ok
        reasons = {int(rest[p]): reason for p, reason in parsed.reasons.items()}
    return ParsedIds(ids, ok, reasons)


def _is_na(value: Any) -> bool:
    """None, NaN, pd.NA, NaT (a scalar); never raises, whatever the object."""
    return np.ndim(value) == 0 and bool(pd.isna(value))


def _object_id(value: Any) -> tuple[int | None, str | None]:
    if value is None or isinstance(value, (bool, np.bool_)):
        return None, "is blank" if value is None else f"is a boolean ({value!r}), not an integer"
    if isinstance(value, (int, np.integer)):
        reason = id_problem(int(value))
        return (int(value), None) if reason is None else (None, reason)
    if isinstance(value, (float, np.floating)):
        return _float_id(float(value))
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return parse_id_text(text)
    if _is_na(value):
        return None, "is blank"
    return None, f"is a {type(value).__name__}, not an integer"


def _float_id(value: float) -> tuple[int | None, str | None]:
    if not np.isfinite(value):
        return None, "is not a finite number"
    if value != np.floor(value):
        return None, "is not an integer"
    if value < MIN_ITEM_ID:
        return None, f"is negative; {DOMAIN}"
    if value > MAX_EXACT_FLOAT_ID:
        return None, ("is a float above 2**53, where floats cannot represent every integer (store ids as integers)")
    return int(value), None


def parse_id_array(values: np.ndarray) -> ParsedIds:
    """Validate a 1-D array of ids of any dtype; raise TypeError if the dtype cannot hold ids at all."""
    arr = np.asarray(values)
    n = len(arr)
    kind = arr.dtype.kind
    if kind in "iu":
        if kind == "u":
            ok = arr <= np.uint64(MAX_ITEM_ID)
        else:
            ok = arr >= MIN_ITEM_ID
        ids = np.where(ok, arr, 0).astype(np.int64)
        return ParsedIds(
            ids,
            ok,
            {int(p): f"{'is above 2**63-1' if kind == 'u' else 'is negative'}; {DOMAIN}" for p in np.flatnonzero(~ok)},
        )
    if kind == "f":
        x = arr.astype(np.float64)  # float16/32 widen exactly
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(x) & (x == np.floor(x)) & (x >= MIN_ITEM_ID) & (x <= MAX_EXACT_FLOAT_ID)
        ids = np.where(ok, x, 0).astype(np.int64)
        return ParsedIds(
            ids, ok, {int(p): _float_id(float(x[p]))[1] or "is not an integer" for p in np.flatnonzero(~ok)}
        )
    if kind in "USO":
        ids = np.zeros(n, np.int64)
        ok = np.zeros(n, bool)
        reasons: dict[int, str] = {}
        for pos, value in enumerate(arr.tolist()):
            parsed, reason = _object_id(value)
            if parsed is None:
                reasons[pos] = reason or "is not an integer"
            else:
                ids[pos], ok[pos] = parsed, True
        return ParsedIds(ids, ok, reasons)
    raise TypeError(f"item ids expected integers (or integral floats/strings), got dtype {arr.dtype}")
