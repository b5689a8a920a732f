"""Image queries of an evaluation, through the server's own image-query path (indexer/query_image.py).

``query_image`` builds the ``QueryImage`` the server builds for a bundle (same decode, model, pooling,
localisation); ``embed_image_bytes`` is its ``whole`` mode for a batch (one model call for many queries,
the vectors of ``QueryImage.embed_whole_batch``). ``describe_query_path`` is recorded in every evaluation
so runs with a different query path (mode, localisation, GeM, whitening) can be told apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.embedders import Embedder, EmbedderSpec
from indexer.errors import ImageError
from indexer.images import DecodeConfig
from indexer.quality import QualityError
from indexer.quality.bundle_view import BundleFacts
from indexer.query_image import QueryImage, QueryImageConfig, QueryMode
from indexer.transform import Whitening

QUERY_PATH_STEPS = (
    "indexer.images.decode_image(bundle resize policy, model input size)",
    "indexer.embedders.Embedder.embed (bundle model, weights, pooling, scales)",
    "L2 normalize (then the bundle's whitening and L2 normalize again, when it has one)",
    "FAISS index search at the bundle's stored nprobe",
)
LOCATE_STEPS = (
    "indexer.images.decode_image(bundle resize policy, model input size): the whole-image window",
    "indexer.localise.propose (edges -> convex quadrilaterals) + rectify (homography): candidate windows",
    "every window through the same resize policy, embedded in one model call (bundle model, weights, pooling, scales)",
    "L2 normalize (then the bundle's whitening and L2 normalize again, when it has one)",
    "FAISS index search of every window at the bundle's stored nprobe",
    "max fusion of the windows' results (indexer.query_image.fuse_max)",
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


def query_image(
    embedder: Embedder, config: QueryImageConfig | None = None, whitening: Whitening | None = None
) -> QueryImage:
    """The image-query path of a bundle built with ``embedder`` (default decode limits) and, when the bundle has
    one, its whitening."""
    return QueryImage(embedder, DecodeConfig(size=embedder.input_size, resize=embedder.spec.resize), config, whitening)


def embed_image_bytes(embedder: Embedder, images: Sequence[bytes]) -> np.ndarray:
    """Encoded images -> L2-normalized float32 vectors (n, dim), as SearchByImage computes them in ``whole``
    mode."""
    try:
        return query_image(embedder).embed_whole_batch(images)
    except ImageError as exc:
        raise QualityError(f"image queries: {exc}") from exc


def describe_query_path(query: QueryImage, mode: QueryMode | str, batch_size: int) -> dict[str, Any]:
    """What the evaluation's image queries went through (recorded in eval.json)."""
    mode = QueryMode.parse(mode)
    steps = list(QUERY_PATH_STEPS if mode is QueryMode.WHOLE else LOCATE_STEPS)
    if mode is QueryMode.AUTO:
        steps.insert(
            0, f"auto: the whole image first; windows only when its best score < {query.config.auto_confident}"
        )
    return {**query.describe(mode), "steps": steps, "batch_size": batch_size}
