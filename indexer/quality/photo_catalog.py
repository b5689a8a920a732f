"""A catalog of real photos made into posters, among synthetic distractors (MovieLens layout).

The photos are those that ship inside scikit-image (``skimage.data``; the ones needing a network download
are skipped) and scikit-learn (``load_sample_image``): no download at run time. Each becomes a 300x450
poster: the photo cropped to fill the area above a title band, as the synthetic posters have. The
distractors are the demo catalog's synthetic posters (``indexer.demo_catalog``). Output::

    OUT/movies.csv  links.csv  ratings.csv  families.csv   as the demo catalog (photos appended)
    OUT/photos.csv  movieId, source, name, crop (which items are real photos; eval --copy-items OUT/photos.csv)
    OUT/posters/{tmdbId}.jpg

If fewer than ``MIN_PHOTOS`` photos load, distinct non-overlapping crops of the largest photos are added
as further photos (recorded in the ``crop`` column).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from indexer.demo_catalog import POSTER_SIZE, write_demo_catalog

log = logging.getLogger(__name__)

MIN_PHOTOS = 15
DEFAULT_DISTRACTORS = 200
BAND_SHARE = 0.2  # the title band's share of the poster height, as on the synthetic posters
JPEG_QUALITY = 90
MIN_CROP_SIDE = 160  # pixels: smaller crops would be upscaled too much to pass for a poster
TITLE_FONT_SIZE = 26
MIN_TITLE_FONT_SIZE = 10
TITLE_MARGIN = 12
DEMO_TMDB_BASE, DEMO_TMDB_STEP, DEMO_IMDB_BASE, DEMO_IMDB_STEP = 10_000, 7, 1_000_000, 13  # demo_catalog's id scheme
PHOTO_YEAR = 2000


@dataclass(frozen=True)
class PhotoSource:
    name: str
    library: str  # "skimage" or "sklearn"
    key: str  # skimage.data function name or sklearn sample image file
    genres: str  # hand-assigned from the photo's subject (a weak label, like real genres)


# Every photograph bundled with scikit-image 0.2x and scikit-learn. Left out on purpose: drawings and
# synthetic images (binary_blobs, checkerboard, colorwheel, horse, logo, shepp_logan_phantom), skimage's
# ``cat`` (the same picture as ``chelsea``), the right view of ``stereo_motorcycle`` (nearly the left one),
# and images too small for a poster (lfw_subset 25x25 faces, microaneurysms 102x102).
REAL_PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "skimage", "astronaut", "Sci-Fi|Drama"),
    PhotoSource("brick", "skimage", "brick", "Drama"),
    PhotoSource("camera", "skimage", "camera", "Drama"),
    PhotoSource("cell", "skimage", "cell", "Sci-Fi|Horror"),
    PhotoSource("chelsea", "skimage", "chelsea", "Comedy|Animation"),
    PhotoSource("clock", "skimage", "clock", "Drama"),
    PhotoSource("coffee", "skimage", "coffee", "Romance|Drama"),
    PhotoSource("coins", "skimage", "coins", "Action|Drama"),
    PhotoSource("grass", "skimage", "grass", "Western"),
    PhotoSource("gravel", "skimage", "gravel", "Western|Drama"),
    PhotoSource("hubble_deep_field", "skimage", "hubble_deep_field", "Sci-Fi"),
    PhotoSource("immunohistochemistry", "skimage", "immunohistochemistry", "Horror|Sci-Fi"),
    PhotoSource("moon", "skimage", "moon", "Sci-Fi"),
    PhotoSource("page", "skimage", "page", "Drama"),
    PhotoSource("retina", "skimage", "retina", "Horror"),
    PhotoSource("rocket", "skimage", "rocket", "Sci-Fi|Action"),
    PhotoSource("motorcycle", "skimage", "stereo_motorcycle", "Action"),
    PhotoSource("text", "skimage", "text", "Drama"),
    PhotoSource("china", "sklearn", "china.jpg", "Drama|Romance"),
    PhotoSource("flower", "sklearn", "flower.jpg", "Romance"),
)


@dataclass(frozen=True)
class PhotoCatalogSummary:
    photos: int
    distractors: int
    crops: int  # photos that are crops of a larger photo (only when fewer than MIN_PHOTOS loaded)
    skipped: tuple[tuple[str, str], ...]  # (name, reason)
    out: Path


def _load(source: PhotoSource) -> np.ndarray:
    if source.library == "skimage":
        import skimage.data

        image = getattr(skimage.data, source.key)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
    elif source.library == "sklearn":
        from sklearn.datasets import load_sample_image

        image = load_sample_image(source.key)
    else:
        raise ValueError(f"photo library expected skimage or sklearn, got {source.library!r}")
    return _as_rgb(np.asarray(image))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def load_real_photos(
    sources: tuple[PhotoSource, ...] = REAL_PHOTOS, loader: Callable[[PhotoSource], np.ndarray] = _load
) -> tuple[list[tuple[PhotoSource, np.ndarray]], list[tuple[str, str]]]:
    """The photos that load offline, and (name, reason) for those that do not."""
    loaded, skipped = [], []
    for source in sources:
        try:
            loaded.append((source, loader(source)))
        except (ImportError, OSError, ValueError, AttributeError) as exc:  # pooch-only files raise ImportError
            skipped.append((source.name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
            log.info("photo %s skipped: %s", source.name, skipped[-1][1])
    return loaded, skipped


def _crop_to_aspect(image: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred window of width/height ``aspect``."""
    h, w = image.shape[:2]
    if w / h > aspect:
        cw = round(h * aspect)
        return image[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    ch = round(w / aspect)
    return image[(h - ch) // 2 : (h - ch) // 2 + ch]


def photo_poster(image: np.ndarray, title: str) -> Image.Image:
    """A 300x450 poster: the photo filling the area above a dark title band."""
    w, h = POSTER_SIZE
    band_top = int(h * (1 - BAND_SHARE))
    photo = Image.fromarray(_crop_to_aspect(_as_rgb(image), w / band_top)).resize(
        (w, band_top), Image.Resampling.LANCZOS
    )
    poster = Image.new("RGB", POSTER_SIZE, (0, 0, 0))
    poster.paste(photo, (0, 0))
    mean = np.asarray(photo, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    d = ImageDraw.Draw(poster)
    d.rectangle([0, band_top, w, h], fill=tuple(int(v * 0.4) for v in mean))
    size = TITLE_FONT_SIZE
    while (
        size > MIN_TITLE_FONT_SIZE
        and d.textlength(title.upper(), font=ImageFont.load_default(size=size)) > w - 2 * TITLE_MARGIN
    ):
        size -= 1
    d.text(
        (w / 2, band_top + (h - band_top) / 2),
        title.upper(),
        fill=(255, 255, 255),
        font=ImageFont.load_default(size=size),
        anchor="mm",
    )
    return poster


def extra_crops(photos: list[tuple[PhotoSource, np.ndarray]], needed: int) -> list[tuple[PhotoSource, np.ndarray, str]]:
    """Up to ``needed`` non-overlapping crops (left/right halves, then quadrants) of the largest photos."""
    out: list[tuple[PhotoSource, np.ndarray, str]] = []
    by_area = sorted(photos, key=lambda p: -p[1].shape[0] * p[1].shape[1])
    for grid in ((1, 2), (2, 2)):
        for source, image in by_area:
            h, w = image.shape[:2]
            rows, cols = grid
            ch, cw = h // rows, w // cols
            if min(ch, cw) < MIN_CROP_SIDE:
                continue
            for r in range(rows):
                for c in range(cols):
                    if len(out) == needed:
                        return out
                    box = (c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)
                    out.append(
                        (source, image[box[1] : box[3], box[0] : box[2]], f"{box[0]},{box[1]},{box[2]},{box[3]}")
                    )
        if out:
            break  # one grid's crops are enough to be distinct; quadrants only if halves were impossible
    return out


def write_photo_catalog(out: Path, distractors: int = DEFAULT_DISTRACTORS, seed: int = 7) -> PhotoCatalogSummary:
    """Write the demo catalog's ``distractors`` synthetic posters, then append the real-photo posters."""
    if distractors < 1:
        raise ValueError(f"distractors expected >= 1, got {distractors}")
    write_demo_catalog(out, count=distractors, seed=seed)
    photos, skipped = load_real_photos()
    entries: list[tuple[PhotoSource, np.ndarray, str]] = [(s, img, "") for s, img in photos]
    crops = []
    if len(entries) < MIN_PHOTOS:
        crops = extra_crops(photos, MIN_PHOTOS - len(entries))
        entries += crops
        log.warning("only %d real photos loaded; added %d crops of the largest ones", len(photos), len(crops))
    movies = pd.read_csv(out / "movies.csv", dtype=str, keep_default_na=False)
    links = pd.read_csv(out / "links.csv", dtype=str, keep_default_na=False)
    families = pd.read_csv(out / "families.csv", dtype=str, keep_default_na=False)
    next_id = int(movies["movieId"].astype(int).max()) + 1
    next_family = int(families["family"].astype(int).max()) + 1
    new_movies, new_links, new_families, photo_rows = [], [], [], []
    for n, (source, image, crop) in enumerate(entries):
        movie_id = next_id + n
        tmdb_id = DEMO_TMDB_BASE + movie_id * DEMO_TMDB_STEP
        title = source.name.replace("_", " ") + (f" part {n}" if crop else "")
        photo_poster(image, title).save(out / "posters" / f"{tmdb_id}.jpg", quality=JPEG_QUALITY)
        new_movies.append((str(movie_id), f"{title.title()} ({PHOTO_YEAR})", source.genres))
        new_links.append((str(movie_id), f"{DEMO_IMDB_BASE + movie_id * DEMO_IMDB_STEP:07d}", f"{tmdb_id}.0"))
        new_families.append((str(movie_id), str(next_family + n), source.genres.split("|")[0]))
        photo_rows.append((movie_id, source.library, source.key, crop))
    pd.concat([movies, pd.DataFrame(new_movies, columns=movies.columns)]).to_csv(out / "movies.csv", index=False)
    pd.concat([links, pd.DataFrame(new_links, columns=links.columns)]).to_csv(out / "links.csv", index=False)
    pd.concat([families, pd.DataFrame(new_families, columns=families.columns)]).to_csv(
        out / "families.csv", index=False
    )
    with (out / "photos.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("movieId", "source", "name", "crop"))
        writer.writerows(photo_rows)
    return PhotoCatalogSummary(
        photos=len(entries), distractors=distractors, crops=len(crops), skipped=tuple(skipped), out=out
    )
