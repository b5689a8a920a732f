#!/usr/bin/env python3
"""Concurrency benchmark: flat-index vector queries from T threads, with and without coalescing.

In-process, seeded vectors (--data realistic, the default, or clustered: scripts/bench_common.benchmark_data)
and the same BLAS threshold as posters-serve; each thread
runs FAISS single-threaded, as request threads do. Prints QPS and p50/p99 per setting and writes
JSON + Markdown under benchmarks/results/.

  python scripts/bench_concurrency.py                 # 20k x 1280 flat, 1/4/8 threads (~1 min)
  python scripts/bench_concurrency.py --items 5000 --dim 512

With --processes (e.g. 1,2) it benchmarks posters-serve itself over gRPC instead, one server per count side by
side in one run (scripts/bench_served.py): item queries and held-out vector queries sent packed
(vector_f32le) and repeated, from 1/4/16 client threads with one connection each; QPS, p50/p99 and the
server's CPU per request (psutil cpu_times of the server processes before/after / requests), RSS per process.

  python scripts/bench_concurrency.py --processes 1,2                        # 20k x 1280 IVF, 5 s per setting
  python scripts/bench_concurrency.py --processes 1,2 --items 500 --dim 64 --seconds 0.5 --no-save   # smoke
"""

from __future__ import annotations

import argparse
import json
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

import bench_served
import faiss
import numpy as np
from bench_common import DATA_KINDS, benchmark_data, machine, percentiles_ms, write_results

if TYPE_CHECKING:
    from server.searcher import Searcher

HELD_OUT = 1000  # query vectors, not in the index
SERVED_THREADS = "1,4,16"
SERVED_SECONDS = 5.0
SLOTS_PER_CLIENT_THREAD = 2  # --workers of the benchmarked server: no call is refused for a full cost class


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
    p.add_argument("--processes", help="benchmark posters-serve over gRPC with these process counts, e.g. 1,2")
    p.add_argument("--threads", default=SERVED_THREADS, help="client threads per setting (--processes)")
    p.add_argument("--seconds", type=float, default=SERVED_SECONDS, help="timed seconds per setting (--processes)")
    p.add_argument("--index", choices=("flat", "ivf"), default="ivf", help="index of the served bundle (--processes)")
    p.add_argument("--no-save", action="store_true", help="print only; write no result files (smoke runs)")
    args = p.parse_args()
    if args.processes:
        return served_main(args)
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
    if not args.no_save:
        write_results("bench_concurrency", {"machine": info, "data": args.data, "results": rows}, md)
    print(md)
    return 0


def _build(root: Path, folder: Path, vectors: np.ndarray, kind: str) -> None:
    from indexer.build import BuildConfig, build
    from indexer.index import IndexSpec
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig

    np.savez(folder / "v.npz", ids=np.arange(len(vectors)), vectors=vectors)
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(folder / "v.npz"),
            index=IndexSpec(kind=kind),
            pipeline=PipelineConfig(progress=False),
        )
    )


def served_main(args: argparse.Namespace) -> int:
    """posters-serve --processes P for each P, side by side: QPS, latency, server CPU per request, RSS."""
    counts = [int(x) for x in args.processes.split(",")]
    threads = [int(x) for x in args.threads.split(",")]
    vectors, queries = benchmark_data(args.data, args.items, HELD_OUT, args.dim, seed=5)
    rng = np.random.default_rng(5)
    loads = bench_served.workloads(rng.integers(0, args.items, size=HELD_OUT), queries)
    rows: list[dict] = []
    memory: dict[int, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"building a {args.index} bundle: {args.items} x {args.dim} ...", file=sys.stderr)
        _build(folder / "root", folder, vectors, args.index)
        for count in counts:
            with bench_served.started(folder / "root", count, SLOTS_PER_CLIENT_THREAD * max(threads), folder) as srv:
                for load in loads:
                    for t in threads:
                        rows.append({"processes": count, **bench_served.measure(srv, load, t, args.seconds)})
                        print(json.dumps(rows[-1]), file=sys.stderr)
                memory[count] = srv.memory()
    info = machine()
    md = _served_markdown(args, counts, threads, loads, rows, memory, info)
    payload = {"machine": info, "data": args.data, "index": args.index, "results": rows, "memory": memory}
    if not args.no_save:
        write_results("bench_concurrency_processes", payload, md)
    print(md)
    return 1 if any(r["failed"] for r in rows) else 0


def _served_markdown(
    args: argparse.Namespace,
    counts: list[int],
    threads: list[int],
    loads: list[bench_served.Workload],
    rows: list[dict],
    memory: dict[int, list[dict[str, float]]],
    info: dict,
) -> str:
    def cell(count: int, load: str, t: int) -> dict:
        return next(r for r in rows if (r["processes"], r["workload"], r["threads"]) == (count, load, t))

    head = " | ".join(f"QPS ({c}p) | CPU ms/req ({c}p) | p50 ms ({c}p)" for c in counts)
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}. posters-serve over gRPC on loopback, "
        f"{args.index} bundle {args.items} x {args.dim} ({args.data} data), k={bench_served.K}, "
        f"{args.seconds:g} s per setting; client threads share the machine with the server, one connection each. "
        "CPU ms/req = server processes' CPU time (user + system) / requests answered.",
        "",
        f"| workload | client threads | {head} |",
        "|---|---|" + "---|---|---|" * len(counts),
    ]
    for load in loads:
        for t in threads:
            cells = []
            for c in counts:
                r = cell(c, load.name, t)
                cells.append(f"{r['qps']:.0f} | {r['server_cpu_ms_per_request']:.3f} | {r['p50_ms']:.2f}")
            lines.append(f"| {load.name} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "Server RSS after the run (MB, shared in brackets):", ""]
    for c in counts:
        procs = ", ".join(f"pid {m['pid']} {m['rss_mb']:.0f} ({m['shared_mb']:.0f})" for m in memory[c])
        lines.append(f"- {c} process(es): {procs}")
    failed = sum(r["failed"] for r in rows)
    lines += ["", f"Failed requests: {failed}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
