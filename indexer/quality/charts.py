"""PNG charts of quality results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
MODEL_COLOUR, RANDOM_COLOUR, PRIOR_COLOUR, PHASH_COLOUR = "#1f77b4", "#aaaaaa", "#ff7f0e", "#2ca02c"
MAX_GENRES_SHOWN = 20


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path.name


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def fidelity_chart(curve: Sequence[dict[str, Any]], ks: Sequence[int], path: Path, title: str) -> str:
    """Recall@k against p50 latency (log scale), one point per nprobe, for item and held-out vector queries."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    values = []
    for kind, marker in (("item", "o"), ("vector", "s")):
        for k, style in zip(ks, ("-", "--"), strict=False):
            xs = [_num(p.get(f"{kind}_p50_ms")) for p in curve]
            ys = [_num(p.get(f"{kind}_recall@{k}")) for p in curve]
            if all(math.isnan(y) for y in ys):
                continue
            values += [y for y in ys if not math.isnan(y)]
            ax.plot(xs, ys, marker=marker, linestyle=style, label=f"{kind} queries, recall@{k}")
            if k == ks[-1]:
                for p, x, y in zip(curve, xs, ys, strict=True):
                    ax.annotate(str(p["nprobe"]), (x, y), textcoords="offset points", xytext=(3, -11), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, ms (in-process, 1 thread; labels: nprobe)")
    ax.set_ylabel("recall vs exact search")
    low = min(values, default=1.0)
    ax.set_ylim(max(0.0, low - max(0.01, (1 - low) * 0.1)), 1.0 + max(0.002, (1 - low) * 0.05))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def genre_chart(genres: dict[str, Any], path: Path) -> str:
    """Overall precision@k and Jaccard@k beside the two baselines, then precision@k per genre."""
    plt = _plt()
    per = sorted(genres["per_genre"], key=lambda g: -g["queries"])[:MAX_GENRES_SHOWN]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.4]})
    names = ("model", "random", "prior")
    colours = (MODEL_COLOUR, RANDOM_COLOUR, PRIOR_COLOUR)
    width = 0.25
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        vals = [_num(genres[name]["precision"]), _num(genres[name]["jaccard"])]
        ax1.bar(np.arange(2) + (i - 1) * width, vals, width, label=name, color=colour)
    ax1.set_xticks(range(2), [f"precision@{genres['k']}", f"Jaccard@{genres['k']}"])
    ax1.set_ylim(0, 1)
    ax1.set_title("genre agreement of neighbours\n(a weak label of visual similarity)", fontsize=10)
    ax1.legend(fontsize=8)
    x = np.arange(len(per))
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        ax2.bar(x + (i - 1) * width, [_num(g[f"{name}_precision"]) for g in per], width, label=name, color=colour)
    ax2.set_xticks(x, [f"{g['genre']}\n({g['queries']})" for g in per], rotation=60, fontsize=7)
    ax2.set_ylim(0, 1)
    ax2.set_title(f"precision@{genres['k']} per query genre (queries)", fontsize=10)
    return _save(fig, path)


def copy_chart(edits: Sequence[dict[str, Any]], path: Path) -> str:
    """Per edit: recall@1 and mAP of the model beside the pHash baseline."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.75 * len(edits) + 2), 6.5), sharex=True)
    x = np.arange(len(edits))
    width = 0.38
    for ax, metric in zip(axes, ("recall@1", "mAP"), strict=True):
        ax.bar(x - width / 2, [_num(e["model"][metric]) for e in edits], width, label="model", color=MODEL_COLOUR)
        if edits and edits[0].get("phash"):
            ax.bar(x + width / 2, [_num(e["phash"][metric]) for e in edits], width, label="pHash", color=PHASH_COLOUR)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(
        f"copy detection: the original among the whole catalog ({edits[0]['queries'] if edits else 0} "
        "queries per edit)",
        fontsize=10,
    )
    axes[1].set_xticks(x, [e["edit"] for e in edits], rotation=30)
    return _save(fig, path)


def latency_chart(latency: dict[str, dict[str, Any]], path: Path) -> str:
    plt = _plt()
    kinds = [k for k, v in latency.items() if v and v.get("count")]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(kinds))
    ax.bar(x - 0.2, [_num(latency[k]["p50_ms"]) for k in kinds], 0.4, label="p50")
    ax.bar(x + 0.2, [_num(latency[k]["p99_ms"]) for k in kinds], 0.4, label="p99")
    ax.set_xticks(x, kinds)
    ax.set_yscale("log")
    ax.set_ylabel("ms per query (in-process)")
    ax.set_title("latency by query kind", fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def cosine_chart(
    edit_cosines: dict[str, np.ndarray], nearest_distinct: np.ndarray, threshold: float, path: Path
) -> str:
    """Cosine of each edited copy to its original, per edit, beside each item's nearest other item."""
    plt = _plt()
    labels = list(edit_cosines) + ["nearest other item"]
    data = [np.asarray(v) for v in edit_cosines.values()] + [np.asarray(nearest_distinct)]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.7 * len(labels) + 2), 4.2))
    ax.boxplot([d if len(d) else [np.nan] for d in data], whis=(1, 99))
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30)
    ax.axhline(threshold, color="red", linestyle="--", label=f"duplicate threshold {threshold:.3f}")
    ax.set_ylabel("cosine")
    ax.set_title("edited copy vs its original, and each item vs its nearest other item", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars_grid(
    rows: Sequence[dict[str, Any]], label_key: str, metrics: Sequence[tuple[str, str]], path: Path, title: str
) -> str:
    """One bar chart per metric (key, axis label), one bar per row."""
    plt = _plt()
    cols = 3
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    labels = [str(r[label_key]) for r in rows]
    for ax, (key, axis_label) in zip(axes.flat, metrics, strict=False):
        ax.bar(range(len(rows)), [_num(r.get(key)) for r in rows], color=MODEL_COLOUR)
        ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(axis_label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[Any]], title: str, path: Path) -> str:
    """One group of bars per entry of ``groups``, one bar per series (e.g. per configuration)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [_num(v) for v in values], width, label=name)
    ax.set_xticks(x, groups, rotation=30)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def kmeans_chart(ks: Sequence[int], inertia: Sequence[float], silhouette: Sequence[float], path: Path) -> str:
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(6.5, 4))
    ax1.plot(ks, inertia, marker="o", color=MODEL_COLOUR)
    ax1.set_xlabel("k (clusters)")
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("inertia (sum of squared distances)", color=MODEL_COLOUR)
    ax2 = ax1.twinx()
    ax2.plot(ks, [_num(s) for s in silhouette], marker="s", color=PRIOR_COLOUR)
    ax2.set_ylabel("silhouette (sampled)", color=PRIOR_COLOUR)
    ax1.set_title("k-means on the bundle's vectors", fontsize=10)
    ax1.grid(alpha=0.3)
    return _save(fig, path)


def pca_chart(ratio: np.ndarray, path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(np.arange(1, len(ratio) + 1), np.cumsum(ratio), color=MODEL_COLOUR)
    for share in (0.5, 0.8, 0.9, 0.95):
        ax.axhline(share, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.01)
    ax.set_title("PCA of the bundle's vectors", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def composition_chart(shares: np.ndarray, genres: Sequence[str], sizes: Sequence[int], path: Path) -> str:
    """Stacked bars: the share of each cluster's items carrying each genre (normalised per cluster)."""
    plt = _plt()
    k = shares.shape[0]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * k + 3), 4.5))
    bottom = np.zeros(k)
    cmap = plt.get_cmap("tab20")
    for g, name in enumerate(genres):
        ax.bar(range(k), shares[:, g], bottom=bottom, color=cmap(g % 20), label=name)
        bottom += shares[:, g]
    ax.set_xticks(range(k), [f"{c}\n({s})" for c, s in enumerate(sizes)], fontsize=7)
    ax.set_xlabel("cluster (items)")
    ax.set_ylabel("genre share")
    ax.set_title("genre composition per cluster", fontsize=10)
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)
