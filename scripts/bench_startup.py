#!/usr/bin/env python3
"""Start-up of posters-serve on the demo bundle: how soon it listens, serves index queries, serves image
queries, and its RSS at each point; with and without image search. Medians over --trials runs.

  python scripts/bench_startup.py                # builds demo/ if missing; ~2 min
  python scripts/bench_startup.py --index demo/index --trials 5
  python scripts/bench_startup.py --index indexes/1m --trials 1 --index-only   # a bundle without image search

Writes JSON + Markdown under benchmarks/results/ (bench_common.write_results).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from bench_common import ROOT, machine, write_results
from grpc_health.v1 import health_pb2, health_pb2_grpc

IMAGE_HEALTH = "posters.v1.PosterSimilarity.SearchByImage"
POLL_SECONDS = 0.01  # how finely the milestones are timed
TIMEOUT_SECONDS = 300.0


def _status(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
    except Exception:  # noqa: BLE001 - not listening yet, or the service is not registered yet
        return -1


def _waited(started: float, proc: subprocess.Popen, what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"posters-serve exited ({proc.returncode}) before serving {what}")
    if time.monotonic() - started > TIMEOUT_SECONDS:
        raise RuntimeError(f"posters-serve did not serve {what} within {TIMEOUT_SECONDS:.0f} s")


def one_start(index: Path, image_search: bool, workdir: Path) -> dict[str, float]:
    import grpc

    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "server.cli", "--index", str(index), "--port", "0", "--port-file", str(port_file)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd + ([] if image_search else ["--no-image-search"]), cwd=ROOT, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    out: dict[str, float] = {}
    try:
        while not port_file.exists():
            if time.monotonic() - started > TIMEOUT_SECONDS or proc.poll() is not None:
                raise RuntimeError("posters-serve did not start")
            time.sleep(POLL_SECONDS)
        out["listening_s"] = time.monotonic() - started
        out["listening_rss_mb"] = ps.memory_info().rss / 2**20
        channel = grpc.insecure_channel(f"127.0.0.1:{port_file.read_text().strip()}")
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        while _status(stub, "") != serving:
            _waited(started, proc, "index queries")
            time.sleep(POLL_SECONDS)
        out["index_serving_s"] = time.monotonic() - started
        out["index_serving_rss_mb"] = ps.memory_info().rss / 2**20
        if image_search:
            while _status(stub, IMAGE_HEALTH) != serving:
                _waited(started, proc, "image queries (a bundle of precomputed vectors never serves them)")
                time.sleep(POLL_SECONDS)
            out["image_serving_s"] = time.monotonic() - started
            out["image_serving_rss_mb"] = ps.memory_info().rss / 2**20
        channel.close()
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, help="index root (default: build the demo catalog into a temp dir)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--index-only", action="store_true", help="only --no-image-search starts (precomputed bundles)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="posters-startup-") as tmp:
        work = Path(tmp)
        index = args.index
        if index is None:
            from indexer.build import BuildConfig, build
            from indexer.catalog import CatalogConfig
            from indexer.demo_catalog import write_demo_catalog
            from indexer.pipeline import PipelineConfig

            write_demo_catalog(work / "catalog", count=120)
            cat = work / "catalog"
            index = work / "index"
            build(
                BuildConfig(
                    index_root=index,
                    pipeline=PipelineConfig(progress=False),
                    catalog=CatalogConfig(
                        posters_dir=cat / "posters",
                        movies_csv=cat / "movies.csv",
                        links_csv=cat / "links.csv",
                        pattern="{tmdbId}.jpg",
                    ),
                )
            )
        rows = []
        for image_search in (False,) if args.index_only else (False, True):
            runs = [one_start(index, image_search, work) for _ in range(args.trials)]
            row = {"image_search": image_search, "trials": args.trials}
            for key in runs[0]:
                row[key] = round(statistics.median(r[key] for r in runs), 3)
            rows.append(row)
            print(row, file=sys.stderr)
    info = machine()
    lines = [
        f"posters-serve start-up on {args.index or 'the demo bundle (120 posters, efficientnet_lite0)'}, "
        f"medians of {args.trials}; "
        f"{info['cpu']}, {info['cores']} cores, {info['date']}.",
        "",
        "| image search | listening | index queries served | image queries served | RSS listening / index / image |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        image = f"{r['image_serving_s']:.2f} s" if r["image_search"] else "–"
        rss = f"{r['listening_rss_mb']:.0f} / {r['index_serving_rss_mb']:.0f}" + (
            f" / {r['image_serving_rss_mb']:.0f} MB" if r["image_search"] else " MB"
        )
        lines.append(
            f"| {'on' if r['image_search'] else 'off (--no-image-search)'} | {r['listening_s']:.2f} s | "
            f"{r['index_serving_s']:.2f} s | {image} | {rss} |"
        )
    md = "\n".join(lines) + "\n"
    write_results("startup", {"machine": info, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
