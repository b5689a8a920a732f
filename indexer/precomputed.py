"""Vectors computed elsewhere (another job, another machine), indexed without images.

Accepted: ``.npy`` (N x D) with ids in a second ``.npy``/``.txt``/``.csv``;
``.npz`` with arrays ``ids`` and ``vectors``; ``.parquet`` with an ``item_id``
column and a list column ``embedding`` (or ``vector``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indexer.catalog import Problem
from indexer.errors import CatalogError

VECTOR_COLUMNS = ("embedding", "vector")


@dataclass(frozen=True)
class PrecomputedConfig:
    vectors: Path
    ids: Path | None = None
    model_name: str = "precomputed"  # recorded in the manifest; image search is unavailable


def _load_ids(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    frame = pd.read_csv(path, header=None if path.suffix == ".txt" else "infer")
    return frame.iloc[:, 0].to_numpy()


def _load_raw(config: PrecomputedConfig) -> tuple[np.ndarray, np.ndarray]:
    path = config.vectors
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "ids" not in data or "vectors" not in data:
                raise CatalogError(f"{path}: arrays 'ids' and 'vectors' expected, got {list(data.keys())}")
            return data["ids"], data["vectors"]
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
        column = next((c for c in VECTOR_COLUMNS if c in frame.columns), None)
        if "item_id" not in frame.columns or column is None:
            raise CatalogError(f"{path}: columns 'item_id' and one of {VECTOR_COLUMNS} expected, got {list(frame.columns)}")
        return frame["item_id"].to_numpy(), np.stack(frame[column].to_numpy()) if len(frame) else np.zeros((0, 0))
    if suffix == ".npy":
        if config.ids is None:
            raise CatalogError(f"{path}: a .npy of vectors needs --ids (a .npy, .txt or .csv of item ids)")
        return _load_ids(config.ids), np.load(path, allow_pickle=False)
    raise CatalogError(f"{path}: expected .npy (+ ids), .npz or .parquet, got {suffix or 'no extension'}")


def load_precomputed(config: PrecomputedConfig) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Return (ids int64, vectors float32 (N, D), problems). Duplicate or non-finite rows are reported."""
    try:
        ids, vectors = _load_raw(config)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read precomputed embeddings {config.vectors}: {exc}") from exc
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise CatalogError(f"{config.vectors}: vectors expected as a 2-D array (N, D), got shape {vectors.shape}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != len(vectors):
        raise CatalogError(f"{config.vectors}: expected one id per vector ({len(vectors)}), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        as_float = ids.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise CatalogError(f"{config.vectors}: item ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    vectors = vectors.astype(np.float32)
    problems: list[Problem] = []
    keep = np.ones(len(ids), bool)
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), bool)
    dup[first] = False
    for pos in np.flatnonzero(dup):
        problems.append(Problem(int(ids[pos]), str(config.vectors), "precomputed", "duplicate item id; first row kept"))
    keep &= ~dup
    bad = ~np.isfinite(vectors).all(axis=1)
    for pos in np.flatnonzero(bad & keep):
        problems.append(Problem(int(ids[pos]), str(config.vectors), "precomputed", "vector has NaN or Inf values"))
    keep &= ~bad
    return ids[keep], vectors[keep], problems
