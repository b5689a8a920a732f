"""``posters-index analyze``: the structure of a bundle's embedding space (the clustering notebook, done properly).

k-means (faiss.Kmeans, seeded) over a range of k with inertia and sampled silhouette curves, the PCA
explained-variance curve, the genre composition of each cluster at the chosen k (the best silhouette
unless given) and one contact sheet per cluster of its posters nearest the centroid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.contact_sheet import Tile, render_sheet
from indexer.quality import QualityError, charts, metrics
from indexer.quality.bundle_view import bundle_facts, bundle_vectors, open_bundle
from indexer.quality.report import md_table, write_json

log = logging.getLogger(__name__)

DEFAULT_KS = tuple(range(5, 26))  # the notebook's k = 5 ... 25
DEFAULT_SILHOUETTE_SAMPLE = 5000
DEFAULT_PCA_COMPONENTS = 256
PCA_SAMPLE_ROWS = 20_000  # the SVD runs on at most this many (seeded) rows
DEFAULT_SHEET_POSTERS = 12
DEFAULT_NITER = 25
DEFAULT_NREDO = 3  # k-means restarts, the best objective kept (one run can stall in a poor optimum)
SHEET_COLUMNS = 6
TOP_GENRES = 3
PCA_SHARES = (0.5, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class AnalyzeConfig:
    root: Path
    out: Path | None = None  # default: <index root>/quality/<build id>/analyze
    ks: tuple[int, ...] = DEFAULT_KS
    k: int | None = None  # clusters for composition and sheets; default: the best silhouette in ks
    silhouette_sample: int = DEFAULT_SILHOUETTE_SAMPLE
    pca_components: int = DEFAULT_PCA_COMPONENTS
    sheet_posters: int = DEFAULT_SHEET_POSTERS
    niter: int = DEFAULT_NITER
    nredo: int = DEFAULT_NREDO
    seed: int = 0
    posters_dir: Path | None = None
    charts: bool = True
    verify: bool = True


def kmeans(x: np.ndarray, k: int, niter: int, nredo: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroids, label per row, inertia = sum of squared distances to the nearest centroid)."""
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    dist, labels = km.index.search(x, 1)
    assert km.centroids is not None
    return km.centroids, labels[:, 0].astype(np.int64), float(dist[:, 0].astype(np.float64).sum())


def genre_composition(genres: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: (share of the cluster's genre tags per genre,
    lift = share of the cluster's items with the genre / the catalog's share)."""
    shares = np.zeros((k, genres.shape[1]))
    lift = np.full((k, genres.shape[1]), np.nan)
    catalog = genres.mean(axis=0) if len(genres) else np.zeros(genres.shape[1])
    for c in range(k):
        g = genres[labels == c]
        tags = g.sum(axis=0).astype(np.float64)
        if tags.sum() > 0:
            shares[c] = tags / tags.sum()
        if len(g):
            with np.errstate(divide="ignore", invalid="ignore"):
                lift[c] = np.where(catalog > 0, g.mean(axis=0) / catalog, np.nan)
    return shares, lift


def analyze(config: AnalyzeConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    bundle = open_bundle(config.root, verify=config.verify)
    facts = bundle_facts(bundle)
    ids, x = bundle_vectors(bundle)
    n = len(ids)
    ks = sorted({k for k in config.ks if 2 <= k < n})
    if not ks:
        raise QualityError(f"analyze expected k values in 2..{n - 1} for {n} items, got {list(config.ks)}")
    out = config.out or facts.path.parent.parent / "quality" / facts.build_id / "analyze"
    out.mkdir(parents=True, exist_ok=True)
    curve: list[dict[str, Any]] = []
    runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in ks:
        centroids, labels, inertia = kmeans(x, k, config.niter, config.nredo, config.seed)
        sil = metrics.sampled_silhouette(x, labels, config.silhouette_sample, config.seed)
        curve.append({"k": k, "inertia": inertia, "silhouette": sil})
        runs[k] = (centroids, labels)
    if config.k is not None:
        if not 2 <= config.k < n:
            raise QualityError(f"k expected 2..{n - 1}, got {config.k}")
        chosen = config.k
        if chosen not in runs:
            runs[chosen] = kmeans(x, chosen, config.niter, config.nredo, config.seed)[:2]
    else:
        scored = [c for c in curve if c["silhouette"] == c["silhouette"]]  # drop NaN
        chosen = int(max(scored, key=lambda c: (c["silhouette"], -c["k"]))["k"]) if scored else ks[0]
    centroids, labels = runs[chosen]
    rng = np.random.default_rng(config.seed)
    pca_rows = np.sort(rng.choice(n, size=PCA_SAMPLE_ROWS, replace=False)) if n > PCA_SAMPLE_ROWS else np.arange(n)
    ratio = metrics.explained_variance_ratio(x[pca_rows], config.pca_components)
    genres, vocabulary = metrics.genre_matrix(bundle.items["genres"].tolist())
    shares, lift = genre_composition(genres, labels, chosen)
    posters_dir = config.posters_dir or facts.posters_dir
    clusters, files = [], {}
    for c in range(chosen):
        members = np.flatnonzero(labels == c)
        d = ((x[members] - centroids[c]) ** 2).sum(axis=1)
        order = np.argsort(d, kind="stable")[: config.sheet_posters]
        nearest = members[order]
        top = [vocabulary[g] for g in np.argsort(-shares[c], kind="stable")[:TOP_GENRES] if shares[c, g] > 0]
        clusters.append(
            {
                "cluster": c,
                "size": int(len(members)),
                "top_genres": top,
                "genre_share": {vocabulary[g]: float(shares[c, g]) for g in range(len(vocabulary))},
                "genre_lift": {vocabulary[g]: float(lift[c, g]) for g in range(len(vocabulary))},
                "nearest_centroid": ids[nearest].tolist(),
            }
        )
        tiles = []
        for r, d2 in zip(nearest, d[order], strict=True):
            poster = str(bundle.items["poster"].iat[r])
            path = posters_dir / poster if posters_dir is not None and poster else None
            tiles.append(Tile(path, str(bundle.items["title"].iat[r]), f"#{ids[r]}  sq. dist {float(d2):.3f}"))
        if tiles:
            name = f"clusters/cluster_{c:02d}.png"
            (out / "clusters").mkdir(exist_ok=True)
            render_sheet(tiles, SHEET_COLUMNS).save(out / name)
            files[f"cluster_{c:02d}"] = name
    if config.charts:
        files["kmeans_chart"] = charts.kmeans_chart(
            [c["k"] for c in curve], [c["inertia"] for c in curve], [c["silhouette"] for c in curve], out / "kmeans.png"
        )
        files["pca_chart"] = charts.pca_chart(ratio, out / "pca.png")
        if vocabulary:
            files["composition_chart"] = charts.composition_chart(
                shares, vocabulary, [c["size"] for c in clusters], out / "genre_composition.png"
            )
    result = {
        "tool": "posters-index analyze",
        "bundle": asdict(facts),
        "config": asdict(config),
        "metrics": {
            "kmeans": curve,
            "chosen_k": chosen,
            "chosen_by": "given" if config.k is not None else "best sampled silhouette",
            "pca": {
                "explained_variance_ratio": ratio.tolist(),
                "rows": int(len(pca_rows)),
                **{f"components_for_{int(s * 100)}pct": metrics.components_for(ratio, s) for s in PCA_SHARES},
            },
            "clusters": clusters,
        },
        "timings": {"seconds": time.perf_counter() - t0},
        "files": files,
    }
    write_json(out / "analysis.json", result)
    (out / "analysis.md").write_text(analysis_markdown(result))
    result["out"] = str(out)
    log.info("analysis of %s written to %s", facts.build_id, out)
    return result


def analysis_markdown(result: dict[str, Any]) -> str:
    m = result["metrics"]
    pca = m["pca"]
    lines = [
        f"# Embedding-space analysis of bundle {result['bundle']['build_id']}",
        "",
        "## k-means (faiss.Kmeans) and sampled silhouette",
        "",
        md_table(["k", "inertia", "silhouette"], [[c["k"], c["inertia"], c["silhouette"]] for c in m["kmeans"]]),
        "",
        f"Chosen k = {m['chosen_k']} ({m['chosen_by']}).",
        "",
        "![k-means](kmeans.png)",
        "",
        "## PCA",
        "",
        "Components needed for a share of the variance: "
        + ", ".join(f"{int(s * 100)} %: {pca[f'components_for_{int(s * 100)}pct']}" for s in PCA_SHARES)
        + f" (of the first {len(pca['explained_variance_ratio'])}, on {pca['rows']} rows).",
        "",
        "![pca](pca.png)",
        "",
        "## Clusters",
        "",
        md_table(
            ["cluster", "size", "top genres", "sheet"],
            [
                [c["cluster"], c["size"], ", ".join(c["top_genres"]), f"clusters/cluster_{c['cluster']:02d}.png"]
                for c in m["clusters"]
            ],
        ),
        "",
        "![genre composition](genre_composition.png)",
        "",
    ]
    return "\n".join(lines)
