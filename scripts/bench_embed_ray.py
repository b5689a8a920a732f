#!/usr/bin/env python3
"""Distributed-embedding benchmark: ``posters-index embed`` with the local engine vs Ray Data with 1 and 2 actors.

On N synthetic posters (the demo catalog generator, JPEG files on disk), each configuration runs in a fresh
process (its own local Ray on 127.0.0.1, started and stopped inside the run):
  local     the build's pipeline in one process (decode threads + TensorFlow on every core)
  ray xK    Ray Data: decode in parallel tasks, K actors with one EfficientNet-Lite0 each (--actor-cpus threads)
reported as embeddings/s end to end (catalog to _SUCCESS: Ray start-up and model loading included) and steady
(after the first result arrived), plus the smallest cosine between a Ray vector and the local engine's vector of
the same poster (the engines must agree: >= 0.9999).

  python scripts/bench_embed_ray.py                     # N = 512, local + ray x1 + ray x2 (a few minutes)
  python scripts/bench_embed_ray.py --n 8 --no-save     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from bench_common import machine, run_worker, write_results

SCRIPT = Path(__file__).resolve()
DEFAULT_N = 512
DEFAULT_BATCH = 32
DEFAULT_ACTORS = (1, 2)
SEED = 7
MIN_COSINE = 0.9999
WORKER_TIMEOUT_S = 3600


def _worker(engine: str, actors: int, actor_cpus: float, catalog: Path, out: Path, batch: int) -> dict[str, Any]:
    """One embed job in this (fresh) process; its _SUCCESS summary."""
    import logging

    from indexer.catalog import CatalogConfig
    from indexer.embed_job import EmbedJobConfig, RayOptions, run_embed

    logging.basicConfig(level=logging.WARNING)
    config = EmbedJobConfig(
        catalog=CatalogConfig(
            posters_dir=catalog / "posters",
            movies_csv=catalog / "movies.csv",
            links_csv=catalog / "links.csv",
            pattern="{tmdbId}.jpg",
        ),
        out=out,
        engine=engine,
        batch_size=batch,
        progress=False,
        ray=RayOptions(actors=actors, actor_cpus=actor_cpus),
    )
    return run_embed(config).summary


def _vectors(directory: Path) -> dict[int, np.ndarray]:
    from indexer import embedding_shards as shards

    out: dict[int, np.ndarray] = {}
    for part in shards.iter_shards(shards.open_shards(directory)):
        for item, vector in zip(part.ids.tolist(), part.vectors):
            out[int(item)] = vector / np.linalg.norm(vector)
    return out


def _min_cosine(reference: dict[int, np.ndarray], other: dict[int, np.ndarray]) -> float:
    if sorted(reference) != sorted(other):
        raise RuntimeError(f"the engines embedded different items: {len(reference)} vs {len(other)}")
    return float(min(reference[i] @ other[i] for i in reference))


def _row(name: str, summary: dict[str, Any], cosine: float | None) -> dict[str, Any]:
    return {
        "config": name,
        "rows": summary["rows"],
        "failures": summary["failure_count"],
        "seconds": summary["seconds"],
        "first_result_seconds": summary["first_batch_seconds"],
        "embeddings_per_second": summary["embeddings_per_second"],
        "steady_embeddings_per_second": summary["steady_embeddings_per_second"],
        "workers": len(summary["workers"]),
        "min_cosine_vs_local": None if cosine is None else round(cosine, 6),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=DEFAULT_N, help="posters")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per model call")
    p.add_argument("--actors", default=",".join(map(str, DEFAULT_ACTORS)), help="Ray actor counts to run")
    p.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs (TensorFlow threads) per actor")
    p.add_argument("--no-save", action="store_true", help="print only (no benchmarks/results files)")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        engine, actors, actor_cpus, catalog, out, batch = args.worker
        summary = _worker(engine, int(actors), float(actor_cpus), Path(catalog), Path(out), int(batch))
        print(json.dumps(summary))
        return 0

    from indexer.demo_catalog import write_demo_catalog

    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-ray-") as tmp:
        catalog = Path(tmp) / "catalog"
        write_demo_catalog(catalog, count=args.n, seed=SEED)
        configs = [("local", "local", 1)] + [(f"ray x{k}", "ray", int(k)) for k in args.actors.split(",")]
        reference: dict[int, np.ndarray] | None = None
        for name, engine, actors in configs:
            out = Path(tmp) / name.replace(" ", "-")
            print(f"{name}: {args.n} posters ...", file=sys.stderr)
            worker_args = [engine, str(actors), str(args.actor_cpus), str(catalog), str(out), str(args.batch_size)]
            summary = run_worker(SCRIPT, worker_args, timeout=WORKER_TIMEOUT_S)
            vectors = _vectors(out)
            cosine = None if reference is None else _min_cosine(reference, vectors)
            reference = reference if reference is not None else vectors
            rows.append(_row(name, summary, cosine))
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; {args.n} posters (synthetic, JPEG), EfficientNet-Lite0 "
        f"(ImageNet weights), batch {args.batch_size}, {args.actor_cpus:g} CPU per Ray actor; {info['date']}.",
        "",
        "| config | embedded | total s | first result s | embeddings/s (end to end) | embeddings/s (steady) "
        "| workers | min cosine vs local |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steady = r["steady_embeddings_per_second"]
        cosine = r["min_cosine_vs_local"]
        lines.append(
            f"| {r['config']} | {r['rows']} | {r['seconds']:.1f} | {r['first_result_seconds']:.1f} "
            f"| {r['embeddings_per_second']:.1f} | {'-' if steady is None else f'{steady:.1f}'} | {r['workers']} "
            f"| {'-' if cosine is None else f'{cosine:.6f}'} |"
        )
    md = "\n".join(lines) + "\n"
    payload = {"machine": info, "n": args.n, "batch_size": args.batch_size, "results": rows}
    print(md)
    if not args.no_save:
        print(f"results: {write_results('bench_embed_ray', payload, md)}")
    bad = [r["config"] for r in rows if r["min_cosine_vs_local"] is not None and r["min_cosine_vs_local"] < MIN_COSINE]
    if bad:
        print(f"error: vectors differ from the local engine's (cosine < {MIN_COSINE}): {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
