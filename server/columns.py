"""Compact read-only columns for per-item metadata: no Python object per row.

- :class:`StringColumn`: every value in one UTF-8 ``bytes`` buffer plus an offsets array; ``column[row]``
  decodes one value on demand.
- :class:`TagSetColumn`: ``A|B|C`` tag lists (genres) dictionary-encoded: one small integer code per row
  naming its distinct tag list, the distinct lists as tuples (a catalog has a few thousand at most), and a
  boolean (distinct lists x tags) matrix that filters evaluate once per distinct list, then gather per row.
- :func:`narrow_ints`: an integer column in the smallest signed dtype that holds it.

Missing values (None, NaN, NA) read as the empty string.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

ARROW_STRINGS = "string[pyarrow]"
SMALL_OFFSETS_LIMIT = 2**32  # buffers shorter than this keep their offsets as uint32, longer ones as int64
SIGNED_DTYPES = (np.int8, np.int16, np.int32, np.int64)
CODE_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def _arrow_strings(values: pd.Series) -> pa.LargeStringArray:
    """``values`` as one contiguous Arrow large_string array, missing values as ""."""
    converted = pa.array(values.astype(ARROW_STRINGS), type=pa.large_string())
    if isinstance(converted, pa.ChunkedArray):
        converted = converted.combine_chunks()
    return converted.fill_null("")


def smallest_unsigned(count: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype holding 0..count-1."""
    return next(t for t in CODE_DTYPES if count <= np.iinfo(t).max + 1)


def narrow_ints(values: np.ndarray) -> np.ndarray:
    """Integer ``values`` in the smallest signed dtype holding their range (same values, fewer bytes)."""
    if not len(values):
        return values.astype(np.int8)
    lo, hi = int(values.min()), int(values.max())
    dtype = next(t for t in SIGNED_DTYPES if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    return values.astype(dtype)


class StringColumn:
    """Immutable strings: ``column[row]`` is row ``row``'s value (decoded from one UTF-8 buffer on demand)."""

    def __init__(self, data: bytes, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or int(offsets[-1]) != len(data):
            raise ValueError(
                f"offsets expected to run from 0 to the buffer length {len(data)}, got {offsets[:1]}..{offsets[-1:]}"
            )
        self._data = data
        self._offsets = offsets

    @classmethod
    def from_series(cls, values: pd.Series) -> StringColumn:
        """The values of a pandas Series (any dtype; each value as ``str``, missing values as "")."""
        strings = _arrow_strings(values)
        n, first = len(strings), strings.offset
        if not n:
            return cls(b"", np.zeros(1, np.uint32))
        _, offsets_buffer, data_buffer = strings.buffers()
        offsets = np.frombuffer(offsets_buffer, np.int64, count=n + 1, offset=first * np.dtype(np.int64).itemsize)
        start, end = int(offsets[0]), int(offsets[-1])
        data = data_buffer[start:end].to_pybytes() if data_buffer is not None else b""
        dtype = np.uint32 if len(data) < SMALL_OFFSETS_LIMIT else np.int64
        return cls(data, (offsets - start).astype(dtype))

    @classmethod
    def from_strings(cls, values: Sequence[str]) -> StringColumn:
        return cls.from_series(pd.Series(list(values), dtype=object))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> str:
        return self._data[int(self._offsets[row]) : int(self._offsets[row + 1])].decode()

    def __iter__(self) -> Iterator[str]:
        data, offsets = self._data, self._offsets.tolist()
        return (data[a:b].decode() for a, b in zip(offsets, offsets[1:]))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and any(v == value for v in self)

    def tolist(self) -> list[str]:
        return list(self)

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._offsets.nbytes


class TagSetColumn:
    """Per row, a tuple of tags parsed from ``A|B|C`` (empty parts dropped, order and repeats kept)."""

    def __init__(self, values: pd.Series, separator: str) -> None:
        codes, distinct = pd.factorize(values.astype(ARROW_STRINGS).fillna(""))
        self._sets: list[tuple[str, ...]] = [tuple(t for t in str(v).split(separator) if t) for v in distinct]
        self.names: list[str] = sorted({t for tags in self._sets for t in tags})
        self._column = {name: i for i, name in enumerate(self.names)}
        self._matrix = np.zeros((len(self._sets), len(self.names)), bool)  # distinct tag lists x tags
        for i, tags in enumerate(self._sets):
            self._matrix[i, [self._column[t] for t in tags]] = True
        self._codes = codes.astype(smallest_unsigned(len(self._sets)))

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, row: int) -> tuple[str, ...]:
        return self._sets[self._codes[row]]

    def column(self, name: str) -> int | None:
        """The tag's index in :attr:`names`, or None when no row has it."""
        return self._column.get(name)

    def any_of(self, columns: Sequence[int]) -> np.ndarray:
        """Per row: holds at least one of the tags ``columns`` (bool)."""
        per_set = np.asarray(self._matrix[:, list(columns)].any(axis=1))
        return per_set[self._codes]

    def all_of(self, columns: Sequence[int]) -> np.ndarray:
        """Per row: holds every one of the tags ``columns`` (bool)."""
        per_set = np.asarray(self._matrix[:, list(columns)].all(axis=1))
        return per_set[self._codes]

    @property
    def nbytes(self) -> int:
        return self._codes.nbytes + self._matrix.nbytes
