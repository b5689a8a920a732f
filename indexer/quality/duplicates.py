"""Near-duplicate posters: pairs of catalog items whose embeddings are almost the same.

Two movies sharing one poster file (or the same artwork re-encoded) is a catalog error. The default
threshold was tuned on the copy-detection edits (see ``DEFAULT_DUPLICATE_THRESHOLD``); ``posters-index eval``
reports, per run, the cosine of every edited copy to its original, so the threshold can be re-tuned for
another model.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from indexer.contact_sheet import Tile, render_sheet
from indexer.neighbours import NEAR_DUPLICATE_COSINE

log = logging.getLogger(__name__)

# Tuned on the copy-detection edits with efficientnet_lite0 (avg, pad): copies that keep the artwork (the file
# itself: 1.0; mirrored: p5 0.95-0.96; re-encoded at half size: median 0.96) score above it, and no two distinct
# real photos do (the closest pair of the real-photo catalog is 0.72). Synthetic posters drawn from one template
# per genre also do (demo catalog: 129 pairs of 7,140, 82 of them sequels); lower values flag hundreds of them
# (0.90: 517). ``posters-index eval`` reports, per run, the value catching 99 % of half-size re-encodes.
DEFAULT_DUPLICATE_THRESHOLD = NEAR_DUPLICATE_COSINE
BLOCK_BYTES = 64 * 1024 * 1024  # similarities held at once
FLOAT32_BYTES = 4
SHEET_PAIRS = 12
SHEET_COLUMNS = 6  # three pairs per row
CSV_COLUMNS = ("item_a", "title_a", "poster_a", "item_b", "title_b", "poster_b", "cosine")


class DuplicatePair(NamedTuple):
    item_a: int  # the smaller id
    item_b: int
    cosine: float


def count_near_duplicates(
    vectors: np.ndarray, ids: np.ndarray, threshold: float = DEFAULT_DUPLICATE_THRESHOLD
) -> list[DuplicatePair]:
    """Every pair of items whose L2-normalized vectors have cosine > ``threshold``, most similar first.

    Exact, in blocks of rows (a block's similarities to all items take at most BLOCK_BYTES; never the N x N
    matrix); each pair once, ``item_a < item_b``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(ids):
        raise ValueError(f"expected vectors (n, d) and n ids, got {x.shape} and {len(ids)} ids")
    n = len(x)
    rows_per_block = max(1, BLOCK_BYTES // (FLOAT32_BYTES * max(n, 1)))
    pairs: list[DuplicatePair] = []
    for start in range(0, n, rows_per_block):
        sims = x[start : start + rows_per_block] @ x.T
        r, c = np.nonzero(sims > threshold)
        keep = c > r + start  # each pair once, never an item with itself
        rows, cols = r[keep] + start, c[keep]
        for row, col, score in zip(rows.tolist(), cols.tolist(), sims[r[keep], cols].tolist(), strict=True):
            a, b = sorted((int(ids[row]), int(ids[col])))
            pairs.append(DuplicatePair(a, b, float(score)))
    pairs.sort(key=lambda p: (-p.cosine, p.item_a, p.item_b))
    return pairs


def write_duplicates(
    pairs: Sequence[DuplicatePair], items: pd.DataFrame, out_dir: Path, posters_dir: Path | None
) -> dict[str, str]:
    """duplicates.csv (every pair) and duplicates.png (the first pairs side by side); returns the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = items.set_index("item_id")
    written = {"csv": "duplicates.csv"}
    with (out_dir / "duplicates.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for p in pairs:
            a, b = by_id.loc[p.item_a], by_id.loc[p.item_b]
            writer.writerow((p.item_a, a["title"], a["poster"], p.item_b, b["title"], b["poster"], f"{p.cosine:.5f}"))
    if pairs:
        tiles = []
        for p in pairs[:SHEET_PAIRS]:
            for item_id, caption in ((p.item_a, f"#{p.item_a}"), (p.item_b, f"#{p.item_b}  cos {p.cosine:.3f}")):
                row = by_id.loc[item_id]
                path = posters_dir / row["poster"] if posters_dir is not None and row["poster"] else None
                tiles.append(Tile(path, str(row["title"]), caption))
        render_sheet(tiles, SHEET_COLUMNS).save(out_dir / "duplicates.png")
        written["sheet"] = "duplicates.png"
    return written
