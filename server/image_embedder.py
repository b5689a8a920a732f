"""Query-by-image: embed uploaded bytes exactly as the bundle's posters were embedded."""

from __future__ import annotations

import logging

from indexer.bundle import Manifest
from indexer.embedders import Embedder, EmbedderSpec
from indexer.errors import ImageError, ImageTooLargeError, IndexerError
from indexer.images import WIDE_PIXEL_BYTES, DecodeConfig
from indexer.query_image import ImageSearch, QueryImage, QueryMode, SearchFn
from indexer.transform import Whitening
from server.admission import EmbeddingGate
from server.errors import InvalidArgument, ResourceExhausted
from server.guard import UNGUARDED, CallGuard

log = logging.getLogger(__name__)


class BundleImageEmbedder:
    """Decode (same resize policy) + embed (same model, weights, pooling) for one bundle."""

    def __init__(
        self,
        embedder: Embedder,
        max_pixels: int,
        max_bytes: int,
        gate: EmbeddingGate,
        whitening: Whitening | None = None,
    ) -> None:
        self.embedder = embedder
        self.gate = gate
        self.decode = DecodeConfig(
            size=embedder.input_size,
            resize=embedder.spec.resize,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            max_decoded_bytes=max_pixels * WIDE_PIXEL_BYTES,
        )
        # the one image-query path (posters-index eval runs it too), ending in the bundle's space (its whitening)
        self.query = QueryImage(embedder, self.decode, whitening=whitening)

    def search_image(
        self, data: bytes, k: int, search: SearchFn, mode: str, guard: CallGuard = UNGUARDED
    ) -> ImageSearch:
        """Find the poster in the upload (per ``mode``), search every window with ``search``, fuse by max
        score; all under one permit of the shared gate (bounded CPU and memory)."""
        try:
            query_mode = QueryMode.parse(mode)
        except ValueError as exc:
            raise InvalidArgument(str(exc), "mode") from exc
        with self.gate.permit(guard):
            try:
                return self.query.search(data, k, search, query_mode, check=guard.check)
            except ImageTooLargeError as exc:
                raise ResourceExhausted(f"image too large: {exc}") from exc
            except ImageError as exc:
                raise InvalidArgument(f"image expected a decodable JPEG/PNG/WebP/GIF/BMP/TIFF: {exc}", "image") from exc


class EmbedderPool:
    """Embedders built for bundles, reused across reloads with the same fingerprint."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[str, Embedder] = {}

    def for_manifest(
        self,
        manifest: Manifest,
        max_pixels: int,
        max_bytes: int,
        gate: EmbeddingGate,
        whitening: Whitening | None = None,
    ) -> tuple[BundleImageEmbedder | None, str]:
        """(embedder, "") or (None, reason image search is unavailable)."""
        described = manifest.embedder
        if described is None:
            return None, f"the bundle was built from precomputed vectors ({manifest.model}), not images"
        fingerprint = described.fingerprint
        embedder = self._by_fingerprint.get(fingerprint)
        if embedder is None:
            try:
                embedder = Embedder(EmbedderSpec.from_dict(described.model_dump()))
            except (IndexerError, OSError, ValueError, TypeError) as exc:
                return None, f"cannot build the bundle's embedder {described.model}: {exc}"
            if embedder.fingerprint != fingerprint:
                return None, (
                    f"embedder fingerprint mismatch: bundle expects {fingerprint[:12]}, "
                    f"this server builds {embedder.fingerprint[:12]} (model, weights or library changed)"
                )
            self._by_fingerprint = {fingerprint: embedder}  # keep only the latest model in memory
        return BundleImageEmbedder(embedder, max_pixels, max_bytes, gate, whitening), ""
