"""A deterministic synthetic poster catalog for the demo and the tests.

Posters are drawn with Pillow in look-alike *families*: sequels share a palette
and a layout (with small jitter and their own title); each genre has its own
visual style. ``families.csv`` records the ground truth (which movies are
sequels of each other) so that "do sequels find each other?" can be measured.
"""

from __future__ import annotations

import colorsys
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POSTER_SIZE = (300, 450)  # width, height: the usual 2:3 poster
GENRES = ("Action", "Comedy", "Horror", "Romance", "Sci-Fi", "Animation", "Drama", "Western")
_WORDS_A = (
    "Star",
    "Night",
    "Iron",
    "Silent",
    "Golden",
    "Last",
    "Wild",
    "Crimson",
    "Frozen",
    "Lost",
    "Dark",
    "Little",
    "Hidden",
    "Broken",
    "Electric",
    "Midnight",
    "Savage",
    "Paper",
    "Velvet",
    "Atomic",
)
_WORDS_B = (
    "Quest",
    "River",
    "Empire",
    "Garden",
    "Frontier",
    "Circus",
    "Harbor",
    "Machine",
    "Kingdom",
    "Signal",
    "Orchard",
    "Storm",
    "Voyage",
    "Castle",
    "Planet",
    "Ranch",
    "Summer",
    "Legacy",
    "Tide",
    "Protocol",
)
_NUMERALS = ("", " II", " III", " IV")


@dataclass(frozen=True)
class DemoSummary:
    count: int
    families: int
    out: Path


def _palette(rng: np.random.Generator, genre: str) -> list[tuple[int, int, int]]:
    base_hue = {
        "Action": 0.02,
        "Comedy": 0.14,
        "Horror": 0.0,
        "Romance": 0.92,
        "Sci-Fi": 0.6,
        "Animation": 0.3,
        "Drama": 0.55,
        "Western": 0.08,
    }[genre] + rng.uniform(-0.06, 0.06)
    light = 0.15 if genre == "Horror" else rng.uniform(0.35, 0.6)
    out = []
    for shift, l_mul in ((0.0, 1.0), (0.5, 1.3), (0.1, 0.6)):
        r, g, b = colorsys.hls_to_rgb(
            (base_hue + shift + rng.uniform(-0.05, 0.05)) % 1, min(light * l_mul, 0.92), rng.uniform(0.5, 0.95)
        )
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    t = np.linspace(0, 1, h)[:, None, None]
    arr = (np.array(top)[None, None, :] * (1 - t) + np.array(bottom)[None, None, :] * t).repeat(w, axis=1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _draw_poster(
    genre: str, palette: list, layout: np.random.Generator, jitter: np.random.Generator, title: str
) -> Image.Image:
    w, h = POSTER_SIZE
    c0, c1, c2 = palette
    im = _gradient(POSTER_SIZE, c0, c2)
    d = ImageDraw.Draw(im)
    j = lambda s: float(jitter.uniform(-s, s))  # noqa: E731 - sequel jitter
    cx, cy = layout.uniform(0.3, 0.7) * w + j(12), layout.uniform(0.25, 0.5) * h + j(12)
    r = layout.uniform(0.18, 0.3) * w
    if genre == "Action":
        for k in range(6):
            x = k * w / 5 + layout.uniform(-20, 20)
            d.polygon([(x, 0), (x + 30, 0), (x - 120, h), (x - 150, h)], fill=c1)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c2, outline=(255, 220, 0), width=8)
    elif genre == "Comedy":
        for _ in range(25):
            x, y, s = layout.uniform(0, w) + j(6), layout.uniform(0, h * 0.8) + j(6), layout.uniform(8, 26)
            d.ellipse([x - s, y - s, x + s, y + s], fill=c1)
        d.rounded_rectangle([cx - r, cy - r, cx + r, cy + r], radius=25, fill=(255, 240, 80))
    elif genre == "Horror":
        d.rectangle([0, 0, w, h], fill=(12, 8, 10))
        for _ in range(9):
            x = layout.uniform(0, w) + j(5)
            d.rectangle([x, 0, x + 8, layout.uniform(0.2, 0.7) * h], fill=c1)
        d.ellipse([cx - r * 0.6, cy - r, cx + r * 0.6, cy + r], fill=(220, 220, 210))
        d.ellipse([cx - r * 0.3, cy - r * 0.3, cx - r * 0.1, cy - r * 0.1], fill=(0, 0, 0))
        d.ellipse([cx + r * 0.1, cy - r * 0.3, cx + r * 0.3, cy - r * 0.1], fill=(0, 0, 0))
    elif genre == "Romance":
        for _ in range(7):
            x, y, s = layout.uniform(0, w) + j(8), layout.uniform(0, h * 0.75) + j(8), layout.uniform(14, 40)
            d.ellipse([x - s, y - s, x, y], fill=c1)
            d.ellipse([x - s / 2, y - s, x + s / 2, y], fill=c1)
            d.polygon([(x - s, y - s / 2), (x + s / 2, y - s / 2), (x - s / 4, y + s * 0.6)], fill=c1)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 255, 255), width=5)
    elif genre == "Sci-Fi":
        d.rectangle([0, 0, w, h], fill=(5, 5, 25))
        for _ in range(120):
            x, y = layout.uniform(0, w), layout.uniform(0, h)
            d.point((x, y), fill=(255, 255, 255))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c1)
        d.ellipse([cx - r * 1.7, cy - r * 0.35, cx + r * 1.7, cy + r * 0.35], outline=c2, width=6)
    elif genre == "Animation":
        for _ in range(5):
            x, y, s = layout.uniform(0, w) + j(10), layout.uniform(0, h * 0.8) + j(10), layout.uniform(30, 70)
            d.ellipse([x - s, y - s, x + s, y + s], fill=c1, outline=(30, 30, 30), width=4)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255), outline=(30, 30, 30), width=6)
        d.ellipse([cx - r * 0.3, cy - r * 0.2, cx + r * 0.1, cy + r * 0.3], fill=(30, 30, 30))
    elif genre == "Drama":
        for k in range(5):
            y = k * h / 6 + layout.uniform(-10, 10)
            d.rectangle([0, y, w, y + layout.uniform(8, 30)], fill=c1)
        d.ellipse([cx - r * 0.5, cy - r, cx + r * 0.5, cy], fill=(20, 20, 20))
        d.rectangle([cx - r * 0.7, cy, cx + r * 0.7, cy + r * 2], fill=(20, 20, 20))
    else:  # Western
        im.paste(_gradient(POSTER_SIZE, (250, 170, 60), c0))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 230, 120))
        d.rectangle([0, h * 0.65, w, h], fill=c2)
        for _ in range(4):
            x = layout.uniform(0, w) + j(6)
            d.rectangle([x, h * 0.45, x + 14, h * 0.68], fill=(40, 90, 40))
    font = ImageFont.load_default(size=26)
    band_top = int(h * 0.8)
    d.rectangle([0, band_top, w, h], fill=tuple(int(v * 0.4) for v in c0))
    d.text((w / 2, band_top + (h - band_top) / 2), title.upper(), fill=(255, 255, 255), font=font, anchor="mm")
    return im


def write_demo_catalog(out: Path, count: int = 120, seed: int = 7) -> DemoSummary:
    """Write movies.csv, links.csv, ratings.csv, families.csv and posters/{tmdbId}.jpg under ``out``."""
    rng = np.random.default_rng(seed)
    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    movies, links, families = [], [], []
    movie_id, family = 1, 0
    used_names: set[str] = set()
    while movie_id <= count:
        genre = GENRES[family % len(GENRES)]
        second = GENRES[(family * 3 + 1) % len(GENRES)]
        while True:
            name = f"{_WORDS_A[rng.integers(len(_WORDS_A))]} {_WORDS_B[rng.integers(len(_WORDS_B))]}"
            if name not in used_names:
                used_names.add(name)
                break
        palette = _palette(rng, genre)
        layout_seed = int(rng.integers(2**31))
        sequels = int(min(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.25, 0.1]), count - movie_id + 1))
        year = int(rng.integers(1970, 2020))
        for s in range(sequels):
            title = f"{name}{_NUMERALS[s]}"
            tmdb_id = 10_000 + movie_id * 7
            image = _draw_poster(
                genre,
                palette,
                np.random.default_rng(layout_seed),
                np.random.default_rng(layout_seed + 1000 * (s + 1)),
                title,
            )
            image.save(posters / f"{tmdb_id}.jpg", quality=90)
            genres = genre if genre == second else f"{genre}|{second}"
            movies.append((movie_id, f"{title} ({year + 2 * s})", genres))
            links.append((movie_id, f"{1_000_000 + movie_id * 13:07d}", f"{tmdb_id}.0"))
            families.append((movie_id, family, genre))
            movie_id += 1
        family += 1
    _write_csv(out / "movies.csv", ("movieId", "title", "genres"), movies)
    _write_csv(out / "links.csv", ("movieId", "imdbId", "tmdbId"), links)
    _write_csv(out / "families.csv", ("movieId", "family", "genre"), families)
    ratings = []
    for user in range(1, 41):
        for mid in rng.choice(np.arange(1, count + 1), size=min(count, 25), replace=False):
            popularity = math.exp(-mid / max(count, 1))  # early movies are rated more often
            if rng.uniform() < 0.4 + popularity:
                ratings.append((user, int(mid), float(rng.integers(1, 11)) / 2, 1_600_000_000 + user * 1000 + int(mid)))
    _write_csv(out / "ratings.csv", ("userId", "movieId", "rating", "timestamp"), ratings)
    return DemoSummary(count=len(movies), families=family, out=out)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
