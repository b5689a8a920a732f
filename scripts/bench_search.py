#!/usr/bin/env python3
"""Search benchmark: the notebooks' dense cosine matrix vs the searcher vs the gRPC service.

On the same seeded L2-normalized vectors (--data realistic, the default: scripts/realistic_vectors.py, with the
statistics of real efficientnet_lite0 embeddings; --data clustered: the old isotropic clusters, on which IVF
reaches recall 1.0 at nprobe 1), for each N and D:
  (a) dense   float64 X @ X.T, per item query argsort of the row (the notebooks' predict_by_id);
              skipped where the matrix would not fit in memory (the row argsort alone is still timed)
  (b) searcher the bundle built by the indexer, queried in-process
  (c) grpc    posters-serve over loopback (separate process), sequential calls
  (d) floor   an empty unary call (grpc.health.v1 Check) on the same server stack
Each method runs in its own process (clean peak RSS). Prints a Markdown table and writes
JSON + Markdown + PNG under benchmarks/results/.

  python scripts/bench_search.py                       # N in 5k,20k,60k x D in 512,1280 (~15 min)
  python scripts/bench_search.py --sizes 5000 --dims 512 --queries 300    # quick
  python scripts/bench_search.py --data clustered                        # the old data, to compare with old runs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import (
    DATA_KINDS,
    ROOT,
    benchmark_data,
    current_rss_mb,
    machine,
    peak_rss_mb,
    percentiles_ms,
    run_worker,
    time_calls,
    write_results,
)

K = 10
HELD_OUT = 1000
DENSE_MEMORY_FRACTION = 0.6  # run the dense method only if N*N*8 bytes fits in this share of RAM
SCRIPT = Path(__file__).resolve()


def _data(n: int, d: int, data: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, held = benchmark_data(data, n, HELD_OUT, d, seed=n + d)
    return x, held, np.arange(n, dtype=np.int64) * 3 + 1


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ x.T
    return np.argsort(-sims, axis=1)[:, :k]


def worker_dense(n: int, d: int, queries: int, data: str) -> dict:
    x, held, ids = _data(n, d, data)
    rng = np.random.default_rng(1)
    rows = rng.integers(n, size=queries + 20)
    base = current_rss_mb()
    matrix_bytes = n * n * 8
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out: dict = {"method": "dense", "n": n, "d": d, "matrix_gb": round(matrix_bytes / 1e9, 2)}
    x64 = x.astype(np.float64)
    if matrix_bytes <= DENSE_MEMORY_FRACTION * total:
        t = time.perf_counter()
        xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        sim = xn @ xn.T
        out["build_s"] = round(time.perf_counter() - t, 3)
        out["rss_mb"] = round(peak_rss_mb() - base, 1)

        def item(i: int) -> list:
            r = rows[i]
            order = np.argsort(-sim[r])[: K + 1]
            return [int(ids[o]) for o in order if o != r][:K]

        out["item"] = percentiles_ms(time_calls(item, queries))
    else:
        out["skipped"] = f"N*N*8 = {matrix_bytes / 2**30:.1f} GiB does not fit in {total / 2**30:.0f} GiB"
        fake_row = rng.normal(size=n)
        out["item_row_argsort_only"] = percentiles_ms(time_calls(lambda i: np.argsort(-fake_row)[: K + 1], queries))
    held64 = held.astype(np.float64)
    out["vector"] = percentiles_ms(time_calls(lambda i: np.argsort(-(x64 @ held64[i % HELD_OUT]))[:K], queries))
    out["recall"] = 1.0
    return out


def worker_build(n: int, d: int, root: str, data: str) -> dict:
    from indexer.build import BuildConfig, build
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig

    x, _, ids = _data(n, d, data)
    src = Path(root) / "vectors.npz"
    np.savez(src, ids=ids, vectors=x)
    report = build(
        BuildConfig(
            index_root=Path(root) / "index",
            precomputed=PrecomputedConfig(src),
            pipeline=PipelineConfig(progress=False),
            neighbours_k=100,
        )
    )
    return {"method": "build", "n": n, "d": d, "phases": {k: round(v, 3) for k, v in report.phases.items()}}


def worker_searcher(n: int, d: int, queries: int, root: str, data: str) -> dict:
    from indexer import bundle as bundles
    from server.searcher import Searcher
    from server.types import SearchOptions

    x, held, ids = _data(n, d, data)
    base = current_rss_mb()
    b = bundles.load_bundle(bundles.current_path(Path(root) / "index"))
    s = Searcher(b)
    rss = current_rss_mb() - base
    rng = np.random.default_rng(1)
    item_ids = ids[rng.integers(n, size=queries + 20)]
    opts = SearchOptions(k=K)
    out = {
        "method": "searcher",
        "n": n,
        "d": d,
        "index": b.manifest.index.type,
        "nprobe": b.manifest.index.nprobe,
        "rss_mb": round(rss, 1),
    }
    out["item"] = percentiles_ms(time_calls(lambda i: s.similar_to_item(int(item_ids[i]), opts), queries))
    # any exclusion bypasses the neighbour table; excluding the item itself (excluded anyway) changes no answer
    out["item_via_index"] = percentiles_ms(
        time_calls(
            lambda i: s.similar_to_item(int(item_ids[i]), SearchOptions(k=K, exclude_ids=(int(item_ids[i]),))),
            queries,
        )
    )
    out["vector"] = percentiles_ms(time_calls(lambda i: s.search_vector(held[i % HELD_OUT], opts), queries))
    truth = ids[_exact_top(x, held, K)]
    found = [[h.item.item_id for h in s.search_vector(q, opts).hits] for q in held]
    out["recall"] = round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4)
    return out


def worker_grpc(n: int, d: int, queries: int, root: str, data: str) -> dict:
    import psutil
    from grpc_health.v1 import health_pb2

    from server.client import PosterClient
    from server.types import SearchOptions

    _, held, ids = _data(n, d, data)
    port_file = Path(root) / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "--index",
            str(Path(root) / "index"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--no-image-search",
            "--poll",
            "3600",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("posters-serve did not start")
            time.sleep(0.1)
        target = f"127.0.0.1:{int(port_file.read_text())}"
        rng = np.random.default_rng(1)
        item_ids = ids[rng.integers(n, size=queries + 20)]
        vecs = [held[i % HELD_OUT].tolist() for i in range(queries + 20)]
        opts = SearchOptions(k=K)
        with PosterClient(target) as c:
            c.wait_until_serving(timeout=300)  # listening comes first; the bundle loads after
            check = health_pb2.HealthCheckRequest(service="")
            out = {
                "method": "grpc",
                "n": n,
                "d": d,
                "rss_mb": round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1),
            }
            # interleave the three call kinds in rounds so that machine noise hits them alike
            floor, item, vector = [], [], []
            for _ in range(3):
                floor += time_calls(lambda i: c._health.Check(check, timeout=10), queries // 3)
                item += time_calls(lambda i: c.similar(int(item_ids[i]), opts), queries // 3)
                vector += time_calls(lambda i: c.vector(vecs[i], opts), queries // 3)
            out["floor"] = percentiles_ms(floor)
            out["item"] = percentiles_ms(item)
            out["vector"] = percentiles_ms(vector)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _row(r: dict, key: str) -> str:
    v = r.get(key)
    return f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f}" if v else "–"


def markdown(results: list[dict], info: dict) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB; numpy {info['numpy']}, "
        f"faiss {info['faiss']}; OPENBLAS_CORETYPE={info.get('openblas_coretype')}; {info['date']}. "
        f"Data: {info.get('data', 'clustered')} vectors. "
        f"Latencies in ms (p50 / p99), k={K}, sequential.",
        "",
        "| N | D | method | build s | memory MB | item query | vector query | recall@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        build = r.get("build_s", "")
        if r["method"] == "dense" and "skipped" in r:
            lines.append(
                f"| {r['n']} | {r['d']} | dense | – ({r['skipped']}) | {r['matrix_gb'] * 1000:.0f} (needed) "
                f"| {_row(r, 'item_row_argsort_only')} (row argsort only) | {_row(r, 'vector')} | 1.0 |"
            )
            continue
        if r["method"] == "dense":
            lines.append(
                f"| {r['n']} | {r['d']} | dense float64 | {build} | {r['rss_mb']} | {_row(r, 'item')} "
                f"| {_row(r, 'vector')} | 1.0 |"
            )
        elif r["method"] == "searcher":
            ph = r["phases"]
            probe = f", nprobe {r['nprobe']}" if r["nprobe"] else ""
            lines.append(
                f"| {r['n']} | {r['d']} | searcher ({r['index']}{probe}) "
                f"| index {ph['index']:.2f} + table {ph.get('neighbours', 0):.2f} | {r['rss_mb']} "
                f"| {_row(r, 'item')} (index path {_row(r, 'item_via_index')}) | {_row(r, 'vector')} | {r['recall']} |"
            )
        elif r["method"] == "grpc":
            lines.append(
                f"| {r['n']} | {r['d']} | gRPC service | | {r['rss_mb']} (server) | {_row(r, 'item')} "
                f"| {_row(r, 'vector')} | |"
            )
            lines.append(f"| {r['n']} | {r['d']} | gRPC floor (empty call) | | | {_row(r, 'floor')} | | |")
    return "\n".join(lines) + "\n"


def ratios(results: list[dict]) -> list[str]:
    out = []
    by = {(r["method"], r["n"], r["d"]): r for r in results}
    for (method, n, d), r in by.items():
        if method != "searcher":
            continue
        dense, grpc_ = by.get(("dense", n, d)), by.get(("grpc", n, d))
        dense_item = (dense or {}).get("item") or (dense or {}).get("item_row_argsort_only")
        if dense_item:
            out.append(
                f"N={n} D={d}: in-process item p50 / dense row lookup p50 = "
                f"{r['item']['p50_ms'] / dense_item['p50_ms']:.3f}"
            )
        if grpc_ and dense_item:
            out.append(
                f"N={n} D={d}: gRPC item p50 / dense row lookup p50 = "
                f"{grpc_['item']['p50_ms'] / dense_item['p50_ms']:.2f}; gRPC item p50 / floor p50 = "
                f"{grpc_['item']['p50_ms'] / grpc_['floor']['p50_ms']:.2f}"
            )
        if dense and "build_s" in dense:
            ph = r["phases"]
            out.append(
                f"N={n} D={d}: dense build / index build = {dense['build_s'] / max(ph['index'], 1e-3):.0f}x; "
                f"dense build / (index + neighbour table) = "
                f"{dense['build_s'] / max(ph['index'] + ph.get('neighbours', 0), 1e-3):.1f}x"
            )
        if dense:
            total_mb = r["rss_mb"]
            out.append(
                f"N={n} D={d}: searcher memory {total_mb:.0f} MB = "
                f"{100 * total_mb / (dense['matrix_gb'] * 1000):.2f}% of the float64 dense matrix"
            )
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in results})
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for label, method, key in (
            ("dense row argsort", "dense", "item"),
            ("searcher item", "searcher", "item"),
            ("searcher vector", "searcher", "vector"),
            ("gRPC item", "grpc", "item"),
            ("gRPC vector", "grpc", "vector"),
            ("gRPC floor", "grpc", "floor"),
        ):
            pts = sorted(
                (r["n"], stats["p50_ms"])
                for r in results
                if r["method"] == method and r["d"] == d
                for stats in [r.get(key) or r.get("item_row_argsort_only")]
                if stats
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="items N", ylabel="p50 latency (ms)", title=f"D = {d}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5000,20000,60000")
    p.add_argument("--dims", default="512,1280")
    p.add_argument("--queries", type=int, default=1500)
    p.add_argument("--data", choices=DATA_KINDS, default="realistic", help="benchmark vectors (default realistic)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, *rest = args.worker
        workers: dict[str, Callable[..., dict]] = {
            "dense": worker_dense,
            "build": worker_build,
            "searcher": worker_searcher,
            "grpc": worker_grpc,
        }
        fn = workers[kind]
        conv = [int(v) if v.isdigit() else v for v in rest]
        print(json.dumps(fn(*conv, data=args.data)))
        return 0
    # numpy's bundled OpenBLAS picks its AVX-512 (SkylakeX) kernels on these machines and segfaults in the
    # float64 GEMM of the dense baseline (20k x 512 and up); its Haswell kernels work. Every method runs
    # with the same setting so the comparison stays fair; override by exporting OPENBLAS_CORETYPE.
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "Haswell"),
    }
    results = []
    info = {**machine(), "openblas_coretype": env["OPENBLAS_CORETYPE"], "data": args.data}
    data = ["--data", args.data]
    for d in map(int, args.dims.split(",")):
        for n in map(int, args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                print(f"N={n} D={d}: dense ...", file=sys.stderr)
                results.append(run_worker(SCRIPT, ["dense", str(n), str(d), str(args.queries), *data], env))
                print(f"N={n} D={d}: build ...", file=sys.stderr)
                built = run_worker(SCRIPT, ["build", str(n), str(d), tmp, *data], env)
                print(f"N={n} D={d}: searcher ...", file=sys.stderr)
                s = run_worker(SCRIPT, ["searcher", str(n), str(d), str(args.queries), tmp, *data], env)
                s["phases"] = built["phases"]
                results.append(s)
                print(f"N={n} D={d}: grpc ...", file=sys.stderr)
                results.append(run_worker(SCRIPT, ["grpc", str(n), str(d), str(args.queries), tmp, *data], env))
    md = markdown(results, info) + "\n" + "\n".join(f"- {line}" for line in ratios(results)) + "\n"
    path = write_results("bench_search", {"machine": info, "k": K, "results": results}, md)
    plot(results, path.with_suffix(".png"))
    print(md)
    print(f"results: {path} (+ .md, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
