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
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from indexer.errors import WeightsFormatError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

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


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        if self.storage.data is None:
            raise WeightsFormatError(f"storage {self.storage.key!r} has no data in the file")
        flat = self.storage.data
        itemsize = flat.dtype.itemsize
        if not self.size:
            return flat[self.offset : self.offset + 1].reshape(()).copy()
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if self.offset < 0 or last > flat.size:
            raise WeightsFormatError(
                f"tensor view (offset {self.offset}, size {self.size}) exceeds its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only tensors, storages and OrderedDicts."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

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
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, int(numel))
            self._storages[key] = storage
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
        magic = _RestrictedUnpickler(stream, storages).load()
        if magic != LEGACY_MAGIC:
            raise WeightsFormatError(
                f"{path} is not a legacy PyTorch file: magic number expected {LEGACY_MAGIC:#x}, got {magic!r:.40}"
            )
        protocol = _RestrictedUnpickler(stream, storages).load()
        if protocol != LEGACY_PROTOCOL:
            raise WeightsFormatError(f"{path}: protocol version expected {LEGACY_PROTOCOL}, got {protocol!r:.40}")
        _RestrictedUnpickler(stream, storages).load()  # sys info: endianness and type sizes
        state = _RestrictedUnpickler(stream, storages).load()
        keys = _RestrictedUnpickler(stream, storages).load()
    except WeightsFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise WeightsFormatError(f"{path} is not a readable legacy PyTorch file: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise WeightsFormatError(f"{path}: expected a state dict and a storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise WeightsFormatError(f"{path}: storage {key!r} listed but never referenced")
        header = stream.read(8)
        if len(header) != 8:
            raise WeightsFormatError(f"{path} is truncated: storage {key!r} header missing")
        numel = int(np.frombuffer(header, "<i8")[0])
        nbytes = numel * storage.dtype.itemsize
        data = stream.read(nbytes)
        if len(data) != nbytes or numel != storage.numel:
            raise WeightsFormatError(
                f"{path} is truncated or corrupt: storage {key!r} expected {storage.numel} elements, "
                f"got {len(data) // max(storage.dtype.itemsize, 1)}"
            )
        storage.data = np.frombuffer(data, storage.dtype)
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.materialize()
    return out
