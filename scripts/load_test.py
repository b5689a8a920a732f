#!/usr/bin/env python3
"""Load test: C concurrent clients x M mixed requests against posters-serve on loopback,
with a hot reload (new bundle + SIGHUP) in the middle. Bounded in count and time.

Pass/fail: zero failed requests, the reload is observed (with --processes N: afterwards every worker,
reached over fresh connections, serves the new bundle), server RSS growth bounded.
Reports p50/p99 per RPC, QPS and server RSS (with --processes, summed over the supervisor and its workers);
writes JSON + Markdown under benchmarks/results/.

  python scripts/load_test.py                          # 8 clients x 12,500 requests = 100k (~2 min)
  python scripts/load_test.py --clients 4 --requests 2000 --items 5000
  python scripts/load_test.py --processes 2            # the same against 2 SO_REUSEPORT workers
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from bench_common import ROOT, clustered_vectors, machine, percentiles_ms, write_results

MIX = (
    ("SimilarToItem", 0.45),
    ("SearchByVector", 0.25),
    ("SimilarToItems", 0.1),
    ("FindItems", 0.05),
    ("BatchSearch", 0.05),
    ("GetItems", 0.05),
    ("GetIndexInfo", 0.05),
)
READY_TIMEOUT_SECONDS = 120.0  # every worker must be serving its bundle within this (before and after the load)
RSS_GROWTH_LIMIT = 0.15  # after warm-up, RSS may grow at most 15 % (plus 32 MB) over the run


def publish(root: Path, n: int, d: int, seed: int, tmp: Path) -> str:
    from indexer.build import BuildConfig, build
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig

    x = clustered_vectors(n, d, seed=seed)
    np.savez(tmp / f"v{seed}.npz", ids=np.arange(1, n + 1), vectors=x)
    titles = tmp / "movies.csv"
    if not titles.exists():
        titles.write_text(
            "movieId,title,genres\n" + "".join(f"{i},Movie {i} ({1950 + i % 70}),Drama\n" for i in range(1, n + 1))
        )
    from indexer.catalog import CatalogConfig

    return build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp / f"v{seed}.npz"),
            catalog=CatalogConfig(tmp, titles),
            pipeline=PipelineConfig(progress=False),
            neighbours_k=50,
        )
    ).build_id


def workers_serving(target: str, workers: set[int], timeout: float = READY_TIMEOUT_SECONDS) -> dict[int, str]:
    """Over fresh connections (SO_REUSEPORT spreads them), each worker's process id -> the bundle it serves, once
    every worker answers (a worker still loading its bundle answers UNAVAILABLE) or ``timeout`` seconds pass."""
    import grpc

    from server._proto import posters_pb2 as pb
    from server._proto import posters_pb2_grpc as pb_grpc

    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while not set(seen) >= workers and time.monotonic() < deadline:
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                info = pb_grpc.PosterSimilarityStub(channel).GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                continue
        seen[info.process_id] = info.bundle_version
    return seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=12_500, help="requests per client")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--max-seconds", type=float, default=900, help="stop early after this long")
    p.add_argument("--processes", type=int, default=1, help="posters-serve --processes (SO_REUSEPORT workers)")
    args = p.parse_args()

    import grpc
    import psutil

    from server.client import PosterClient
    from server.types import ItemQuery, SearchOptions, VectorQuery

    tmp = Path(tempfile.mkdtemp(prefix="posters-load-"))
    root = tmp / "root"
    print(f"building bundle: {args.items} x {args.dim} ...", file=sys.stderr)
    first = publish(root, args.items, args.dim, 1, tmp)
    port_file = tmp / "port"
    server_cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "--index",
        str(root),
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--no-image-search",
        "--poll",
        "3600",
        "--processes",
        str(args.processes),
        # admission sized for the clients (a worker may get most connections): what is measured is whether
        # requests fail under load and across the reload, not the designed RESOURCE_EXHAUSTED back-pressure
        "--workers",
        str(args.clients),
        "--batch-slots",
        str(args.clients),
    ]
    server_log = (tmp / "server.log").open("w")  # closed after the server exits (end of main)
    server = subprocess.Popen(server_cmd, cwd=ROOT, stderr=server_log)
    deadline = time.monotonic() + 300
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {tmp / 'server.log'}")
        time.sleep(0.1)
    target = f"127.0.0.1:{int(port_file.read_text())}"
    proc = psutil.Process(server.pid)
    # the port file means listening; each worker answers UNAVAILABLE until its bundle is loaded: wait for all
    expected = {p.pid for p in proc.children()} or {server.pid}
    if set(workers_serving(target, expected)) != expected:
        raise SystemExit(f"not every server process served its bundle within {READY_TIMEOUT_SECONDS:.0f} s")

    def server_rss_mb() -> float:  # the supervisor and its workers (or the one server process)
        return sum(p.memory_info().rss for p in [proc, *proc.children()]) / 2**20

    total = args.clients * args.requests
    done = [0]
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {name: [] for name, _ in MIX}
    failures: list[str] = []
    versions: set[str] = set()
    rss: dict[str, float] = {"start": server_rss_mb()}
    stop_at = time.monotonic() + args.max_seconds
    reloaded = threading.Event()
    queries = clustered_vectors(1000, args.dim, seed=99)

    def client_loop(n: int) -> None:
        rng = np.random.default_rng(n)
        names = [name for name, _ in MIX]
        probs = np.array([w for _, w in MIX])
        with PosterClient(target, timeout=30) as c:
            for i in range(args.requests):
                if time.monotonic() > stop_at:
                    return
                name = names[rng.choice(len(names), p=probs / probs.sum())]
                item = int(rng.integers(1, args.items + 1))
                t = time.perf_counter()
                try:
                    if name == "SimilarToItem":
                        r = c.similar(item, SearchOptions(k=10))
                    elif name == "SearchByVector":
                        r = c.vector(queries[i % len(queries)].tolist(), SearchOptions(k=10))
                    elif name == "SimilarToItems":
                        r = c.like([(item, 1.0), (item % args.items + 1, 0.5)], options=SearchOptions(k=10))
                    elif name == "FindItems":
                        c.find(f"movie {item}", limit=5)
                        r = None
                    elif name == "BatchSearch":
                        res = c.batch(
                            [ItemQuery(item, SearchOptions(k=5))] * 8
                            + [
                                VectorQuery(queries[(i + j) % len(queries)].tolist(), SearchOptions(k=5))
                                for j in range(8)
                            ]
                        )
                        r = res[0]
                    elif name == "GetItems":
                        c.items([item])
                        r = None
                    else:
                        c.info()
                        r = None
                    elapsed = time.perf_counter() - t
                    with lock:
                        latencies[name].append(elapsed)
                        if r is not None:
                            versions.add(r.bundle_version)
                        done[0] += 1
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{name}: {exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(args.clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    second = None
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)  # progress sampling by the orchestrator; the clients never sleep
        if "warm" not in rss and done[0] >= total * 0.1:
            rss["warm"] = server_rss_mb()
        if not reloaded.is_set() and done[0] >= total * 0.5:
            print("publishing a new bundle and sending SIGHUP ...", file=sys.stderr)
            second = publish(root, args.items, args.dim, 2, tmp)
            server.send_signal(signal.SIGHUP)
            reloaded.set()
            rss["at_reload"] = server_rss_mb()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    rss["end"] = server_rss_mb()
    workers = {p.pid for p in proc.children()} or {server.pid}
    serving = workers_serving(target, workers)  # pid -> bundle version, over fresh connections
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(timeout=60)
    server_log.close()
    warm = rss.get("warm", rss["start"])
    growth_ok = rss["end"] <= warm * (1 + RSS_GROWTH_LIMIT) + 32
    every_worker = set(serving) == workers and set(serving.values()) == {second}
    ok = not failures and second in versions and first in versions and growth_ok and every_worker and exit_code == 0
    info = machine()
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}. {args.clients} clients, "
        f"{done[0]} requests in {wall:.1f}s = {done[0] / wall:.0f} QPS; bundle {args.items} x {args.dim}; "
        f"server processes: {args.processes}; hot reload at 50%: {'observed' if second in versions else 'NOT observed'}"
        f" ({len(serving)} of {len(workers)} workers on the new bundle afterwards); failed requests: "
        f"{len(failures)}; server RSS MB start {rss['start']:.0f}, warm {warm:.0f}, "
        f"at reload {rss.get('at_reload', 0):.0f}, end {rss['end']:.0f} "
        f"({'bounded' if growth_ok else 'GREW'}); server exit code {exit_code}.",
        "",
        "| RPC | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, samples in latencies.items():
        if samples:
            pc = percentiles_ms(samples)
            lines.append(f"| {name} | {len(samples)} | {pc['p50_ms']:.3f} | {pc['p99_ms']:.3f} |")
    md = "\n".join(lines) + "\n" + ("\nPASS\n" if ok else "\nFAIL\n")
    write_results(
        "load_test",
        {
            "machine": info,
            "ok": ok,
            "requests": done[0],
            "seconds": wall,
            "rss_mb": rss,
            "failures": failures[:50],
            "versions": sorted(versions),
            "processes": args.processes,
            "workers_after_reload": {str(pid): v for pid, v in serving.items()},
            "latency": {k: percentiles_ms(v) for k, v in latencies.items() if v},
        },
        md,
    )
    print(md)
    if failures:
        print("first failures:", *failures[:5], sep="\n  ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
