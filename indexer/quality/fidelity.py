"""Search fidelity: the served index against exact search, at several nprobe values, with latency."""

from __future__ import annotations

from functools import partial
from typing import Any

import faiss
import numpy as np

from indexer.quality import metrics
from indexer.quality.bundle_view import BundleFacts, drop_ids, search, served_item_neighbours
from indexer.quality.copy_detection import CopyQueries
from indexer.quality.edits import IDENTITY
from indexer.quality.eval_config import (
    LATENCY_K,
    STREAM_FIDELITY,
    STREAM_PERTURB,
    EvalConfig,
    Loaded,
    faiss_single_thread,
    rng_for,
    sample_rows,
    time_each,
)

# Held-out vector queries for bundles without images: item vectors plus Gaussian noise of this norm.
PERTURB_NORM = 0.5


def _one_item_query(data: Loaded, nprobe: int | None, row: int) -> None:
    served_item_neighbours(data.bundle, data.ids, data.vectors, np.array([row]), LATENCY_K, nprobe, use_table=False)


def _one_vector_query(data: Loaded, nprobe: int | None, q: np.ndarray) -> None:
    search(data.bundle, q[None], LATENCY_K, nprobe)


def nprobe_values(facts: BundleFacts, config: EvalConfig) -> list[int | None]:
    if facts.index_type != "ivf" or facts.nlist == 0:
        return [None]
    if config.nprobes:
        values = {min(max(1, p), facts.nlist) for p in config.nprobes}
    else:
        values = {1 << e for e in range(facts.nlist.bit_length()) if 1 << e <= facts.nlist} | {facts.nlist}
    return [*sorted(values | {facts.nprobe})]


def held_out_vectors(data: Loaded, copies: CopyQueries | None, config: EvalConfig) -> tuple[np.ndarray, str]:
    """Vector queries that are not in the index: edited posters' embeddings, else perturbed item vectors."""
    rng = rng_for(config.seed, STREAM_PERTURB)
    if copies is not None and (np.asarray(copies.kinds) != IDENTITY).any():
        q = copies.vectors[np.asarray(copies.kinds) != IDENTITY]
        source = "embeddings of edited posters (copy-detection queries)"
    else:
        rows = sample_rows(np.arange(len(data.ids)), config.fidelity_queries, rng)
        noise = rng.normal(size=(len(rows), data.vectors.shape[1])).astype(np.float32)
        noise *= PERTURB_NORM / np.linalg.norm(noise, axis=1, keepdims=True)
        q = data.vectors[rows] + noise
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        source = f"item vectors plus Gaussian noise of norm {PERTURB_NORM}, re-normalized"
    if len(q) > config.fidelity_queries:
        q = q[sample_rows(np.arange(len(q)), config.fidelity_queries, rng)]
    return np.ascontiguousarray(q, np.float32), source


def measure_fidelity(
    data: Loaded, held_out: np.ndarray, held_out_source: str, config: EvalConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n, ids, x = len(data.ids), data.ids, data.vectors
    if n < 2:
        return {"skipped": "fewer than 2 items"}, []
    kmax = min(max(config.fidelity_ks), n - 1)
    ks = sorted({min(k, kmax) for k in config.fidelity_ks})
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    item_rows = sample_rows(np.arange(n), config.fidelity_queries, rng_for(config.seed, STREAM_FIDELITY))
    s, r = exact.search(x[item_rows], kmax + 1)
    truth_item = drop_ids(np.where(r >= 0, ids[r], -1), s, ids[item_rows], kmax)
    s, r = exact.search(held_out, kmax) if len(held_out) else (np.zeros((0, kmax)), np.zeros((0, kmax), np.int64))
    truth_vec = (np.where(r >= 0, ids[r], -1), s)

    def recalls(found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray], prefix: str) -> dict:
        return {f"{prefix}recall@{k}": metrics.nanmean(metrics.knn_recall_with_ties(*found, *truth, k)) for k in ks}

    lat_items = item_rows[: config.latency_queries]
    lat_vecs = held_out[: config.latency_queries]
    curve_metrics, curve_timings = [], []
    for nprobe in nprobe_values(data.facts, config):
        label = nprobe if nprobe is not None else "exact"
        point: dict[str, Any] = {"nprobe": label, "stored": nprobe == data.facts.nprobe or nprobe is None}
        point.update(
            recalls(
                served_item_neighbours(data.bundle, ids, x, item_rows, kmax, nprobe, use_table=False),
                truth_item,
                "item_",
            )
        )
        if len(held_out):
            point.update(recalls(search(data.bundle, held_out, kmax, nprobe)[::-1], truth_vec, "vector_"))
        curve_metrics.append(point)
        with faiss_single_thread():
            t_item = time_each(partial(_one_item_query, data, nprobe), list(lat_items))
            t_vec = time_each(partial(_one_vector_query, data, nprobe), list(lat_vecs))
        curve_timings.append(
            {
                "nprobe": label,
                "item_p50_ms": metrics.latency_summary(t_item)["p50_ms"],
                "vector_p50_ms": metrics.latency_summary(t_vec)["p50_ms"],
            }
        )
    served = recalls(served_item_neighbours(data.bundle, ids, x, item_rows, kmax), truth_item, "item_")
    result = {
        "ks": ks,
        "item_queries": int(len(item_rows)),
        "vector_queries": int(len(held_out)),
        "vector_query_source": held_out_source,
        "index": {"type": data.facts.index_type, "nlist": data.facts.nlist, "stored_nprobe": data.facts.nprobe},
        "served_item_path": {"path": "neighbour table" if data.facts.neighbours_k >= kmax else "index", **served},
        "curve": curve_metrics,
    }
    return result, curve_timings
