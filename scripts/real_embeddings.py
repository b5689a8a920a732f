"""Real EfficientNet-Lite0 embeddings for calibrating the synthetic benchmark data (scripts/realistic_vectors.py).

Offline only: the photographs bundled with scikit-image and scikit-learn (``indexer.quality.photo_catalog``),
each seen as many seeded crops — half of them made into posters with a title band, some further edited with
the copy-detection edits of ``indexer.quality.edits`` — plus the synthetic posters of
``indexer.demo_catalog``. Every image goes through the indexer's query path: ``decode_image`` with the
embedder's input size and the default ``pad`` policy, efficientnet_lite0 with its ImageNet weights, avg pooling.

Each embedding carries a *family*: the source photo (``photo:<name>``) or the demo catalog's sequel family
(``demo:<id>``), so that within-family (near-duplicate) and between-family spread can be told apart.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

CROPS_PER_PHOTO = 90
DEMO_POSTERS = 400
DEMO_SEED = 11
CROP_SIDE_SHARE = (0.3, 1.0)  # each side of a crop, as a share of the photo's side
POSTER_SHARE = 0.5  # share of crops made into a poster (photo above a title band)
EDIT_SHARE = 0.6  # share of the posters further edited with one copy-detection edit (made for 2:3 posters)
# the edits that keep the image recognisable as the same picture (screenshot shrinks it to a corner of a page)
CALIBRATION_EDITS = (
    *("rescale", "rotate", "jpeg", "blur", "grayscale"),
    *("mirror", "banner", "sticker", "thumbnail", "wall"),
)
JPEG_QUALITY = 90
EMBED_BATCH = 64
SEED = 2024


@dataclass(frozen=True)
class RealSet:
    vectors: np.ndarray  # (n, 1280) float32, as the model outputs them (not normalized)
    families: np.ndarray  # (n,) str: "photo:<name>" or "demo:<family>"
    seconds: float  # wall time to make and embed the images


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _photo_images(rng: np.random.Generator, crops_per_photo: int) -> list[tuple[str, bytes]]:
    from indexer.quality.edits import EDITS
    from indexer.quality.photo_catalog import load_real_photos, photo_poster

    photos, skipped = load_real_photos()
    if skipped:
        log.warning("photos that did not load offline: %s", ", ".join(name for name, _ in skipped))
    out: list[tuple[str, bytes]] = []
    for source, image in photos:
        family = f"photo:{source.name}"
        out.append((family, _jpeg(photo_poster(image, source.name))))
        h, w = image.shape[:2]
        for n in range(crops_per_photo - 1):
            ch, cw = (max(2, int(side * rng.uniform(*CROP_SIDE_SHARE))) for side in (h, w))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = image[top : top + ch, left : left + cw]
            poster = rng.uniform() < POSTER_SHARE
            data = _jpeg(photo_poster(crop, f"{source.name} {n}") if poster else Image.fromarray(crop))
            if poster and rng.uniform() < EDIT_SHARE:
                kind = CALIBRATION_EDITS[int(rng.integers(len(CALIBRATION_EDITS)))]
                with Image.open(io.BytesIO(data)) as im:
                    data = EDITS[kind](im.convert("RGB"), rng)
            out.append((family, data))
    return out


def _demo_images(count: int, seed: int) -> list[tuple[str, bytes]]:
    import pandas as pd

    from indexer.demo_catalog import write_demo_catalog

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo_catalog(root, count=count, seed=seed)
        links = pd.read_csv(root / "links.csv")
        families = pd.read_csv(root / "families.csv").set_index("movieId")["family"]
        return [
            (f"demo:{families[int(row.movieId)]}", (root / "posters" / f"{int(row.tmdbId)}.jpg").read_bytes())
            for row in links.itertuples()
        ]


def real_embedding_set(
    crops_per_photo: int = CROPS_PER_PHOTO, demo_posters: int = DEMO_POSTERS, seed: int = SEED
) -> RealSet:
    """Make the calibration images (seeded) and embed them with the offline default model."""
    from indexer.embedders import Embedder, EmbedderSpec
    from indexer.images import DecodeConfig, decode_image

    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    images = _photo_images(rng, crops_per_photo) + _demo_images(demo_posters, DEMO_SEED)
    log.info("%d calibration images made in %.1f s", len(images), time.perf_counter() - began)
    embedder = Embedder(EmbedderSpec())
    config = DecodeConfig(size=embedder.input_size)
    vectors = []
    for start in range(0, len(images), EMBED_BATCH):
        batch = np.stack([decode_image(data, config) for _, data in images[start : start + EMBED_BATCH]])
        vectors.append(embedder.embed(batch))
    seconds = time.perf_counter() - began
    log.info("%d images embedded in %.1f s", len(images), seconds)
    return RealSet(np.concatenate(vectors), np.array([family for family, _ in images]), seconds)


def save(real: RealSet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=real.vectors, families=real.families, seconds=real.seconds)


def load(path: Path) -> RealSet:
    with np.load(path) as data:
        return RealSet(data["vectors"].astype(np.float32), data["families"].astype(str), float(data["seconds"]))
