"""``posters-index eval``: how good are a published bundle's answers?

Measures, in one run on one bundle:

- search fidelity: recall@k of the served index against exact search, for item queries and held-out
  vector queries (embeddings of edited posters), at the stored and other nprobe values, with latency;
- genre agreement of item neighbours (precision@k, Jaccard@k) beside random and genre-prior baselines;
- copy detection: edited copies of sampled posters queried through the SearchByImage path, recall@1/5
  and mAP per edit, beside a perceptual-hash (pHash) nearest-neighbour baseline on the same queries;
- collections (sequels) recall@k where the catalog has a collection column;
- in-process latency p50/p99 per query kind;
- near-duplicate item pairs.

Writes eval.json (``metrics`` is deterministic for a fixed seed; ``timings`` is not), eval.md, PNG charts,
duplicates.csv and contact sheets. Randomness comes from ``seed`` through one independent stream per
purpose, so changing one option does not reshuffle the samples of another.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer.embedders import Embedder
from indexer.quality import QualityError, metrics
from indexer.quality.bundle_view import (
    BundleFacts,
    bundle_facts,
    bundle_vectors,
    ids_to_rows,
    open_bundle,
    search,
    served_item_neighbours,
)
from indexer.quality.copy_detection import CopyQueries, make_copy_queries, measure_copy_detection
from indexer.quality.duplicates import count_near_duplicates
from indexer.quality.eval_config import (
    ID_COLUMN,
    LATENCY_K,
    STREAM_GENRES,
    STREAM_LATENCY,
    STREAM_PRIOR,
    STREAM_RANDOM,
    EvalConfig,
    Loaded,
    faiss_single_thread,
    rng_for,
    sample_rows,
    time_each,
)
from indexer.quality.fidelity import held_out_vectors, measure_fidelity
from indexer.quality.query_path import describe_query_path, query_embedder, query_image
from indexer.query_image import QueryImage, QueryMode

log = logging.getLogger(__name__)

# Duplicate threshold suggestion: the share of copies made by these edits (the same artwork from another
# source: smaller, re-encoded) it must still catch.
DUPLICATE_REFERENCE_EDITS = ("rescale",)
DUPLICATE_REFERENCE_RECALL = 0.99
COLLECTION_FILE = "families.csv"

__all__ = ["EvalConfig", "Loaded", "evaluate", "load", "default_out"]


def default_out(facts: BundleFacts) -> Path:
    """<index root>/quality/<build id>/eval (the bundle lives in <index root>/builds/<build id>)."""
    return facts.path.parent.parent / "quality" / facts.build_id / "eval"


# ---- genres -------------------------------------------------------------------------------------------------------
def measure_genres(data: Loaded, config: EvalConfig) -> dict[str, Any] | None:
    genres, vocabulary = metrics.genre_matrix(data.bundle.items["genres"].tolist())
    n = len(data.ids)
    candidates = np.flatnonzero(genres.any(axis=1)) if vocabulary else np.zeros(0, np.int64)
    if len(candidates) == 0 or n < 2:
        return None
    k = min(config.genre_k, n - 1)
    rows = sample_rows(candidates, config.genre_queries, rng_for(config.seed, STREAM_GENRES))
    nbr_ids, _ = served_item_neighbours(data.bundle, data.ids, data.vectors, rows, k)
    answers = {
        "model": ids_to_rows(data.ids, nbr_ids),
        "random": metrics.sample_neighbours(n, rows, k, rng_for(config.seed, STREAM_RANDOM)),
        "prior": metrics.sample_neighbours(
            n, rows, k, rng_for(config.seed, STREAM_PRIOR), metrics.genre_prior_weights(genres)
        ),
    }
    result: dict[str, Any] = {
        "k": k,
        "queries": int(len(rows)),
        "vocabulary": vocabulary,
        "note": "genres are a weak label of visual similarity",
        "baselines": {
            "random": "k items drawn uniformly (never the query)",
            "prior": "k items drawn with probability proportional to the summed catalog frequency of their genres",
        },
    }
    per_query = {}
    for name, nbr in answers.items():
        precision, jaccard = metrics.genre_agreement(genres, rows, nbr)
        per_query[name] = (precision, nbr)
        result[name] = {"precision": metrics.nanmean(precision), "jaccard": metrics.nanmean(jaccard)}
    per_genre = []
    for g, name in enumerate(vocabulary):
        mask = genres[rows, g]
        if not mask.any():
            continue
        entry: dict[str, Any] = {"genre": name, "queries": int(mask.sum())}
        for method, (precision, nbr) in per_query.items():
            entry[f"{method}_precision"] = metrics.nanmean(precision[mask])
            sub = nbr[mask]
            entry[f"{method}_same_genre"] = metrics.nanmean(genres[sub[sub >= 0], g].astype(np.float64))
        per_genre.append(entry)
    result["per_genre"] = per_genre
    return result


# ---- collections ----------------------------------------------------------------------------------------------------
def collection_labels(data: Loaded, config: EvalConfig) -> tuple[np.ndarray, Path] | None:
    path = config.collections_csv
    if path is None and data.facts.movies_csv is not None:
        candidate = data.facts.movies_csv.parent / COLLECTION_FILE
        path = candidate if candidate.is_file() else None
    if path is None:
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise QualityError(f"collections {path}: cannot read: {exc}") from exc
    missing = [c for c in (ID_COLUMN, config.collection_column) if c not in table.columns]
    if missing:
        raise QualityError(
            f"collections {path}: expected columns {ID_COLUMN} and "
            f"{config.collection_column}, missing {missing} (got {list(table.columns)})"
        )
    table = table[table[config.collection_column] != ""]
    codes, _ = pd.factorize(table[config.collection_column])
    label_of = dict(zip(pd.to_numeric(table[ID_COLUMN], errors="coerce").tolist(), codes.tolist(), strict=True))
    return np.array([label_of.get(int(i), -1) for i in data.ids], np.int64), path


def measure_collections(data: Loaded, config: EvalConfig) -> dict[str, Any] | None:
    found = collection_labels(data, config)
    if found is None:
        return None
    labels, path = found
    counts = pd.Series(labels[labels >= 0]).value_counts()
    rows = np.flatnonzero([lab >= 0 and counts.get(lab, 0) >= 2 for lab in labels.tolist()])
    if len(rows) == 0:
        return {"source": str(path), "queries": 0}
    kmax = min(max(config.collection_ks), len(data.ids) - 1)
    nbr_ids, _ = served_item_neighbours(data.bundle, data.ids, data.vectors, rows, kmax)
    nbr_rows = ids_to_rows(data.ids, nbr_ids)
    result: dict[str, Any] = {
        "source": str(path),
        "column": config.collection_column,
        "queries": int(len(rows)),
        "collections": int((counts >= 2).sum()),
    }
    for k in sorted({min(k, kmax) for k in config.collection_ks}):
        result[f"recall@{k}"] = metrics.nanmean(metrics.collection_recall(labels, rows, nbr_rows, k))
    aps = [
        metrics.average_precision(
            nbr_ids[i], set(data.ids[(labels == labels[r])].tolist()) - {int(data.ids[r])}, depth=kmax
        )
        for i, r in enumerate(rows)
    ]
    result[f"mAP@{kmax}"] = metrics.nanmean(np.array(aps))
    result["definition"] = "recall@k = same-collection items in the top k / min(k, other members of the collection)"
    return result


# ---- latency and duplicates ----------------------------------------------------------------------------------------
def measure_latency(
    data: Loaded, held_out: np.ndarray, query: QueryImage | None, copies: CopyQueries | None, config: EvalConfig
) -> dict[str, Any]:
    rows = sample_rows(np.arange(len(data.ids)), config.latency_queries, rng_for(config.seed, STREAM_LATENCY))
    out: dict[str, Any] = {"k": LATENCY_K, "threads": 1}
    with faiss_single_thread():
        out["item"] = metrics.latency_summary(
            time_each(
                lambda r: served_item_neighbours(data.bundle, data.ids, data.vectors, np.array([r]), LATENCY_K),
                list(rows),
            )
        )
        out["vector"] = metrics.latency_summary(
            time_each(lambda q: search(data.bundle, q[None], LATENCY_K), list(held_out[: config.latency_queries]))
        )
        if query is not None and copies is not None and copies.latency_samples:
            mode = QueryMode.parse(config.query_mode)
            out["image"] = metrics.latency_summary(
                time_each(
                    lambda b: query.search(b, LATENCY_K, lambda q, k: search(data.bundle, q, k), mode),
                    copies.latency_samples,
                )
            )
            out["image"]["mode"] = mode.value
    return out


def measure_duplicates(
    data: Loaded, copies: CopyQueries | None, config: EvalConfig
) -> tuple[dict[str, Any], list, dict[str, np.ndarray], np.ndarray]:
    pairs = count_near_duplicates(data.vectors, data.ids, config.duplicate_threshold)
    nearest = np.zeros(0, np.float32)
    if len(data.ids) >= 2:
        _, scores = served_item_neighbours(data.bundle, data.ids, data.vectors, np.arange(len(data.ids)), 1)
        nearest = scores[:, 0]
    edit_cosines: dict[str, np.ndarray] = {}
    if copies is not None:
        kinds = np.asarray(copies.kinds)
        cos = np.einsum("ij,ij->i", copies.vectors, data.vectors[copies.rows])
        edit_cosines = {k: cos[kinds == k] for k in dict.fromkeys(copies.kinds)}
    result: dict[str, Any] = {
        "threshold": config.duplicate_threshold,
        "pairs": len(pairs),
        "nearest_other_item_cosine": {
            "p50": float(np.percentile(nearest, 50)) if len(nearest) else None,
            "p99": float(np.percentile(nearest, 99)) if len(nearest) else None,
            "max": float(nearest.max()) if len(nearest) else None,
        },
    }
    reference = [edit_cosines[k] for k in DUPLICATE_REFERENCE_EDITS if k in edit_cosines]
    if reference:
        suggested = float(np.percentile(np.concatenate(reference), 100 * (1 - DUPLICATE_REFERENCE_RECALL)))
        result["suggested_threshold"] = {
            "value": suggested,
            "rule": f"catches {DUPLICATE_REFERENCE_RECALL:.0%} of the {'/'.join(DUPLICATE_REFERENCE_EDITS)} copies",
            "pairs_at_value": len(count_near_duplicates(data.vectors, data.ids, suggested)),
        }
    return result, pairs, edit_cosines, nearest


# ---- the run ---------------------------------------------------------------------------------------------------------
def load(config: EvalConfig) -> Loaded:
    bundle = open_bundle(config.root, verify=config.verify)
    facts = bundle_facts(bundle)
    ids, vectors = bundle_vectors(bundle)
    return Loaded(bundle, facts, ids, vectors, config.posters_dir or facts.posters_dir)


def evaluate(config: EvalConfig, embedder: Embedder | None = None, loaded: Loaded | None = None) -> dict[str, Any]:
    """Run every measurement on the bundle and write the report files; returns what eval.json holds."""
    from indexer.quality import eval_report

    config.validate()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    data = loaded or load(config)
    facts = data.facts
    out = config.out or default_out(facts)
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}
    notes: list[str] = []
    copies = None
    query = None
    query_path = None
    copy_result: dict[str, Any] | None = None
    if config.copy_sample == 0:
        notes.append("copy detection off (copy_sample 0)")
    elif facts.embedder is None:
        notes.append("copy detection skipped: the bundle was built from precomputed vectors (no image model)")
    elif data.posters_dir is None or not data.posters_dir.is_dir():
        raise QualityError(
            f"copy detection expected the poster folder, got {data.posters_dir} (pass --posters, or --copy-sample 0)"
        )
    else:
        t = time.perf_counter()
        embedder = query_embedder(facts, embedder)
        seconds["model"] = time.perf_counter() - t
        query = query_image(embedder, whitening=data.bundle.whitening)
        query_path = describe_query_path(query, config.query_mode, config.batch_size)
        t = time.perf_counter()
        copies = make_copy_queries(data, query, config)
        copy_result, copy_seconds = measure_copy_detection(data, copies, config)
        seconds["copy_detection"] = time.perf_counter() - t
        seconds.update({f"copy_{k}": v for k, v in copy_seconds.items()})
    t = time.perf_counter()
    held_out, held_out_source = held_out_vectors(data, copies, config)
    fidelity, curve_timings = measure_fidelity(data, held_out, held_out_source, config)
    seconds["fidelity"] = time.perf_counter() - t
    t = time.perf_counter()
    genres = measure_genres(data, config)
    collections = measure_collections(data, config)
    seconds["genres_collections"] = time.perf_counter() - t
    t = time.perf_counter()
    duplicates, pairs, edit_cosines, nearest = measure_duplicates(data, copies, config)
    seconds["duplicates"] = time.perf_counter() - t
    t = time.perf_counter()
    latency = measure_latency(data, held_out, query if copies is not None else None, copies, config)
    seconds["latency"] = time.perf_counter() - t
    payload: dict[str, Any] = {
        "tool": "posters-index eval",
        "created_at": started.isoformat(),
        "bundle": {k: v for k, v in asdict(facts).items()},
        "config": asdict(config),
        "query_path": query_path,
        "notes": notes,
        "metrics": {
            "fidelity": fidelity,
            "genres": genres,
            "copy_detection": copy_result,
            "collections": collections,
            "duplicates": duplicates,
        },
        "timings": {"latency": latency, "fidelity_curve": curve_timings, "seconds": seconds},
    }
    t = time.perf_counter()
    payload["files"] = eval_report.write_eval_outputs(
        out, payload, data, copies, pairs, edit_cosines, nearest, charts_on=config.charts
    )
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    eval_report.write_json_and_markdown(out, payload)
    log.info("eval of %s written to %s in %.1fs", facts.build_id, out, seconds["total"])
    payload["out"] = str(out)
    return payload
