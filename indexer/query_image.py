"""The one image-query path: SearchByImage in the server and copy detection in ``posters-index eval``.

Three modes (``QueryMode``):

- ``whole``: the upload decoded exactly as a catalog poster (``indexer.images.decode_image``: resize policy,
  model input size), embedded with the bundle's model and pooling, L2-normalized: one vector;
- ``locate``: the whole image plus up to ``LocaliseConfig.max_windows`` candidate poster windows found in it
  (``indexer.localise``: edges -> convex quadrilaterals -> perspective undone by a homography), each cut
  from the upload and put through the same resize policy, all embedded in ONE model call; every window
  is searched and the answers fused (``fuse_max``: an item scores its best window). The whole image is
  always window 0, so a plain poster upload keeps today's answer unless a window matches better;
- ``auto`` (the default): ``whole`` first; when its best match scores at least ``auto_confident`` the
  answer is final, otherwise the windows are embedded (a second model call) and fused with it.

Every window carries its corners and bounding box in the uploaded image's pixels after EXIF orientation,
so a client can draw which part of its photo matched. ``check(stage)`` is called between the expensive
steps (the server passes its cancellation guard). Descriptor post-processing (GeM, whitening) belongs to
the embedder and reaches every window through ``Embedder.embed`` unchanged.
"""

from __future__ import annotations

import enum
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from indexer.embedders import Embedder
from indexer.errors import ImageError
from indexer.images import EXIF_ORIENTATION_TAG, DecodeConfig, decode_full, decode_image, fit_to_input
from indexer.index import normalize
from indexer.localise import LocaliseConfig, opencv, propose, quad_box, rectify
from indexer.transform import Whitening

log = logging.getLogger(__name__)

QUERY_PATH_VERSION = 2  # 1: whole image only; 2: query modes with localisation
WHOLE_WINDOW = 0  # the whole image is always the first window
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations whose transpose swaps width and height
# ``decode_full`` keeps the shorter side at least its ``max_side`` where the format allows (JPEG draft
# scales): asking for half the working side leaves a working image near ``working_side`` on its longer side.
WORKING_DECODE_SHARE = 2
DEFAULT_AUTO_CONFIDENT = 0.9  # whole-image top-1 cosine above which ``auto`` does not localise (measured)
DEFAULT_WORKING_SIDE = 1024

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""(L2-normalized queries (n, d) float32, k) -> (scores (n, k), item ids (n, k) int64, -1 padding), as FAISS."""
CheckFn = Callable[[str], None]


def _no_check(stage: str) -> None:
    """The default ``check``: nothing to cancel."""


class QueryMode(enum.StrEnum):
    """How an image query is embedded: the whole upload, localised windows, or decided per query."""

    WHOLE = "whole"
    LOCATE = "locate"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str | QueryMode | None) -> QueryMode:
        """A mode from its name; None or "" is the default (auto)."""
        if isinstance(value, QueryMode):
            return value
        if value is None or value == "":
            return DEFAULT_QUERY_MODE
        try:
            return cls(value.lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"image query mode expected one of {names}, got {value!r}") from None


DEFAULT_QUERY_MODE = QueryMode.AUTO


@dataclass(frozen=True)
class QueryImageConfig:
    localise: LocaliseConfig = field(default_factory=LocaliseConfig)
    working_side: int = DEFAULT_WORKING_SIDE  # windows are cut from the upload reduced to this longer side
    auto_confident: float = DEFAULT_AUTO_CONFIDENT

    def validate(self) -> None:
        self.localise.validate()
        if self.working_side < self.localise.proposal_side:
            raise ValueError(
                f"working side expected >= the proposal side {self.localise.proposal_side}, got {self.working_side}"
            )
        if not -1.0 <= self.auto_confident <= 1.0:
            raise ValueError(f"auto_confident expected a cosine in [-1, 1], got {self.auto_confident}")

    def describe(self) -> dict[str, Any]:
        """What an evaluation records about localisation."""
        return {
            **asdict(self),
            "method": "Canny edges -> convex quadrilaterals -> homography rectification (indexer.localise)",
            "fusion": "max over windows (indexer.query_image.fuse_max)",
        }


@dataclass(frozen=True)
class QueryEmbedding:
    """The windows of one image query: row ``WHOLE_WINDOW`` is the whole image."""

    vectors: np.ndarray  # (n, dim) float32, L2-normalized
    quads: np.ndarray  # (n, 4, 2) float32 corners (top-left, top-right, bottom-right, bottom-left)
    image_size: tuple[int, int]  # (width, height) of the upload after EXIF orientation: the quads' frame

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 (x0, y0, x1, y1) bounding boxes of the windows, in the upload's pixels."""
        if len(self.quads) == 0:
            return np.zeros((0, 4), np.float32)
        return np.array([quad_box(q) for q in self.quads], np.float32)

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True)
class FusedHits:
    """A fused ranking: item ids, their best score over the windows, and which window gave it."""

    ids: np.ndarray  # (m,) int64, m <= k, best first
    scores: np.ndarray  # (m,) float32
    windows: np.ndarray  # (m,) int64: row of the QueryEmbedding that produced each score


@dataclass(frozen=True)
class ImageSearch:
    hits: FusedHits
    embedding: QueryEmbedding  # the windows searched (only the whole image when not localised)
    mode: QueryMode  # as requested
    localised: bool  # windows besides the whole image were searched

    def box_of(self, hit: int) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in the upload's pixels of the window that matched hit ``hit``."""
        x0, y0, x1, y1 = (float(v) for v in self.embedding.boxes[int(self.hits.windows[hit])])
        return x0, y0, x1, y1


def fuse_max(scores: np.ndarray, ids: np.ndarray, k: int) -> FusedHits:
    """Fuse per-window search results (scores (nw, kw), ids (nw, kw), -1 = no result) by max.

    Each item scores its best window; items are ranked by that score, ties broken by the lower window, then
    the better rank within it (deterministic). With each window searched to depth k, the fused top k is the
    exact top k of max fusion over all items: an item whose best window ranks it below k has k items above
    it in that window, each with a fused score at least as high.
    """
    scores = np.asarray(scores, np.float32)
    ids = np.asarray(ids, np.int64)
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"scores and ids expected the same 2-D shape (windows, k), got {scores.shape} and {ids.shape}")
    if k < 0:
        raise ValueError(f"k expected >= 0, got {k}")
    n_windows, depth = ids.shape
    window = np.repeat(np.arange(n_windows, dtype=np.int64), depth)
    rank = np.tile(np.arange(depth, dtype=np.int64), n_windows)
    flat_ids, flat_scores = ids.ravel(), scores.ravel()
    valid = flat_ids >= 0
    flat_ids, flat_scores, window, rank = flat_ids[valid], flat_scores[valid], window[valid], rank[valid]
    order = np.lexsort((rank, window, -flat_scores))
    _, first = np.unique(flat_ids[order], return_index=True)  # each item's best (first in order) entry
    take = order[np.sort(first)][:k]
    return FusedHits(flat_ids[take], flat_scores[take], window[take])


def _oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the upload as displayed (EXIF orientation applied); header only."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        swapped = im.getexif().get(EXIF_ORIENTATION_TAG) in SWAPPED_ORIENTATIONS
    return (h, w) if swapped else (w, h)


def _whole_quad(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)


class QueryImage:
    """An image query for one bundle: the bundle's decode (resize policy, input size) and embedder."""

    def __init__(
        self,
        embedder: Embedder,
        decode: DecodeConfig,
        config: QueryImageConfig | None = None,
        whitening: Whitening | None = None,
    ) -> None:
        config = config or QueryImageConfig()
        config.validate()
        if decode.size != embedder.input_size or decode.resize != embedder.spec.resize:
            raise ValueError(
                f"decode expected the embedder's input size {embedder.input_size} and resize policy "
                f"{embedder.spec.resize!r}, got {decode.size} and {decode.resize!r}"
            )
        self.embedder = embedder
        self.decode = decode
        self.config = config
        if whitening is not None and whitening.in_dim != embedder.dim:
            raise ValueError(f"whitening expected input dimension {embedder.dim}, got {whitening.in_dim}")
        self.whitening = whitening  # the bundle's transform: query vectors go to the index's space
        self.dim = whitening.out_dim if whitening is not None else embedder.dim

    # ---- embedding ---------------------------------------------------------------------------------------------
    def _vectors(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors, ok = normalize(self.embedder.embed(pixels))
        if self.whitening is not None:  # exactly the build's step: normalize -> whiten -> normalize
            vectors, white = self.whitening.apply(vectors)
            ok &= white
        return vectors, ok

    def embed_whole_batch(self, images: Sequence[bytes]) -> np.ndarray:
        """Many uploads in ``whole`` mode, one model call: L2-normalized float32 (n, dim).

        Raises ImageError (or ImageTooLargeError) for an undecodable upload or a zero / non-finite embedding.
        """
        if not images:
            return np.zeros((0, self.dim), np.float32)
        vectors, ok = self._vectors(np.stack([decode_image(data, self.decode) for data in images]))
        if not ok.all():
            raise ImageError(f"image embedding expected finite and non-zero, got {int((~ok).sum())} of {len(ok)} bad")
        return vectors

    def _window_pixels(self, data: bytes, check: CheckFn) -> tuple[list[np.ndarray], list[np.ndarray], tuple[int, int]]:
        """Candidate windows of the upload: model inputs and corners in the upload's pixels."""
        side = self.config.working_side
        working = np.asarray(decode_full(data, self.decode, max(1, side // WORKING_DECODE_SHARE)))
        size = _oriented_size(data)
        h, w = working.shape[:2]
        if max(h, w) > side:
            cv2 = opencv()
            reduce = side / max(h, w)
            working = cv2.resize(
                working, (max(1, round(w * reduce)), max(1, round(h * reduce))), interpolation=cv2.INTER_AREA
            )
            h, w = working.shape[:2]
        check("image localisation")
        scale = np.array([size[0] / w, size[1] / h], np.float32)
        proposals = propose(working, self.config.localise, pixel_scale=float(scale.max()))
        pixels = [fit_to_input(Image.fromarray(rectify(working, p.quad)), self.decode) for p in proposals]
        quads = [p.quad * scale for p in proposals]
        return pixels, quads, size

    def embed(
        self, data: bytes, mode: QueryMode | str = QueryMode.LOCATE, check: CheckFn = _no_check
    ) -> QueryEmbedding:
        """The windows of one upload: ``whole`` -> the whole image; ``locate`` -> whole + candidate windows,
        all in one model call (windows whose embedding is zero or not finite are dropped).

        ``auto`` decides from a search result: use ``search``.
        """
        mode = QueryMode.parse(mode)
        if mode is QueryMode.AUTO:
            raise ValueError("embed expected mode whole or locate (auto decides from a search: use search())")
        whole = decode_image(data, self.decode)
        check("image decoding")
        if mode is QueryMode.WHOLE:
            vector = self._checked_whole(self._vectors(whole[None]))
            size = _oriented_size(data)
            return QueryEmbedding(vector, _whole_quad(*size)[None], size)
        pixels, quads, size = self._window_pixels(data, check)
        check("image embedding")
        vectors, ok = self._vectors(np.stack([whole, *pixels]))
        self._checked_whole((vectors[:1], ok[:1]))
        all_quads = np.stack([_whole_quad(*size), *quads]).astype(np.float32)
        return QueryEmbedding(vectors[ok], all_quads[ok], size)

    @staticmethod
    def _checked_whole(result: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        vectors, ok = result
        if not ok[0]:
            raise ImageError("image embedding expected finite and non-zero, got a zero or non-finite vector")
        return vectors[:1]

    # ---- search ------------------------------------------------------------------------------------------------
    def search(
        self,
        data: bytes,
        k: int,
        search: SearchFn,
        mode: QueryMode | str = DEFAULT_QUERY_MODE,
        check: CheckFn = _no_check,
    ) -> ImageSearch:
        """The k best items for an upload: embed per ``mode``, ``search`` every window, fuse by max."""
        mode = QueryMode.parse(mode)
        if mode is QueryMode.LOCATE:
            embedding = self.embed(data, QueryMode.LOCATE, check)
            check("image search")
            scores, ids = search(embedding.vectors, k)
            return ImageSearch(fuse_max(scores, ids, k), embedding, mode, localised=len(embedding) > 1)
        whole = self.embed(data, QueryMode.WHOLE, check)
        check("image search")
        scores, ids = search(whole.vectors, k)
        confident = scores.shape[1] > 0 and ids[0, 0] >= 0 and float(scores[0, 0]) >= self.config.auto_confident
        if mode is QueryMode.WHOLE or confident:
            return ImageSearch(fuse_max(scores, ids, k), whole, mode, localised=False)
        pixels, quads, size = self._window_pixels(data, check)
        if not pixels:
            return ImageSearch(fuse_max(scores, ids, k), whole, mode, localised=False)
        check("image embedding")
        vectors, ok = self._vectors(np.stack(pixels))
        if not ok.any():
            return ImageSearch(fuse_max(scores, ids, k), whole, mode, localised=False)
        embedding = QueryEmbedding(
            np.vstack([whole.vectors, vectors[ok]]),
            np.stack([whole.quads[0], *[q for q, good in zip(quads, ok, strict=True) if good]]).astype(np.float32),
            size,
        )
        check("image search")
        more_scores, more_ids = search(vectors[ok], k)
        fused = fuse_max(np.vstack([scores, more_scores]), np.vstack([ids, more_ids]), k)
        return ImageSearch(fused, embedding, mode, localised=True)

    def describe(self, mode: QueryMode | str) -> dict[str, Any]:
        """The query path as an evaluation records it."""
        mode = QueryMode.parse(mode)
        return {
            "version": QUERY_PATH_VERSION,
            "mode": mode.value,
            "decode": {"size": self.decode.size, "resize": self.decode.resize},
            "embedder": self.embedder.describe(),
            "normalization": "l2",
            "localisation": None if mode is QueryMode.WHOLE else self.config.describe(),
        }
