"""Image queries embedded exactly as SearchByImage embeds them (server/image_embedder.py).

``embed_image_bytes`` mirrors ``BundleImageEmbedder.embed_image``: decode with the bundle's resize policy at
the model's input size, embed with the bundle's model, weights and pooling, L2-normalize. It takes a
batch (one model call for many queries); a single query is a batch of one. ``describe_query_path`` is
recorded in every evaluation so runs with a different query path (localisation, GeM, whitening) can be
told apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.embedders import Embedder, EmbedderSpec
from indexer.images import DecodeConfig, decode_image
from indexer.index import normalize
from indexer.quality import QualityError
from indexer.quality.bundle_view import BundleFacts

QUERY_PATH_VERSION = 1
QUERY_PATH_STEPS = (
    "indexer.images.decode_image(bundle resize policy, model input size)",
    "indexer.embedders.Embedder.embed (bundle model, weights, pooling)",
    "L2 normalize",
    "FAISS index search at the bundle's stored nprobe",
)


def query_embedder(facts: BundleFacts, embedder: Embedder | None = None) -> Embedder:
    """The bundle's embedder: ``embedder`` if it has the bundle's fingerprint, else a new one (≈ 2 s)."""
    if facts.embedder is None:
        raise QualityError(
            f"bundle {facts.build_id} was built from precomputed vectors ({facts.model}): "
            "expected a bundle built from images for image queries"
        )
    if embedder is None:
        embedder = Embedder(EmbedderSpec.from_dict(facts.embedder))
    if facts.fingerprint and embedder.fingerprint != facts.fingerprint:
        raise QualityError(
            f"embedder fingerprint expected {facts.fingerprint[:12]} (bundle {facts.build_id}), "
            f"got {embedder.fingerprint[:12]} (model, weights or library changed)"
        )
    return embedder


def embed_image_bytes(embedder: Embedder, images: Sequence[bytes]) -> np.ndarray:
    """Encoded images -> L2-normalized float32 vectors (n, dim), as SearchByImage computes them."""
    decode = DecodeConfig(size=embedder.input_size, resize=embedder.spec.resize)
    if not images:
        return np.zeros((0, embedder.dim), np.float32)
    pixels = np.stack([decode_image(data, decode) for data in images])
    vectors, ok = normalize(embedder.embed(pixels))
    if not ok.all():
        raise QualityError(f"image query embeddings expected non-zero and finite, got {int((~ok).sum())} bad rows")
    return vectors


def describe_query_path(embedder: Embedder, batch_size: int) -> dict[str, Any]:
    """What the evaluation's image queries went through (recorded in eval.json)."""
    return {
        "version": QUERY_PATH_VERSION,
        "steps": list(QUERY_PATH_STEPS),
        "decode": {"size": embedder.input_size, "resize": embedder.spec.resize},
        "embedder": embedder.describe(),
        "normalization": "l2",
        "localisation": None,
        "batch_size": batch_size,
    }
