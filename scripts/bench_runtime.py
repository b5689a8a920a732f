#!/usr/bin/env python3
"""Embedding runtime benchmark: Keras (TensorFlow) vs the same model converted to TFLite (XNNPACK), end to end.

On the same synthetic poster JPEGs, for the default embedder (efficientnet_lite0, ImageNet weights), per runtime:
  batched   indexer.pipeline.embed_files: file read + Pillow decode + resize on threads, batches of --batch
  single    one poster at a time: read, decode, resize, embed a batch of 1 (the query-by-image path)
  pure      the forward pass alone on already-decoded batches of --batch
Medians over --repeats timed runs (runtimes interleaved run by run), embeddings/s; the same-vector check is the
minimum cosine, over all posters, between each runtime's vectors and Keras'. TFLite runs once per --micro-batches
value (images per interpreter call). The conversion (into a temporary cache) and the cached load are timed too.

  python scripts/bench_runtime.py                              # 256 posters, 5 repeats (~5 min)
  python scripts/bench_runtime.py --images 16 --single-images 4 --repeats 1   # smoke run

Writes JSON + Markdown under benchmarks/results/ (bench_common.write_results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from bench_common import machine, write_results

BATCH = 32
DECODE_WORKERS = 2
ADOPT_SPEEDUP = 1.5  # issue #13 item 8: adopt the runtime as an option if >= 1.5x faster end to end
MIN_COSINE = 0.9999  # same vectors within tolerance
KERAS = "keras"

EmbedFn = Callable[[np.ndarray], np.ndarray]


def batched_run(paths: list[Path], embed: EmbedFn, decode: Any, batch: int) -> tuple[float, np.ndarray]:
    """(embeddings/s, vectors by position) of the indexer pipeline over ``paths``."""
    from indexer.pipeline import PipelineConfig, embed_files

    out = embed_files(
        paths, embed, decode, PipelineConfig(batch_size=batch, decode_workers=DECODE_WORKERS, progress=False)
    )
    if out.failures or len(out.vectors) != len(paths):
        raise RuntimeError(f"expected {len(paths)} vectors, got {len(out.vectors)}; failures {out.failures}")
    return out.embedded / out.seconds, np.stack([out.vectors[i] for i in range(len(paths))])


def single_run(paths: list[Path], embed: EmbedFn, decode: Any) -> float:
    """Embeddings/s of one poster at a time: read, decode, resize, embed."""
    from indexer.images import decode_image

    start = time.perf_counter()
    for path in paths:
        embed(decode_image(path.read_bytes(), decode)[None])
    return len(paths) / (time.perf_counter() - start)


def pure_run(decoded: np.ndarray, embed: EmbedFn, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(decoded), batch):
        embed(decoded[i : i + batch])
    return len(decoded) / (time.perf_counter() - start)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.min(np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="synthetic posters (batched and pure modes)")
    p.add_argument("--single-images", type=int, default=64, help="posters through the one-at-a-time mode")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each mode per runtime (median)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TFLite (XNNPACK) threads")
    p.add_argument("--micro-batches", default="1,4,8", help="TFLite images per interpreter call, comma-separated")
    args = p.parse_args()
    import tensorflow as tf

    from indexer.demo_catalog import write_demo_catalog
    from indexer.embedders import Embedder, EmbedderSpec
    from indexer.embedders.tflite_runtime import TFLiteConfig, TFLiteForward
    from indexer.images import DecodeConfig, decode_image

    info = {**machine(), "tensorflow": tf.__version__}
    micro_batches = [int(v) for v in args.micro_batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_catalog(Path(tmp), count=args.images)
        paths = sorted((Path(tmp) / "posters").glob("*.jpg"))
        emb = Embedder(EmbedderSpec())
        decode = DecodeConfig(size=emb.input_size, resize=emb.spec.resize)
        cache = Path(tmp) / "tflite-cache"

        def tflite(micro_batch: int) -> tuple[TFLiteForward, float]:
            start = time.perf_counter()
            forward = TFLiteForward.from_keras(
                emb.model,
                emb.backbone.preprocess,
                emb.input_size,
                cache,
                emb.fingerprint,
                TFLiteConfig(threads=args.threads, micro_batch=micro_batch),
            )
            return forward, time.perf_counter() - start

        runtimes: dict[str, EmbedFn] = {KERAS: emb.embed}
        setup: dict[str, float] = {}
        for mb in micro_batches:
            forward, seconds = tflite(mb)
            setup["convert_s" if forward.converted else f"cached_load_mb{mb}_s"] = round(seconds, 2)
            runtimes[f"tflite mb={mb}"] = forward
        decoded = np.stack([decode_image(path.read_bytes(), decode) for path in paths])
        samples: dict[str, dict[str, list[float]]] = {
            name: {"batched": [], "single": [], "pure": []} for name in runtimes
        }
        vectors: dict[str, np.ndarray] = {}
        for embed in runtimes.values():  # warm-up: graph tracing, XNNPACK set-up, page cache
            embed(decoded[: args.batch])
            embed(decoded[:1])
        for r in range(args.repeats):
            for name, embed in runtimes.items():
                print(f"repeat {r + 1}/{args.repeats}: {name} ...", file=sys.stderr)
                rate, vectors[name] = batched_run(paths, embed, decode, args.batch)
                samples[name]["batched"].append(rate)
                samples[name]["single"].append(single_run(paths[: args.single_images], embed, decode))
                samples[name]["pure"].append(pure_run(decoded, embed, args.batch))
    rows: list[dict[str, Any]] = []
    for name in runtimes:
        med = {mode: statistics.median(values) for mode, values in samples[name].items()}
        rows.append(
            {
                "runtime": name,
                **{f"{mode}_img_s": round(v, 2) for mode, v in med.items()},
                "min_cosine_vs_keras": round(min_cosine(vectors[name], vectors[KERAS]), 7),
                "samples": samples[name],
            }
        )
    base = rows[0]
    for row in rows:
        for mode in ("batched", "single", "pure"):
            row[f"{mode}_speedup"] = round(row[f"{mode}_img_s"] / base[f"{mode}_img_s"], 2)
    best = max(rows[1:], key=lambda row: row["batched_img_s"])
    adopt = best["batched_speedup"] >= ADOPT_SPEEDUP and best["min_cosine_vs_keras"] >= MIN_COSINE
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}; {info['date']}.",
        f"{args.images} synthetic posters (single: {args.single_images}), batch {args.batch}, TFLite threads "
        f"{args.threads}, medians of {args.repeats}. Conversion {setup.get('convert_s')} s (once, cached).",
        "",
        "| runtime | batched pipeline img/s | single-image img/s | pure forward img/s | batched x | single x "
        "| pure x | min cosine vs Keras |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['runtime']} | {row['batched_img_s']} | {row['single_img_s']} | {row['pure_img_s']} "
            f"| {row['batched_speedup']} | {row['single_speedup']} | {row['pure_speedup']} "
            f"| {row['min_cosine_vs_keras']} |"
        )
    lines += [
        "",
        f"Best TFLite ({best['runtime']}): {best['batched_speedup']}x end to end (batched); adopt as an "
        f"option (>= {ADOPT_SPEEDUP}x and cosine >= {MIN_COSINE}): {'yes' if adopt else 'no'}.",
    ]
    md = "\n".join(lines) + "\n"
    payload = {"machine": info, "config": vars(args), "setup": setup, "adopt": adopt, "results": rows}
    path = write_results("bench_runtime", payload, md)
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
