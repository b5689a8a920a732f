#!/usr/bin/env python3
"""Benchmark data against real embeddings: is the synthetic data as hard for IVF as real data is?

Datasets, each an index plus held-out queries that are not in it:
  real         the calibration set of scripts/realistic_vectors.py (real efficientnet_lite0 embeddings of
               crops/edits of the bundled photos and of demo posters); queries: a seeded random 10 % held out
  realistic    realistic_vectors (calibrated families) + held_out_queries        (the benchmarks' default)
  independent  realistic_vectors(families="none"): same spectrum and mean, no near-duplicate families
  clustered    bench_common.clustered_vectors (the old data); queries: further rows of the same clusters
at the real set's size and at each --sizes N. For each: PCA spectrum, nearest-neighbour, 10th-neighbour and
random-pair cosine quantiles, hubness (k-occurrence skewness, k = 10; exact over all rows up to
ALL_ROWS_KNN_MAX rows, else neighbour cosines of a seeded sample of rows and no hubness), and recall@10 of
the project's IVF index (indexer.index.build_index, nlist ≈ √N) on the held-out queries at nprobe 1/4/16 and
at the nprobe the build tunes on held-in queries, against exact flat search. Prints a table and writes
JSON + Markdown + PNG (spectra and cosine histograms side by side) under benchmarks/results/.

  python scripts/bench_data.py                         # real size (~2,000) and 50,000 (~5 min)
  python scripts/bench_data.py --sizes 10000 --queries 300
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import embedding_stats
import numpy as np
import real_embeddings
import realistic_vectors
from bench_common import clustered_vectors, machine, write_results

log = logging.getLogger(__name__)

K = 10
NPROBES = (1, 4, 16)
REAL_HOLD_OUT_SHARE = 0.1
ALL_ROWS_KNN_MAX = 10_000  # exact k-NN of every row (hubness) up to this many rows
NN_SAMPLE_ROWS = 2_000  # beyond it, neighbour cosines of this many seeded rows
DATASETS = ("real", "realistic", "independent", "clustered")
COLOURS = {"real": "black", "realistic": "tab:blue", "independent": "tab:orange", "clustered": "tab:red"}
HIST_BINS = np.linspace(-0.2, 1.0, 121)
NN_COSINE_RANGE = (0.3, 1.0)


@dataclass(frozen=True)
class Dataset:
    name: str
    index: np.ndarray
    queries: np.ndarray


def synthetic(name: str, n: int, queries: int, d: int, seed: int) -> Dataset:
    if name == "clustered":
        everything = clustered_vectors(n + queries, d, seed=seed)
        return Dataset(name, everything[:n], everything[n:])
    families = "calibrated" if name == "realistic" else "none"
    x = realistic_vectors.realistic_vectors(n, d, seed, families=families)
    return Dataset(name, x, realistic_vectors.held_out_queries(queries, n, d, seed, families=families))


def real_dataset(path: Path, seed: int) -> Dataset:
    if path.exists():
        real = real_embeddings.load(path)
    else:
        log.info("no real embeddings at %s: embedding the calibration images (~3 min)", path)
        real = real_embeddings.real_embedding_set()
        real_embeddings.save(real, path)
    x = real.vectors.astype(np.float64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    held = round(len(x) * REAL_HOLD_OUT_SHARE)
    return Dataset("real", x[np.sort(order[held:])], x[np.sort(order[:held])])


def ivf_recall(data: Dataset, seed: int) -> dict[str, Any]:
    """Recall@K of the project's IVF index on the held-out queries, per nprobe, against exact search."""
    import faiss

    from indexer.index import IndexSpec, build_index, exact_search, recall_at_k

    faiss.omp_set_num_threads(1)
    n = len(data.index)
    ids = np.arange(n, dtype=np.int64)
    built = build_index(data.index, ids, IndexSpec(kind="ivf", seed=seed))
    _, truth = exact_search(data.index, data.queries, K)
    out: dict[str, Any] = {"nlist": built.params.nlist, "tuned_nprobe": built.params.nprobe, "recall": {}, "ms": {}}
    for nprobe in sorted({*NPROBES, built.params.nprobe}):
        began = time.perf_counter()
        _, found = built.index.search(data.queries, K, params=faiss.SearchParametersIVF(nprobe=nprobe))
        out["ms"][str(nprobe)] = round(1000 * (time.perf_counter() - began) / len(data.queries), 4)
        out["recall"][str(nprobe)] = round(recall_at_k(found, truth), 4)
    began = time.perf_counter()
    exact_search(data.index, data.queries, K)
    out["ms"]["flat"] = round(1000 * (time.perf_counter() - began) / len(data.queries), 4)
    best, _ = exact_search(data.index, data.queries, 1)
    out["query_nn_cosine"] = embedding_stats.quantiles(best[:, 0])
    return out


def evaluate(data: Dataset, seed: int) -> tuple[dict[str, Any], embedding_stats.Measurement]:
    began = time.perf_counter()
    n = len(data.index)
    measured = embedding_stats.measure(data.index, seed, K, None if n <= ALL_ROWS_KNN_MAX else NN_SAMPLE_ROWS)
    result = {"dataset": data.name, "n": n, "queries": len(data.queries), **measured.summary, **ivf_recall(data, seed)}
    log.info("%s n=%d done in %.1f s", data.name, n, time.perf_counter() - began)
    return result, measured


def _fmt(q: dict[str, float], keys: tuple[str, ...] = ("q10", "q50", "q90")) -> str:
    return " / ".join(f"{q[k]:.3f}" for k in keys)


def markdown(results: list[dict[str, Any]], calibration: dict[str, Any], info: dict[str, Any]) -> str:
    model, source = calibration["model"], calibration["source"]
    sp, bt, vw = model["spectrum"], model["between"], model["views"]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}, faiss {info['faiss']}; {info['date']}.",
        "",
        f"Calibration ({source['images']} real images, {source['families']} families, efficientnet_lite0 avg): "
        f"mean strength {model['mean_strength']} (measured {model['measured_mean_strength']}), mean β "
        f"{model['mean_beta']}; spectrum slopes {sp['slopes']} with breaks at ranks {sp['breaks']} (rms log error "
        f"{sp['rms_log_error']}); between-family share {bt['b0']} / (1 + (j / {bt['j_c']})^{bt['gamma']}); "
        f"views: decay {vw['decay']}, edit power {vw['edit_power']}.",
        "",
        "| dataset | N | mean strength | eff. dim (PR) | comps for 90 % | var. in top 10 / 50 | NN cos q10 / q50 / q90 "
        "| 10th-NN cos q10 / q50 / q90 | random cos q10 / q50 / q90 | hubness skew | anti-hubs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sp_r, hub = r["spectrum"], r["hubness"]
        cum = sp_r["cumulative_share_at_rank"]
        lines.append(
            f"| {r['dataset']} | {r['n']:,} | {r['mean_strength']:.3f} | {sp_r['participation_ratio']:.1f} "
            f"| {sp_r['components_for_90pct']} | {cum['10']:.3f} / {cum['50']:.3f} | {_fmt(r['nn_cosine'])} "
            f"| {_fmt(r[f'nn{K}_cosine'])} | {_fmt(r['random_cosine'])} "
            f"| {hub['skewness'] if hub else '–'} | {hub['antihub_share'] if hub else '–'} |"
        )
    probes = sorted({int(p) for r in results for p in r["recall"]})
    lines += [
        "",
        f"IVF (indexer.index.build_index, nlist ≈ √N) recall@{K} on held-out queries against exact search "
        "(* = the nprobe the build tunes on held-in queries for recall ≥ 0.95); ms per query, one thread:",
        "",
        "| dataset | N | queries | nlist | " + " | ".join(f"nprobe {p}" for p in probes) + " | flat ms "
        "| query→index NN cos q10 / q50 / q90 |",
        "|---|---|---|---|" + "---|" * len(probes) + "---|---|",
    ]
    for r in results:
        cells = []
        for p in probes:
            rec, ms = r["recall"].get(str(p)), r["ms"].get(str(p))
            star = "*" if p == r["tuned_nprobe"] else ""
            cells.append(f"{rec:.3f}{star} ({ms:.3f} ms)" if rec is not None else "")
        lines.append(
            f"| {r['dataset']} | {r['n']:,} | {r['queries']} | {r['nlist']} | " + " | ".join(cells) + f" | "
            f"{r['ms']['flat']:.3f} | {_fmt(r['query_nn_cosine'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(measured: list[tuple[dict[str, Any], embedding_stats.Measurement]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (spectra, nn, rand) = plt.subplots(1, 3, figsize=(17, 4.6))
    smallest = min(r["n"] for r, _ in measured)
    for r, m in measured:
        style = "-" if r["n"] == smallest else "--"
        label = f"{r['dataset']} N={r['n']:,}"
        colour = COLOURS[r["dataset"]]
        ranks = np.arange(1, len(m.eigenvalues) + 1)
        spectra.loglog(ranks, m.eigenvalues / m.eigenvalues.sum(), style, color=colour, label=label)
        for ax, values in ((nn, m.nn_cosines), (rand, m.random_cosines)):
            ax.hist(values, bins=HIST_BINS, density=True, histtype="step", linestyle=style, color=colour, label=label)
    spectra.set(xlabel="principal component rank", ylabel="share of variance", title="PCA spectrum")
    spectra.set_ylim(1e-7, 1)
    nn.set(xlabel="cosine to the nearest other row", ylabel="density", title="nearest-neighbour cosine")
    nn.set_xlim(NN_COSINE_RANGE)
    rand.set(xlabel="cosine of a random pair", ylabel="density", title="random-pair cosine")
    for ax in (spectra, nn, rand):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="50000", help="synthetic sizes beyond the real set's (comma-separated; '' none)")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=500, help="held-out queries at --sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", type=Path, default=realistic_vectors.DEFAULT_EMBEDDINGS, help="real embeddings (.npz)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    calibration = realistic_vectors.read_calibration_file()
    real = real_dataset(args.real, args.seed)
    if real.index.shape[1] != args.dim:
        raise SystemExit(f"--dim expected {real.index.shape[1]} (the real embeddings' dimension), got {args.dim}")
    measured = [evaluate(real, args.seed)]
    plan = [(len(real.index), len(real.queries))] + [(int(n), args.queries) for n in args.sizes.split(",") if n]
    for n, queries in plan:
        for name in DATASETS[1:]:
            measured.append(evaluate(synthetic(name, n, queries, args.dim, args.seed), args.seed))
    results = [r for r, _ in measured]
    info = machine()
    md = markdown(results, calibration, info)
    path = write_results("bench_data", {"machine": info, "calibration": calibration, "results": results}, md)
    plot(measured, path.with_suffix(".png"))
    print(md)
    print(f"results: {path} (+ .md, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
