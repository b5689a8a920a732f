#!/usr/bin/env python3
"""Embedding benchmark: the notebooks' per-image predict loop vs the indexer pipeline.

For each model, on the same synthetic poster JPEGs (decode included end to end):
  loop      keras load_img + preprocess + model.predict(one image), per image (the notebooks)
  pure      the embedder on already-decoded batches (the model's batched throughput, no decode)
  pipeline  indexer.pipeline.embed_files: file read + Pillow decode on threads overlapping batched inference
and the achieved GFLOP/s as a fraction of a float32 GEMM measured in the same run.

  python scripts/bench_embed.py                                  # efficientnet_lite0 + vgg16 (~4 min)
  python scripts/bench_embed.py --models efficientnet_lite0 --images 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from bench_common import machine, write_results

GEMM_SIZE = 2048
BATCH = 32


def gemm_gflops(repeats: int = 7) -> float:
    """float32 matrix multiply (NumPy/BLAS, all cores), median GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((GEMM_SIZE, GEMM_SIZE), np.float32), rng.random((GEMM_SIZE, GEMM_SIZE), np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * GEMM_SIZE**3 / float(np.median(times)) / 1e9


def model_gflop_per_image(model: Any) -> float:
    """Multiply-adds x 2 of the convolution and dense layers, read from the model."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * c
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * layer.input.shape[-1] * cout
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops / 1e9


def bench_model(name: str, weights: str, paths: list[Path], loop_images: int) -> dict:
    import keras

    from indexer.embedders import Embedder, EmbedderSpec
    from indexer.images import DecodeConfig, decode_image
    from indexer.pipeline import PipelineConfig, embed_files

    emb = Embedder(EmbedderSpec(model=name, weights=weights))
    size = emb.input_size
    gflop = model_gflop_per_image(emb.model)
    decode = DecodeConfig(size=size, resize="stretch")
    # the notebooks: one image at a time through keras' loaders and model.predict
    model, preprocess = emb.model, emb.backbone.preprocess
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)
    t = time.perf_counter()
    for p in paths[:loop_images]:
        x = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
        model.predict(np.asarray(preprocess(x[None])), verbose=0)
    loop = loop_images / (time.perf_counter() - t)
    # pure batched model throughput on pre-decoded images
    decoded = np.stack([decode_image(p.read_bytes(), decode) for p in paths])
    emb.embed(decoded[:BATCH])
    t = time.perf_counter()
    for start in range(0, len(decoded), BATCH):
        emb.embed(decoded[start : start + BATCH])
    pure = len(decoded) / (time.perf_counter() - t)
    del decoded
    # the indexer pipeline end to end (read + decode on threads, batched inference), no cache
    out = embed_files(paths, emb.embed, decode, PipelineConfig(batch_size=BATCH, decode_workers=2, progress=False))
    assert len(out.vectors) == len(paths), out.failures
    pipeline = out.embedded / out.seconds
    return {
        "model": name,
        "weights": weights,
        "gflop_per_image": round(gflop, 3),
        "images": len(paths),
        "loop_img_s": round(loop, 2),
        "pure_img_s": round(pure, 2),
        "pipeline_img_s": round(pipeline, 2),
        "pipeline_vs_pure": round(pipeline / pure, 3),
        "pipeline_vs_loop": round(pipeline / loop, 2),
        "pipeline_gflops": round(pipeline * gflop, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientnet_lite0,vgg16")
    p.add_argument("--images", type=int, default=96, help="posters per model (vgg16 uses a third)")
    p.add_argument("--loop-images", type=int, default=16, help="images through the per-image loop")
    args = p.parse_args()
    from indexer.demo_catalog import write_demo_catalog

    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_catalog(Path(tmp), count=args.images)
        paths = sorted((Path(tmp) / "posters").glob("*.jpg"))
        gemm_before = gemm_gflops()
        for name in args.models.split(","):
            n = len(paths) if name != "vgg16" else max(BATCH, len(paths) // 3)
            print(f"{name}: {n} posters ...", file=sys.stderr)
            rows.append(
                bench_model(name, "imagenet" if name == "efficientnet_lite0" else "none", paths[:n], args.loop_images)
            )
        gemm_after = gemm_gflops()
    gemm = (gemm_before + gemm_after) / 2
    for r in rows:
        r["gemm_gflops"] = round(gemm, 1)
        r["fraction_of_gemm"] = round(r["pipeline_gflops"] / gemm, 3)
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; float32 GEMM {gemm:.0f} GFLOP/s "
        f"(before {gemm_before:.0f}, after {gemm_after:.0f}); {info['date']}.",
        "",
        "| model | GFLOP/img | per-image loop img/s | pure batched img/s | pipeline img/s | pipeline / pure "
        "| pipeline / loop | pipeline GFLOP/s | of GEMM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['weights']}) | {r['gflop_per_image']} | {r['loop_img_s']} | {r['pure_img_s']} "
            f"| {r['pipeline_img_s']} | {r['pipeline_vs_pure']:.0%} | {r['pipeline_vs_loop']}x "
            f"| {r['pipeline_gflops']} | {r['fraction_of_gemm']:.0%} |"
        )
    md = "\n".join(lines) + "\n"
    path = write_results("bench_embed", {"machine": info, "gemm_gflops": gemm, "results": rows}, md)
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
