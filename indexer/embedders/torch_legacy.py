"""Read PyTorch's legacy (pre-1.6, non-zip) ``.pth`` serialization with NumPy only.

The file is a sequence of pickles (magic number, protocol version, sys-info,
the state dict, the list of storage keys) followed by each storage's raw data
(an int64 element count, then little-endian elements). The state-dict pickle
refers to tensors through ``torch._utils._rebuild_tensor_v2`` calls and to
storages through persistent ids. A restricted unpickler accepts exactly those
globals and refuses everything else, so no arbitrary object is ever built.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from indexer.errors import WeightsFormatError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_TENSOR_DIMS = 16  # far above any weight tensor (conv kernels have 4)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # torch's offsets, sizes and strides are int64
MAX_DIM_SIZE = 2**31 - 1  # per dimension (an empty tensor may be wider than its storage, not unboundedly)
STORAGE_HEADER_BYTES = 8  # int64 element count before each storage's data
# what pickle's machinery raises on hostile bytes (MemoryError: a length field asking for a huge allocation)
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
)

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def _check_view(self, numel: int) -> int:
        """Validate the view against a storage of ``numel`` elements; return the tensor's element count.

        Everything is checked in Python integers (no overflow) before any memory is touched: offset,
        sizes and strides non-negative, one stride per dimension, every reachable element inside the
        storage, and no more elements than the storage holds (state dicts never use overlapping views).
        """
        where = f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride})"
        if len(self.size) != len(self.stride):
            raise WeightsFormatError(f"{where}: one stride per dimension expected")
        if len(self.size) > MAX_TENSOR_DIMS:
            raise WeightsFormatError(f"{where}: at most {MAX_TENSOR_DIMS} dimensions expected")
        if self.offset < 0 or any(s < 0 for s in self.size) or any(st < 0 for st in self.stride):
            raise WeightsFormatError(f"{where}: offset, sizes and strides must be non-negative")
        if any(s > MAX_DIM_SIZE for s in self.size):
            raise WeightsFormatError(f"{where}: sizes expected at most {MAX_DIM_SIZE}")
        count = math.prod(self.size)
        if count > numel:
            raise WeightsFormatError(f"{where}: {count} elements, more than its storage of {numel}")
        if count == 0:
            if self.offset > numel:
                raise WeightsFormatError(f"{where}: offset beyond its storage of {numel} elements")
            return 0
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if last >= numel:
            raise WeightsFormatError(f"{where} reaches element {last}, beyond its storage of {numel} elements")
        return count

    def materialize(self) -> np.ndarray:
        if self.storage.data is None:
            raise WeightsFormatError(f"storage {self.storage.key!r} has no data in the file")
        flat = self.storage.data
        count = self._check_view(flat.size)
        if count == 0:
            return np.zeros(self.size, flat.dtype)
        contiguous = tuple(math.prod(self.size[d + 1 :]) for d in range(len(self.size)))
        if all(st == c or s == 1 for s, st, c in zip(self.size, self.stride, contiguous)):
            return flat[self.offset : self.offset + count].reshape(self.size).copy()
        index = np.full((1,) * len(self.size), self.offset, np.int64)  # all in range: checked above
        for dim, (s, st) in enumerate(zip(self.size, self.stride)):
            if s == 1:
                continue  # contributes nothing, whatever its stride (which may not fit in int64)
            shape = [1] * len(self.size)
            shape[dim] = s
            index = index + (np.arange(s, dtype=np.int64) * st).reshape(shape)  # st * (s-1) < numel
        return flat[index]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise WeightsFormatError(f"tensor expected a storage, got {type(storage).__name__}")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)):
        raise WeightsFormatError(f"tensor size and stride expected tuples, got {size!r:.60} and {stride!r:.60}")
    if len(size) > MAX_TENSOR_DIMS or len(stride) > MAX_TENSOR_DIMS:
        raise WeightsFormatError(
            f"tensor expected at most {MAX_TENSOR_DIMS} dimensions, got {len(size)} sizes and {len(stride)} strides"
        )
    values = (offset, *size, *stride)
    if not all(_is_int(v) and INT64_MIN <= v <= INT64_MAX for v in values):
        # a type name or a bit length: a corrupt int may be too long to print
        shown = ", ".join(type(v).__name__ if not _is_int(v) else f"{v.bit_length()}-bit int" for v in values)
        raise WeightsFormatError(f"tensor offset, sizes and strides expected 64-bit integers, got {shown}")
    return _TensorRef(storage, offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only tensors, storages and OrderedDicts."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], max_bytes: int) -> None:
        super().__init__(file)
        self._storages = storages
        self._max_bytes = max_bytes  # no storage can be larger than the file

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise WeightsFormatError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', type, key, location, numel[, view_metadata]); views are not used by state dicts.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage") or (
            len(pid) == 6 and pid[5] is not None
        ):
            raise WeightsFormatError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsFormatError(f"unexpected storage type {storage_type!r:.80}")
        if not _is_int(numel) or not 0 <= numel * storage_type.dtype.itemsize <= self._max_bytes:
            raise WeightsFormatError(
                f"storage {key!r:.40}: element count expected 0 .. "
                f"{self._max_bytes // storage_type.dtype.itemsize} (the file's size), "
                f"got {numel!r:.40}"
            )
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, numel)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise WeightsFormatError(
                f"storage {key!r:.40} referenced as {storage.numel} x {storage.dtype} "
                f"and as {numel} x {storage_type.dtype}"
            )
        return storage


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy PyTorch ``.pth`` file, without torch.

    Raises WeightsFormatError naming the file if it is not a legacy PyTorch file,
    is truncated, or references objects other than tensors.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WeightsFormatError(f"cannot read weights file {path}: {exc}") from exc
    stream = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        magic = _RestrictedUnpickler(stream, storages, len(raw)).load()
        if magic != LEGACY_MAGIC:
            raise WeightsFormatError(
                f"{path} is not a legacy PyTorch file: magic number expected {LEGACY_MAGIC:#x}, got {magic!r:.40}"
            )
        protocol = _RestrictedUnpickler(stream, storages, len(raw)).load()
        if protocol != LEGACY_PROTOCOL:
            raise WeightsFormatError(f"{path}: protocol version expected {LEGACY_PROTOCOL}, got {protocol!r:.40}")
        _RestrictedUnpickler(stream, storages, len(raw)).load()  # sys info: endianness and type sizes
        state = _RestrictedUnpickler(stream, storages, len(raw)).load()
        keys = _RestrictedUnpickler(stream, storages, len(raw)).load()
    except WeightsFormatError as exc:
        if str(path) in str(exc):
            raise
        raise WeightsFormatError(f"{path}: {exc}") from None
    except _UNPICKLING_ERRORS as exc:
        raise WeightsFormatError(
            f"{path} is not a readable legacy PyTorch file: {type(exc).__name__}: {exc!s:.200}"
        ) from exc
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise WeightsFormatError(f"{path}: expected a state dict and a storage key list")
    if len({str(k) for k in keys}) != len(keys):
        raise WeightsFormatError(f"{path}: storage keys expected unique, got {len(keys)} keys with repeats")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise WeightsFormatError(f"{path}: storage {key!r:.40} listed but never referenced")
        header = stream.read(STORAGE_HEADER_BYTES)
        if len(header) != STORAGE_HEADER_BYTES:
            raise WeightsFormatError(f"{path} is truncated: storage {key!r:.40} header missing")
        numel = int(np.frombuffer(header, "<i8")[0])
        if numel != storage.numel:
            raise WeightsFormatError(
                f"{path} is corrupt: storage {key!r:.40} expected {storage.numel} elements, its header says {numel}"
            )
        nbytes = numel * storage.dtype.itemsize
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise WeightsFormatError(
                f"{path} is truncated: storage {key!r:.40} expected {storage.numel} elements, "
                f"got {len(data) // storage.dtype.itemsize}"
            )
        storage.data = np.frombuffer(data, storage.dtype)
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if isinstance(value, _TensorRef):
            try:
                out[str(name)] = value.materialize()
            except WeightsFormatError as exc:
                raise WeightsFormatError(f"{path}: tensor {str(name)!r:.80}: {exc}") from None
    return out
