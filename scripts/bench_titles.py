#!/usr/bin/env python3
"""Title search benchmark: build time, memory and per-query latency of server.titles.TitleIndex.

On a seeded synthetic MovieLens-style catalog (tests/title_catalog.py: trailing and foreign articles,
alternative titles, accents, years), each size in a fresh process (clean RSS):
  build     TitleIndex(titles): wall and CPU seconds (best of --builds); memory the index keeps and the
            build's peak (tracemalloc: Python objects and NumPy arrays)
  queries   search(q, 0, 20) latency per query shape, sequential, one thread:
            exact (a whole key), prefix (3-8 letters of a key), word (an inner word), short (1-2 letters),
            year (a key + its year), typo (one edit in a long word: the fuzzy path), typo+year,
            nonsense (consonant strings: a literal scan and a fuzzy pass that find nothing, the worst case)
Prints a Markdown table and writes JSON + Markdown under benchmarks/results/ (titles-*.json).

  python scripts/bench_titles.py                          # 10k and 60k titles, 300 queries per shape
  python scripts/bench_titles.py --sizes 60000 --queries 100
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import string
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import machine, percentiles_ms, run_worker, time_calls, write_results

from server.titles import TitleIndex, parse_title
from tests.title_catalog import synthetic_titles

SCRIPT = Path(__file__).resolve()
PAGE = 20
WARMUP = 20
SEED = 0
TYPO_MIN_CHARS = 5  # words this long get a one-letter typo
CONSONANTS = "".join(c for c in string.ascii_lowercase if c not in "aeiouy")


def _typo(rng: random.Random, word: str) -> str:
    at = rng.randrange(1, len(word) - 1)
    return word[:at] + word[at + 1 :] if rng.random() < 0.5 else word[:at] + word[at + 1] + word[at] + word[at + 2 :]


def query_sets(titles: list[str], count: int, seed: int = SEED) -> dict[str, list[str]]:
    """``count`` seeded queries of each shape, drawn from the catalog's own keys."""
    rng = random.Random(seed)
    parsed = [p for p in map(parse_title, titles) if p.keys]
    sets: dict[str, list[str]] = {name: [] for name in ("exact", "prefix", "word", "short", "year", "typo")}
    sets |= {"typo+year": [], "nonsense": []}
    while any(len(v) < count for v in sets.values()):
        p = rng.choice(parsed)
        key = rng.choice(p.keys)
        words = key.split(" ")
        long = [i for i, w in enumerate(words) if len(w) >= TYPO_MIN_CHARS]
        candidates = {
            "exact": key,
            "prefix": key[: rng.randrange(3, 9)],
            "word": rng.choice(words),
            "short": rng.choice(words)[: rng.randrange(1, 3)],
            "year": f"{key} {p.year}" if p.year else "",
            "nonsense": "".join(rng.choice(CONSONANTS) for _ in range(rng.randrange(5, 12))),
        }
        if long:
            i = rng.choice(long)
            typo = " ".join(words[:i] + [_typo(rng, words[i])] + words[i + 1 :])
            candidates |= {"typo": typo, "typo+year": f"{typo} {p.year}" if p.year else ""}
        for name, query in candidates.items():
            if query and len(sets[name]) < count:
                sets[name].append(query)
    return sets


def measure(n: int, queries: int, builds: int) -> dict[str, Any]:
    """Build an index over ``n`` synthetic titles and time ``queries`` searches of each shape."""
    titles = synthetic_titles(n, seed=SEED)
    gc.collect()
    tracemalloc.start()  # Python and NumPy allocations: what the index keeps, and the build's peak
    index = TitleIndex(titles)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    walls, cpus = [], []
    for _ in range(builds):
        wall, cpu = time.perf_counter(), time.process_time()
        TitleIndex(titles)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    out: dict[str, Any] = {
        "titles": n,
        "build_s": round(min(walls), 3),
        "build_cpu_s": round(min(cpus), 3),
        "index_mb": round(kept / 2**20, 1),
        "build_peak_mb": round(peak / 2**20, 1),
        "shapes": {},
    }
    every: list[float] = []
    for shape, qs in query_sets(titles, queries).items():
        results = [index.search(q, 0, PAGE) for q in qs]  # untimed: what the queries found
        kinds = Counter(r.kinds[0].name.lower() if r.kinds else "none" for r in results)
        totals = [r.total for r in results]

        def call(i: int, qs: list[str] = qs) -> None:
            index.search(qs[i % len(qs)], 0, PAGE)

        samples = time_calls(call, len(qs), warmup=WARMUP)
        every += samples
        out["shapes"][shape] = {
            **percentiles_ms(samples),
            "queries": len(qs),
            "first_kind": dict(kinds.most_common()),
            "median_total": statistics.median(totals),
        }
    out["all"] = percentiles_ms(every)
    return out


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"# Title search ({info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']})",
        "",
        "| titles | build s (CPU s) | index MB (peak) | shape | p50 ms | p99 ms | first match kind | median total |",
        "|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in results:
        head = f"| {r['titles']} | {r['build_s']} ({r['build_cpu_s']}) | {r['index_mb']} ({r['build_peak_mb']}) "
        for shape, s in r["shapes"].items():
            kinds = ", ".join(f"{k} {v}" for k, v in s["first_kind"].items())
            lines.append(f"{head}| {shape} | {s['p50_ms']} | {s['p99_ms']} | {kinds} | {s['median_total']} |")
            head = "| | | "
        lines.append(f"| | | | **all** | **{r['all']['p50_ms']}** | **{r['all']['p99_ms']}** | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,60000")
    p.add_argument("--queries", type=int, default=300, help="queries per shape")
    p.add_argument("--builds", type=int, default=3, help="timed builds (the best is reported)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        workers: dict[str, Callable[..., dict[str, Any]]] = {"measure": measure}
        kind, *rest = args.worker
        print(json.dumps(workers[kind](*map(int, rest))))
        return 0
    info = machine()
    results = []
    for n in map(int, args.sizes.split(",")):
        print(f"{n} titles ...", file=sys.stderr)
        results.append(run_worker(SCRIPT, ["measure", str(n), str(args.queries), str(args.builds)]))
    md = markdown(results, info)
    path = write_results("titles", {"machine": info, "page": PAGE, "results": results}, md)
    print(md)
    print(f"results: {path} (+ .md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
