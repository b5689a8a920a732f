#!/usr/bin/env python3
"""IVF-PQ grid (issue #13): which sub-quantizer count, nprobe and k_factor reach recall@10 on held-out queries.

On the cached realistic vectors of scripts/bench_scale.py (same generator, seed, queries and exact truth), builds
``IDMap2,IVF<nlist>,PQ<m>x4fs,Refine(SQ8)`` (what ``posters-index build --index ivf-pq`` builds) for each nlist
and each sub-quantizer count, then measures every (nprobe, k_factor) pair: recall@10 and p50 latency of one
query at a time on one thread. This is the evidence behind ivf-pq's default pq_m = D/8.

    python scripts/bench_ivfpq.py --n 1000000 --dim 1280                  # D/8 and D/16, nlist 1000 (~5 min)
    python scripts/bench_ivfpq.py --n 1000000 --dim 512 --nlists 1000,2048
    python scripts/bench_ivfpq.py --n 20000 --dim 64 --queries 50 --no-save   # smoke run
Writes benchmarks/results/bench_ivfpq-*.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np
from bench_common import ROOT, machine, write_results
from bench_scale import K, cached_data

from indexer.index import TRAIN_POINTS_PER_CENTROID, default_nlist, default_pq_m, recall_at_k, search_parameters

log = logging.getLogger("bench_ivfpq")
ADD_BLOCK = 65_536


def build(x: np.ndarray, nlist: int, pq_m: int, seed: int) -> tuple[faiss.Index, float]:
    index = faiss.index_factory(x.shape[1], f"IDMap2,IVF{nlist},PQ{pq_m}x4fs,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_train = min(len(x), nlist * TRAIN_POINTS_PER_CENTROID)
    index.train(np.ascontiguousarray(x[np.sort(rng.choice(len(x), size=n_train, replace=False))]))
    for start in range(0, len(x), ADD_BLOCK):
        stop = min(len(x), start + ADD_BLOCK)
        index.add_with_ids(np.ascontiguousarray(x[start:stop]), np.arange(start, stop, dtype=np.int64))
    return index, time.perf_counter() - t


def sweep(
    index: faiss.Index, q: np.ndarray, truth: np.ndarray, nprobes: list[int], factors: list[int]
) -> list[dict[str, Any]]:
    faiss.omp_set_num_threads(1)
    points = []
    for nprobe in nprobes:
        for k_factor in factors:
            params = search_parameters(index, "ivf-pq", nprobe, 0, k_factor)
            found = np.empty((len(q), K), np.int64)
            times = []
            for i, row in enumerate(q):
                t = time.perf_counter()
                found[i] = index.search(row[None], K, params=params)[1][0]
                times.append(time.perf_counter() - t)
            points.append(
                {
                    "nprobe": nprobe,
                    "k_factor": k_factor,
                    "recall@10": recall_at_k(found, truth),
                    "p50_ms": float(np.median(times) * 1000),
                }
            )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return points


def markdown(runs: list[dict[str, Any]], target: float) -> str:
    lines = [
        f"| N | D | nlist | pq_m | build s | nprobe | k_factor | recall@10 | p50 ms | meets {target} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for p in run["points"]:
            lines.append(
                f"| {run['n']:,} | {run['d']} | {run['nlist']} | {run['pq_m']} | {run['build_s']:.0f} | {p['nprobe']} "
                f"| {p['k_factor']} | {p['recall@10']:.3f} | {p['p50_ms']:.3f} | "
                f"{'yes' if p['recall@10'] >= target else ''} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--nlists", default="", help="comma-separated (default: ~sqrt(N), as the build)")
    ap.add_argument("--dims-per-subquantizer", default="8,16", help="pq_m = D / each of these")
    ap.add_argument("--nprobes", default="16,32,64")
    ap.add_argument("--k-factors", default="4,8,16,32")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache", help="vectors, queries, truth")
    ap.add_argument("--no-save", action="store_true", help="print only (no benchmarks/results files)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    x, q, truth = cached_data(args.cache, args.n, args.dim, args.queries, args.seed)
    nlists = [int(v) for v in args.nlists.split(",") if v] or [default_nlist(args.n)]
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    runs = []
    for nlist in nlists:
        for per in ints(args.dims_per_subquantizer):
            pq_m = default_pq_m(args.dim, per)
            index, build_s = build(x, nlist, pq_m, args.seed)
            points = sweep(index, q, truth, [p for p in ints(args.nprobes) if p <= nlist], ints(args.k_factors))
            log.info("nlist %d pq_m %d built in %.0f s", nlist, pq_m, build_s)
            runs.append(
                {"n": args.n, "d": args.dim, "nlist": nlist, "pq_m": pq_m, "build_s": build_s, "points": points}
            )
            del index
    md = markdown(runs, args.target)
    print(md)
    if not args.no_save:
        write_results(
            "bench_ivfpq", {"machine": machine(), "args": {**vars(args), "cache": str(args.cache)}, "runs": runs}, md
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
