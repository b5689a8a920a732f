"""Query-by-image: embed uploaded bytes exactly as the bundle's posters were embedded."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from indexer.embedders import Embedder, EmbedderSpec
from indexer.errors import ImageError, ImageTooLargeError, IndexerError
from indexer.images import DecodeConfig, decode_image
from server.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)


class BundleImageEmbedder:
    """Decode (same resize policy) + embed (same model, weights, pooling) for one bundle."""

    def __init__(self, embedder: Embedder, max_pixels: int, max_bytes: int) -> None:
        self.embedder = embedder
        self.decode = DecodeConfig(size=embedder.input_size, resize=embedder.spec.resize,
                                   max_pixels=max_pixels, max_bytes=max_bytes)

    def embed_image(self, data: bytes) -> np.ndarray:
        try:
            pixels = decode_image(data, self.decode)
        except ImageTooLargeError as exc:
            raise ResourceExhausted(f"image too large: {exc}") from exc
        except ImageError as exc:
            raise InvalidArgument(f"image expected a decodable JPEG/PNG/WebP/GIF/BMP/TIFF: {exc}") from exc
        return self.embedder.embed(pixels[None])[0]


class EmbedderPool:
    """Embedders built for bundles, reused across reloads with the same fingerprint."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[str, Embedder] = {}

    def for_manifest(self, manifest: dict[str, Any], max_pixels: int, max_bytes: int
                     ) -> tuple[BundleImageEmbedder | None, str]:
        """(embedder, "") or (None, reason image search is unavailable)."""
        described = manifest.get("embedder")
        if not described:
            return None, f"the bundle was built from precomputed vectors ({manifest.get('model')}), not images"
        fingerprint = described.get("fingerprint", "")
        embedder = self._by_fingerprint.get(fingerprint)
        if embedder is None:
            try:
                embedder = Embedder(EmbedderSpec.from_dict(described))
            except (IndexerError, OSError, ValueError, TypeError) as exc:
                return None, f"cannot build the bundle's embedder {described.get('model')}: {exc}"
            if embedder.fingerprint != fingerprint:
                return None, (f"embedder fingerprint mismatch: bundle expects {fingerprint[:12]}, "
                              f"this server builds {embedder.fingerprint[:12]} (model, weights or library changed)")
            self._by_fingerprint = {fingerprint: embedder}  # keep only the latest model in memory
        return BundleImageEmbedder(embedder, max_pixels, max_bytes), ""
