"""Shared helpers for the benchmark scripts: timing statistics, RSS, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 4), "p99_ms": round(float(np.percentile(arr, 99)), 4)}


def time_calls(fn: Callable[[int], Any], count: int, warmup: int = 20) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, Any]:
    import faiss

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run_worker(script: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> dict:
    """Run ``script --worker ...`` in a fresh process (clean RSS) and parse its last stdout line as JSON."""
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(name: str, payload: dict[str, Any], markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}-{stamp}.md").write_text(markdown)
    (RESULTS / f"{name}-latest.md").write_text(markdown)
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(payload, indent=2))
    return path


def clustered_vectors(n: int, d: int, clusters: int = 0, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Seeded L2-normalized vectors around random centres (poster embeddings cluster by style and genre)."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, n // 100)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


DATA_KINDS = ("realistic", "clustered")  # --data of the benchmarks; realistic is the default


def realistic_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Seeded L2-normalized vectors with the statistics of real efficientnet_lite0 embeddings (PCA spectrum,
    common mean direction, near-duplicate families): scripts/realistic_vectors.py, calibrated on real
    embeddings (realistic_calibration.json). Unlike clustered_vectors, IVF needs nprobe > 1 on it."""
    from realistic_vectors import realistic_vectors as generate

    return generate(n, d, seed)


def benchmark_data(kind: str, n: int, queries: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n index vectors, held-out query vectors not among them) of the given kind, seeded."""
    if kind == "realistic":
        from realistic_vectors import held_out_queries

        return realistic_vectors(n, d, seed), held_out_queries(queries, n, d, seed)
    if kind == "clustered":
        everything = clustered_vectors(n + queries, d, seed=seed)
        return everything[:n], everything[n:]
    raise ValueError(f"data kind expected one of {DATA_KINDS}, got {kind!r}")
