#!/usr/bin/env python3
"""Concurrency benchmark: flat-index vector queries from T threads, with and without coalescing.

In-process, seeded vectors (--data realistic, the default, or clustered: scripts/bench_common.benchmark_data)
and the same BLAS threshold as posters-serve; each thread
runs FAISS single-threaded, as request threads do. Prints QPS and p50/p99 per setting and writes
JSON + Markdown under benchmarks/results/.

  python scripts/bench_concurrency.py                 # 20k x 1280 flat, 1/4/8 threads (~1 min)
  python scripts/bench_concurrency.py --items 5000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np
from bench_common import DATA_KINDS, benchmark_data, machine, percentiles_ms, write_results

if TYPE_CHECKING:
    from server.searcher import Searcher

HELD_OUT = 1000  # query vectors, not in the index


def run(searcher: Searcher, queries: np.ndarray, threads: int, per_thread: int) -> dict:
    from server.types import SearchOptions

    latencies: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(threads + 1)

    def worker(n: int) -> None:
        mine = []
        start_gate.wait()
        for i in range(per_thread):
            t = time.perf_counter()
            searcher.search_vector(queries[(n * per_thread + i) % len(queries)], SearchOptions(k=10))
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    began = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - began
    return {"threads": threads, "qps": round(len(latencies) / wall, 1), **percentiles_ms(latencies)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=400, help="queries per setting")
    p.add_argument("--data", choices=DATA_KINDS, default="realistic", help="benchmark vectors (default realistic)")
    args = p.parse_args()
    from indexer import bundle as bundles
    from indexer.build import BuildConfig, build
    from indexer.index import IndexSpec
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig
    from server.runtime import BLAS_THRESHOLD
    from server.searcher import Searcher

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    vectors, queries = benchmark_data(args.data, args.items, HELD_OUT, args.dim, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "v.npz", ids=np.arange(args.items), vectors=vectors)
        build(
            BuildConfig(
                index_root=Path(tmp) / "r",
                precomputed=PrecomputedConfig(Path(tmp) / "v.npz"),
                index=IndexSpec(kind="flat"),
                pipeline=PipelineConfig(progress=False),
                neighbours_k=0,
            )
        )
        bundle = bundles.load_bundle(bundles.current_path(Path(tmp) / "r"))
    rows = []
    for coalesce in (False, True):
        searcher = Searcher(bundle, coalesce=coalesce)
        for threads in (1, 4, 8):
            r = run(searcher, queries, threads, max(1, args.queries // threads))
            rows.append({"coalesce": coalesce, **r})
            print(rows[-1], file=sys.stderr)
    info = machine()
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}. Flat index {args.items} x {args.dim}, "
        f"k=10, FAISS single-threaded per request thread, BLAS threshold {BLAS_THRESHOLD}; {args.data} data.",
        "",
        "| coalescing | threads | QPS | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {'on' if r['coalesce'] else 'off'} | {r['threads']} | {r['qps']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        for r in rows
    ]
    md = "\n".join(lines) + "\n"
    write_results("bench_concurrency", {"machine": info, "data": args.data, "results": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
