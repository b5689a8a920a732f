"""Scale benchmark (issue #13): millions of realistic vectors, held-out queries, recall/latency curves.

For each dimension: N realistic vectors (scripts/realistic_vectors.py, calibrated on real EfficientNet-Lite0
embeddings) and held-out queries from the same distribution; exact top-10 by blocked GEMM. This project's
``--index auto`` under a memory budget is built with ``indexer.index.build_index`` (what ``posters-index
build`` runs), then swept over its search parameter; peers (FAISS HNSW, hnswlib, usearch) are built on the
first ``--peers-n`` vectors and swept over efSearch, beside this project's index on the same subset.
Latency: one query at a time, one thread, p50 over the queries.

This project's build runs in a fresh process (``--worker build``) that loads the vectors, then builds, tunes
on held-out rows and writes the index: its time is the build's wall time, its memory the build's peak RSS
above the loaded vectors. A second fresh process (``--worker load``) reads the written index as the server
does, plainly and memory-mapped (``IO_FLAG_MMAP_IFC``), and reports the RSS it adds (for the mapped read,
also after answering the queries, when the probed lists have been paged in).

    pip install -e ".[bench]"; python scripts/bench_scale.py       # 1M x 1280 and 1M x 512, peers at 1M
    python scripts/bench_scale.py --n 1000000 --dims 1280 --peers-n 100000
    python scripts/bench_scale.py --n 20000 --dims 64 --queries 50 --peers faiss-hnsw --no-save   # smoke run
Vectors, queries and exact truth are kept in --cache (default benchmarks/cache/, not committed) for re-runs.
Writes benchmarks/results/bench_scale-*.json, .md and .png.
"""

from __future__ import annotations

import argparse
import gc
import json
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
from bench_common import ROOT, current_rss_mb, machine, peak_rss_mb, run_worker, write_results

from indexer.bundle.manifest import IndexParams
from indexer.index import MAX_K_FACTOR, IndexSpec, build_index, exact_search, recall_at_k, search_parameters

log = logging.getLogger("bench_scale")
K = 10
EF_SWEEP = (16, 32, 64, 128, 256)
HNSW_M = 16
EF_CONSTRUCTION = 64
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)
GB = 1e9
LATENCY_TICKS_MS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


def _latency(search_one: Any, q: np.ndarray) -> tuple[float, np.ndarray]:
    found = np.full((len(q), K), -1, np.int64)
    times = []
    for i, row in enumerate(q):
        t = time.perf_counter()
        found[i] = search_one(row)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000), found


def _file_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss", dir=ROOT / "benchmarks") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def cached_data(cache: Path, n: int, d: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors memory-mapped from the cache, held-out queries, their exact top-K rows), made once per key."""
    from realistic_vectors import held_out_queries
    from realistic_vectors import realistic_vectors as generate

    cache.mkdir(parents=True, exist_ok=True)
    key = f"{n}x{d}-seed{seed}"
    x_path, q_path, t_path = (
        cache / f"{name}-{key}.npy" for name in ("vectors", f"queries{queries}", f"truth{queries}")
    )
    if not x_path.exists():
        t = time.perf_counter()
        partial = x_path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, d))
        generate(n, d, seed, out=out)
        out.flush()
        del out
        partial.rename(x_path)
        log.info("generated %d x %d in %.0f s", n, d, time.perf_counter() - t)
    x = np.load(x_path, mmap_mode="r")
    if not q_path.exists() or not t_path.exists():
        t = time.perf_counter()
        q = held_out_queries(queries, n, d, seed)
        np.save(q_path, q)
        np.save(t_path, exact_search(x, q, K)[1])
        log.info("exact truth of %d queries in %.0f s", queries, time.perf_counter() - t)
    return x, np.load(q_path), np.load(t_path)


def build_worker(x_path: str, rows: int, spec_json: str, index_path: str) -> dict[str, Any]:
    """In a fresh process: load ``rows`` vectors, build and tune the index, write it; time and memory."""
    x = np.array(np.load(x_path, mmap_mode="r")[:rows])  # a copy in memory (a contiguous slice would stay mapped)
    gc.collect()
    base = current_rss_mb()
    # reset the peak RSS: the copy out of the memory-mapped file (mapped pages + copy) is not the build's
    Path("/proc/self/clear_refs").write_text("5")
    t = time.perf_counter()
    built = build_index(x, np.arange(len(x), dtype=np.int64), IndexSpec(**json.loads(spec_json)))
    build_s = time.perf_counter() - t
    peak = _peak_since_reset_mb()
    faiss.write_index(built.index, index_path)
    return {"build_s": build_s, "build_peak_above_data_mb": peak - base, "params": built.params.model_dump()}


def _peak_since_reset_mb() -> float:
    """VmHWM (peak resident set) of this process, in MiB, since the last write of 5 to /proc/self/clear_refs."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def load_worker(index_path: str, q_path: str, kind: str, nprobe: int, ef: int, k_factor: int) -> dict[str, Any]:
    """In a fresh process: the RSS a read of the index adds, plainly and memory-mapped (then after searching)."""
    base = current_rss_mb()
    index = faiss.read_index(index_path)
    plain = current_rss_mb() - base
    del index
    gc.collect()
    base = current_rss_mb()
    index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP_IFC)
    mapped = current_rss_mb() - base
    faiss.omp_set_num_threads(1)
    params = search_parameters(index, kind, nprobe, ef, k_factor)
    for row in np.load(q_path):
        index.search(row[None], K, params=params)
    return {"rss_plain_mb": plain, "rss_mmap_mb": mapped, "rss_mmap_after_queries_mb": current_rss_mb() - base}


def ours(
    x_path: Path, rows: int, q_path: Path, q: np.ndarray, truth: np.ndarray, spec: IndexSpec, label: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        index_path = str(Path(tmp) / "index.faiss")
        spec_json = json.dumps({k: v for k, v in vars(spec).items() if v is not None})
        built = run_worker(Path(__file__), ["build", str(x_path), str(rows), spec_json, index_path], timeout=7200)
        p = IndexParams.model_validate(built["params"])
        memory = run_worker(
            Path(__file__),
            ["load", index_path, str(q_path), p.type, str(p.nprobe), str(p.ef_search), str(p.k_factor)],
        )
        index_bytes = os.path.getsize(index_path)
        index = faiss.read_index(index_path)
    faiss.omp_set_num_threads(1)
    curve = []
    sweep = [v for v in NPROBE_SWEEP if v <= max(p.nlist, 1)] if p.nlist else list(EF_SWEEP)
    # ivf-pq: the nprobe sweep at the tuned k_factor and at twice it (re-ranking more candidates)
    factors = [p.k_factor, min(2 * p.k_factor, MAX_K_FACTOR)] if p.k_factor else [0]
    for k_factor in factors:
        for value in sorted({*sweep, p.nprobe or p.ef_search}):
            nprobe, ef = (value, 0) if p.nlist else (0, value)
            params = search_parameters(index, p.type, nprobe, ef, k_factor)
            ms, found = _latency(
                lambda row, params=params, index=index: index.search(row[None], K, params=params)[1][0], q
            )
            curve.append(
                {
                    "param": value,
                    "k_factor": k_factor,
                    "recall@10": recall_at_k(found, truth),
                    "p50_ms": ms,
                    "stored": value in (p.nprobe, p.ef_search) and k_factor == p.k_factor,
                }
            )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    log.info("%s: %s built in %.0f s, %s", label, p.factory, built["build_s"], memory)
    del index
    gc.collect()
    return {
        "system": label,
        "type": p.type,
        "factory": p.factory,
        "params": p.model_dump(),
        "build_s": built["build_s"],
        "build_peak_above_data_mb": built["build_peak_above_data_mb"],
        "index_bytes": index_bytes,
        **memory,
        "curve": curve,
    }


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


def _setting(point: dict[str, Any] | None) -> str:
    if point is None:
        return "-"
    return f"{point['param']}, k_factor {point['k_factor']}" if point.get("k_factor") else str(point["param"])


def markdown(runs: list[dict[str, Any]], target: float) -> str:
    lines = [
        f"| N | D | system | type | build s | index MB (file) | loaded RSS MiB (plain / mmap) | fastest setting with "
        f"recall@10 >= {target} | recall@10 | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["results"]:
            best = best_at(r["curve"], target)
            rss = f"{r['rss_plain_mb']:.0f} / {r['rss_mmap_mb']:.0f}" if "rss_plain_mb" in r else "-"
            lines.append(
                f"| {r.get('n', run['n']):,} | {run['d']} | {r['system']} | {r.get('type', 'hnsw')} | "
                f"{r['build_s']:.0f} | {r['index_bytes'] / 1e6:.0f} | {rss} | {_setting(best)} | "
                f"{best['recall@10'] if best else max(c['recall@10'] for c in r['curve']):.3f} | "
                f"{best['p50_ms'] if best else float('nan'):.3f} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, target: float) -> None:
    """Recall/latency curve per system and dimension; the star marks the setting the build tuned and stored."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for r in run["results"]:
            for k_factor in sorted({c.get("k_factor", 0) for c in r["curve"]}):
                c = [point for point in r["curve"] if point.get("k_factor", 0) == k_factor]
                label = f"{r['system']}, k_factor {k_factor}" if k_factor else r["system"]
                label += f", {r['index_bytes'] / GB:.2f} GB"
                if r.get("n", run["n"]) != run["n"]:
                    label += f" (N = {r['n']:,})"
                ax.plot([p["p50_ms"] for p in c], [p["recall@10"] for p in c], marker="o", label=label)
                stored = [p for p in c if p.get("stored")]
                if stored:
                    ax.plot(stored[0]["p50_ms"], stored[0]["recall@10"], marker="*", markersize=14, color="black")
        ax.axhline(target, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([t for t in LATENCY_TICKS_MS if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
        ax.set_xlabel("p50 latency, one query, one thread (ms)")
        ax.set_ylabel("recall@10 (held-out queries)")
        ax.set_title(f"N = {run['n']:,}, D = {run['d']} (peers at {run['peers_n']:,})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _worker(name: str, argv: list[str]) -> int:
    """``--worker build X_PATH ROWS SPEC_JSON INDEX_PATH`` or ``--worker load INDEX_PATH Q_PATH KIND NPROBE EF KF``:
    one JSON line on stdout (bench_common.run_worker reads it)."""
    if name == "build":
        result = build_worker(argv[0], int(argv[1]), argv[2], argv[3])
    else:
        nprobe, ef, k_factor = map(int, argv[3:6])
        result = load_worker(argv[0], argv[1], argv[2], nprobe, ef, k_factor)
    print(json.dumps(result))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return _worker(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", default="1280,512")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--budget", type=float, default=1.5, help="GB for --index auto")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--peers-n", type=int, help="vectors the peers (and this project's side-by-side index) get")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument(
        "--families",
        default="",
        help="more of this project's index types to build beside auto, e.g. hnsw-sq8 (M and efConstruction "
        "as the peers'), on all N vectors",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache", help="vectors, queries, truth")
    ap.add_argument("--no-save", action="store_true", help="print only (no benchmarks/results files)")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="redraw the table and PNG of a saved run, then exit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.replot:
        saved = json.loads(args.replot.read_text())
        print(markdown(saved["runs"], saved["args"]["target"]))
        plot(saved["runs"], args.replot.with_suffix(".png"), saved["args"]["target"])
        return 0
    (ROOT / "benchmarks").mkdir(exist_ok=True)
    runs = []
    for d in (int(v) for v in args.dims.split(",")):
        x, q, truth = cached_data(args.cache, args.n, d, args.queries, args.seed)
        key = f"{args.n}x{d}-seed{args.seed}"
        x_path, q_path = args.cache / f"vectors-{key}.npy", args.cache / f"queries{args.queries}-{key}.npy"
        spec = IndexSpec(kind="auto", memory_budget=int(args.budget * GB), target_recall=args.target)
        results = [ours(x_path, args.n, q_path, q, truth, spec, f"posters-index auto ({args.budget} GB)")]
        for kind in filter(None, args.families.split(",")):
            family = IndexSpec(
                kind=kind, target_recall=args.target, hnsw_m=HNSW_M, ef_construction=EF_CONSTRUCTION, seed=spec.seed
            )
            results.append(ours(x_path, args.n, q_path, q, truth, family, f"posters-index {kind}"))
        peers_n = min(args.peers_n or args.n, args.n)
        sub = np.ascontiguousarray(x[:peers_n])
        sub_truth = truth if peers_n == args.n else exact_search(sub, q, K)[1]
        if peers_n < args.n:
            side = ours(x_path, peers_n, q_path, q, sub_truth, IndexSpec(kind="auto", target_recall=args.target),
                        "posters-index auto")  # fmt: skip
            results.append({**side, "n": peers_n})
        for name in filter(None, args.peers.split(",")):
            log.info("peer %s on %d vectors", name, peers_n)
            results.append({**PEERS[name](sub, q, sub_truth), "n": peers_n})
            log.info("%s", results[-1])
            gc.collect()
        runs.append({"n": args.n, "d": d, "peers_n": peers_n, "results": results})
        del x, sub
        gc.collect()
    payload = {"machine": machine(), "args": {**vars(args), "cache": str(args.cache)}, "runs": runs,
               "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    md = markdown(runs, args.target)
    print(md)
    if not args.no_save:
        out = write_results("bench_scale", payload, md)
        plot(runs, out.with_suffix(".png"), args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
