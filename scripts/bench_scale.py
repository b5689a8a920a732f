"""Scale benchmark (issue #13): millions of realistic vectors, held-out queries, recall/latency curves.

For each dimension: N realistic vectors (scripts/realistic_vectors.py, calibrated on real EfficientNet-Lite0
embeddings) and held-out queries from the same distribution; exact top-10 by blocked GEMM. This project's
``--index auto`` under a memory budget is built with ``indexer.index.build_index`` (what ``posters-index
build`` runs), then swept over its search parameter; peers (FAISS HNSW, hnswlib, usearch) are built on the
first ``--peers-n`` vectors and swept over efSearch, beside this project's index on the same subset.
Latency: one query at a time, one thread, p50 over the queries. Memory: the index file's size (what a
memory-mapped server pages in) and the build's peak RSS.

    pip install -e ".[bench]"; python scripts/bench_scale.py       # 1M x 1280 and 1M x 512, peers at 1M
    python scripts/bench_scale.py --n 1000000 --dims 1280 --peers-n 100000
Writes benchmarks/bench_scale.json, .md and bench_scale.png.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np
from bench_common import machine, peak_rss_mb, realistic_vectors, write_results

from indexer.index import IndexSpec, build_index, exact_search, recall_at_k, search_parameters

log = logging.getLogger("bench_scale")
K = 10
EF_SWEEP = (16, 32, 64, 128, 256)
HNSW_M = 16
EF_CONSTRUCTION = 64
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)
GB = 1e9


def _latency(search_one: Any, q: np.ndarray) -> tuple[float, np.ndarray]:
    found = np.full((len(q), K), -1, np.int64)
    times = []
    for i, row in enumerate(q):
        t = time.perf_counter()
        found[i] = search_one(row)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000), found


def _file_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def ours(x: np.ndarray, q: np.ndarray, truth: np.ndarray, spec: IndexSpec, label: str) -> dict[str, Any]:
    ids = np.arange(len(x), dtype=np.int64)
    t = time.perf_counter()
    built = build_index(x, ids, spec)
    build_s = time.perf_counter() - t
    p = built.params
    faiss.omp_set_num_threads(1)
    curve = []
    sweep = [v for v in NPROBE_SWEEP if v <= max(p.nlist, 1)] if p.nlist else list(EF_SWEEP)
    for value in sorted({*sweep, p.nprobe or p.ef_search}):
        nprobe, ef = (value, 0) if p.nlist else (0, value)
        params = search_parameters(built.index, p.type, nprobe, ef, p.k_factor)
        index = built.index
        ms, found = _latency(lambda row, index=index, params=params: index.search(row[None], K, params=params)[1][0], q)
        curve.append(
            {
                "param": value,
                "recall@10": recall_at_k(found, truth),
                "p50_ms": ms,
                "stored": value in (p.nprobe, p.ef_search),
            }
        )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    result = {
        "system": label,
        "type": p.type,
        "factory": p.factory,
        "params": p.model_dump(),
        "build_s": build_s,
        "index_bytes": _file_bytes(built.index),
        "curve": curve,
    }
    del built, index
    gc.collect()
    return result


def faiss_hnsw(x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    t = time.perf_counter()
    index.add(x)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    curve = []
    for ef in EF_SWEEP:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        ms, found = _latency(lambda row, params=params: index.search(row[None], K, params=params)[1][0], q)
        curve.append({"param": ef, "recall@10": recall_at_k(found, truth), "p50_ms": ms})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {"system": f"faiss HNSW{HNSW_M}", "build_s": build_s, "index_bytes": _file_bytes(index), "curve": curve}


def hnswlib_peer(x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=HNSW_M, ef_construction=EF_CONSTRUCTION, random_seed=1)
    t = time.perf_counter()
    index.add_items(x, num_threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - t
    index.set_num_threads(1)
    curve = []
    for ef in EF_SWEEP:
        index.set_ef(max(ef, K))
        ms, found = _latency(lambda row: index.knn_query(row[None], k=K)[0][0], q)
        curve.append({"param": ef, "recall@10": recall_at_k(found, truth), "p50_ms": ms})
    size = len(x) * (x.shape[1] * 4 + HNSW_M * 2 * 4 + 8)
    return {"system": f"hnswlib M{HNSW_M}", "build_s": build_s, "index_bytes": size, "curve": curve}


def usearch_peer(x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M, expansion_add=EF_CONSTRUCTION)
    t = time.perf_counter()
    index.add(np.arange(len(x)), x, threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - t
    curve = []
    for ef in EF_SWEEP:
        index.expansion_search = max(ef, K)  # type: ignore[misc, unused-ignore]  # settable; the stub says read-only
        ms, found = _latency(lambda row: index.search(row, K, threads=1).keys, q)
        curve.append({"param": ef, "recall@10": recall_at_k(found, truth), "p50_ms": ms})
    return {"system": f"usearch M{HNSW_M}", "build_s": build_s, "index_bytes": int(index.memory_usage), "curve": curve}


PEERS = {"faiss-hnsw": faiss_hnsw, "hnswlib": hnswlib_peer, "usearch": usearch_peer}


def best_at(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    meeting = [c for c in curve if c["recall@10"] >= target]
    return min(meeting, key=lambda c: c["p50_ms"]) if meeting else None


def markdown(runs: list[dict[str, Any]], target: float) -> str:
    lines = [
        f"| N | D | system | type | build s | index MB | fastest setting with recall@10 >= {target} "
        "| recall@10 | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["results"]:
            best = best_at(r["curve"], target)
            lines.append(
                f"| {run['n']:,} | {run['d']} | {r['system']} | {r.get('type', 'hnsw')} | {r['build_s']:.0f} | "
                f"{r['index_bytes'] / 1e6:.0f} | {best['param'] if best else '-'} | "
                f"{best['recall@10'] if best else max(c['recall@10'] for c in r['curve']):.3f} | "
                f"{best['p50_ms'] if best else float('nan'):.3f} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for r in run["results"]:
            c = r["curve"]
            ax.plot([p["p50_ms"] for p in c], [p["recall@10"] for p in c], marker="o", label=r["system"])
        ax.axhline(0.95, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, one query, one thread (ms)")
        ax.set_ylabel("recall@10 (held-out queries)")
        ax.set_title(f"N = {run['n']:,}, D = {run['d']} (peers at {run['peers_n']:,})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", default="1280,512")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--budget", type=float, default=1.5, help="GB for --index auto")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--peers-n", type=int, help="vectors the peers (and this project's side-by-side index) get")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from realistic_vectors import held_out_queries

    runs = []
    for d in (int(v) for v in args.dims.split(",")):
        t = time.perf_counter()
        x = realistic_vectors(args.n, d, args.seed)
        q = held_out_queries(args.queries, args.n, d, args.seed)
        truth = exact_search(x, q, K)[1]
        log.info("data %d x %d + truth in %.0f s", args.n, d, time.perf_counter() - t)
        spec = IndexSpec(kind="auto", memory_budget=int(args.budget * GB), target_recall=args.target)
        results = [ours(x, q, truth, spec, f"posters-index auto ({args.budget} GB)")]
        peers_n = min(args.peers_n or args.n, args.n)
        sub, sub_truth = x[:peers_n], exact_search(x[:peers_n], q, K)[1]
        if peers_n < args.n:
            results.append(
                ours(sub, q, sub_truth, IndexSpec(kind="auto", target_recall=args.target), "posters-index auto")
            )
        for name in filter(None, args.peers.split(",")):
            log.info("peer %s on %d vectors", name, peers_n)
            results.append(PEERS[name](sub, q, sub_truth))
            gc.collect()
        runs.append({"n": args.n, "d": d, "peers_n": peers_n, "results": results})
        del x, sub
        gc.collect()
    payload = {"machine": machine(), "args": vars(args), "runs": runs, "peak_rss_mb": peak_rss_mb()}
    md = markdown(runs, args.target)
    out = write_results("bench_scale", payload, md)
    plot(runs, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
