#!/usr/bin/env python3
"""Item metadata memory at scale: what loading a bundle's item table costs in RSS and time.

A seeded synthetic bundle-like ``items.csv`` of N rows (MovieLens-like: titles ``Name Words (1999)`` with
articles, alternative titles and accents from tests/title_catalog.py, genres ``A|B`` from the MovieLens
genre list, poster paths, imdb/tmdb ids with blanks, years from the titles, rating counts) is written by
the parent; each size is then measured in a fresh process (clean RSS) doing what a server does on load:

  read      indexer.bundle.reader._read_items (pandas DataFrame)
  store     server.items.ItemStore over it
  titles    server.titles.TitleIndex over the store's titles
  retained  RSS once the DataFrame is dropped (what a serving process keeps: store + title index)

RSS is psutil's, after ``gc.collect()`` and glibc ``malloc_trim(0)`` (so freed memory does not count);
"peak" is the process's maximum RSS minus the RSS before reading. Prints a Markdown table and writes JSON +
Markdown under benchmarks/results/ (memory-*.json).

  python scripts/bench_memory.py                         # N = 1,000,000
  python scripts/bench_memory.py --sizes 100000,1000000 --order shuffled
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from bench_common import machine, peak_rss_mb, run_worker, write_results

from indexer.bundle.manifest import Manifest
from indexer.bundle.reader import _read_items
from indexer.catalog import ITEM_COLUMNS, title_years
from server.items import ItemStore
from server.titles import TitleIndex
from tests.title_catalog import synthetic_titles

SCRIPT = Path(__file__).resolve()
SEED = 0
DEFAULT_SIZES = "1000000"
ORDERS = ("sorted", "shuffled")  # item ids in row order: MovieLens order (ascending) or any order
MB = 2**20
GENRES = (
    *("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy"),
    *("Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"),
)
NO_GENRES = "(no genres listed)"
MAX_GENRES_PER_ITEM = 4
P_NO_GENRES = 0.01
ID_GAP_MAX = 3  # consecutive item ids differ by 1..this (MovieLens ids have gaps)
IMDB_RANGE = (1_000, 9_999_999)
TMDB_RANGE = (2, 1_200_000)
P_NO_IMDB, P_NO_TMDB = 0.001, 0.01
RATINGS_MEAN = 40.0  # rating counts: geometric, most films have few ratings


def synthetic_items(n: int, order: str = "sorted", seed: int = SEED) -> pd.DataFrame:
    """``n`` seeded rows with the bundle's item columns (ITEM_COLUMNS), the way a catalog build writes them."""
    rng = np.random.default_rng(seed)
    ids = np.cumsum(rng.integers(1, ID_GAP_MAX + 1, size=n))
    if order == "shuffled":
        ids = rng.permutation(ids)
    elif order != "sorted":
        raise ValueError(f"order expected one of {ORDERS}, got {order!r}")
    counts = rng.integers(1, MAX_GENRES_PER_ITEM + 1, size=n)
    picks = np.argsort(rng.random((n, len(GENRES))), axis=1)[:, :MAX_GENRES_PER_ITEM]
    names = np.array(GENRES, dtype=object)
    genres = ["|".join(names[np.sort(p[:c])]) for p, c in zip(picks, counts.tolist())]
    for row in np.flatnonzero(rng.random(n) < P_NO_GENRES).tolist():
        genres[row] = NO_GENRES
    titles = pd.Series(synthetic_titles(n, seed=seed), dtype=str)
    imdb = pd.Series(rng.integers(*IMDB_RANGE, size=n), dtype="Int64").mask(rng.random(n) < P_NO_IMDB)
    tmdb = pd.Series(rng.integers(*TMDB_RANGE, size=n), dtype="Int64").mask(rng.random(n) < P_NO_TMDB)
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "title": titles,
            "genres": genres,
            "imdb_id": imdb,
            "tmdb_id": tmdb,
            "poster": [f"posters/{i}.jpg" for i in ids.tolist()],
            "year": title_years(titles),
            "rating_count": pd.Series(rng.geometric(1 / RATINGS_MEAN, size=n), dtype="Int64"),
        }
    )
    return frame[list(ITEM_COLUMNS)]


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc and Arrow's pool), so RSS shows what is kept."""
    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _rss_mb() -> float:
    gc.collect()
    _trim()
    return psutil.Process().memory_info().rss / MB


def measure(csv: str, n: int) -> dict[str, Any]:
    """In a fresh process: read ``csv`` as a bundle's items, build the store and the title index."""
    manifest = cast(Manifest, SimpleNamespace(item_count=n))  # _read_items only checks the row count
    base = _rss_mb()
    steps: dict[str, dict[str, float]] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        before, t = _rss_mb(), time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        steps[name] = {"s": round(seconds, 3), "mb": round(_rss_mb() - before, 1)}
        return out

    frame = [step("read", lambda: _read_items(Path(csv), manifest))]
    store = step("store", lambda: ItemStore(frame[0], "bench"))
    titles = step("titles", lambda: TitleIndex(store.titles.tolist()))
    frame.clear()  # the server drops the DataFrame once its searcher is built
    retained = _rss_mb() - base
    assert len(store) == len(titles) == n
    return {
        "items": n,
        "steps": steps,
        "retained_mb": round(retained, 1),
        "peak_mb": round(peak_rss_mb() - base, 1),
        "load_s": round(sum(s["s"] for s in steps.values()), 3),
    }


def markdown(results: list[dict[str, Any]], info: dict[str, Any], order: str) -> str:
    lines = [
        f"# Item metadata memory ({info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']})",
        "",
        f"Synthetic MovieLens-like items.csv, ids {order}; RSS growth after gc + malloc_trim; MB = 2^20 bytes.",
        "",
        "| items | read MB (s) | ItemStore MB (s) | TitleIndex MB (s) | retained MB | peak MB | load s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [f"{r['steps'][k]['mb']} ({r['steps'][k]['s']})" for k in ("read", "store", "titles")]
        lines.append(f"| {r['items']:,} | {' | '.join(cells)} | {r['retained_mb']} | {r['peak_mb']} | {r['load_s']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated item counts")
    p.add_argument("--order", choices=ORDERS, default="sorted", help="item ids in row order")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _, csv, n = args.worker
        print(json.dumps(measure(csv, int(n))))
        return 0
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in map(int, args.sizes.split(",")):
            print(f"{n:,} items: generating ...", file=sys.stderr)
            csv = Path(tmp) / f"items-{n}.csv"
            synthetic_items(n, args.order).to_csv(csv, index=False)
            print(f"{n:,} items: measuring ...", file=sys.stderr)
            results.append(run_worker(SCRIPT, ["measure", str(csv), str(n)]))
            csv.unlink()
    md = markdown(results, info, args.order)
    path = write_results("memory", {"machine": info, "order": args.order, "seed": SEED, "results": results}, md)
    print(md)
    print(f"results: {path} (+ .md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
