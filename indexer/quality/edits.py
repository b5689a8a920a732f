"""Copy-detection edits: what happens to a poster between the catalog and a user's query.

Each edit takes the decoded poster (RGB) and a seeded generator and returns encoded image bytes, ready to
be sent through the same path as SearchByImage. The generator for one (seed, item, edit) is derived from
those three values only, so a copy is the same bytes whatever else is generated, in whatever order.
Edits are modelled on the DISC21 copy-detection augmentations plus two poster-specific ones: the poster
photographed on a wall in perspective and the poster shown small inside a screenshot of a web page.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

IDENTITY = "identity"  # the catalog file itself: a control, recall@1 should be 1
EDIT_KINDS = (
    IDENTITY,
    "rescale",
    "crop",
    "rotate",
    "jpeg",
    "blur",
    "grayscale",
    "mirror",
    "banner",
    "sticker",
    "thumbnail",
    "wall",
    "screenshot",
)
DEFAULT_EDIT_KINDS = EDIT_KINDS

OUTPUT_JPEG_QUALITY = 90  # how edited copies are encoded (except the jpeg edit itself and screenshots)
RESCALE_SHARE = 0.5  # "rescale": the same artwork from another source, half size
RESCALE_JPEG_QUALITY = 75
LOW_JPEG_QUALITY = 5  # "JPEG at very low quality"
CROP_SIDE = (0.55, 0.8)  # kept share of each side
ROTATE_DEGREES = (8.0, 25.0)  # absolute angle, random sign
BLUR_RADIUS_SHARE = 0.012  # Gaussian radius as a share of the longer side (≈ 5 px on a 300x450 poster)
BANNER_HEIGHT_SHARE = (0.12, 0.18)
BANNER_CENTRE_SHARE = (0.3, 0.75)
BANNER_TEXTS = ("NOW STREAMING", "EXCLUSIVE", "ONLY IN CINEMAS", "WATCH TONIGHT")
STICKER_RADIUS_SHARE = (0.12, 0.2)  # of the poster width
STICKER_TEXTS = ("NEW!", "4K", "HD", "-50%", "TOP 10")
THUMBNAIL_WIDTH = 48  # pixels: a "tiny thumbnail"
THUMBNAIL_JPEG_QUALITY = 80
WALL_SIZE = (800, 600)
WALL_POSTER_HEIGHT_SHARE = (0.55, 0.75)
WALL_YAW_SHARE = (0.06, 0.18)  # the far edge is this share of the poster height shorter
WALL_FAR_INSET = 0.3
WALL_JITTER_SHARE = 0.025  # corner jitter as a share of the poster size
WALL_LIGHT = (0.7, 1.05)  # brightness across the frame
WALL_NOISE_SIGMA = 4.0
WALL_TEXTURE_SIGMA = 6.0
WALL_TEXTURE_CELL = 40  # pixels per cell of the coarse plaster texture
WALL_SHADOW = (6, 0.35)  # offset in pixels, darkening
WALL_CAMERA_BLUR = 0.8
WALL_JPEG_QUALITY = 85
PAGE_SIZE = (1280, 800)
PAGE_POSTER_HEIGHT = (170, 260)  # pixels: the poster is small on the page
PAGE_NAV_HEIGHT = 56
PAGE_TEXT_GREY = (90, 90, 96)
SEED_SALT = 0x9E3779B9


def edit_rng(seed: int, item_id: int, kind: str) -> np.random.Generator:
    """The generator for one copy: depends only on (seed, item, edit kind)."""
    return np.random.default_rng(
        [seed & 0xFFFFFFFF, int(item_id) & 0xFFFFFFFFFFFF, zlib.crc32(kind.encode()), SEED_SALT]
    )


def _encode(image: Image.Image, fmt: str = "JPEG", quality: int = OUTPUT_JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        image.convert("RGB").save(buf, fmt)
    return buf.getvalue()


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    r, g, b = rng.integers(low, high, size=3).tolist()
    return int(r), int(g), int(b)


def _font(size: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, int(size)))


# ---- photometric and geometric edits ---------------------------------------------------------------------------
def _rescale(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = im.size
    small = im.resize((max(1, round(w * RESCALE_SHARE)), max(1, round(h * RESCALE_SHARE))), Image.Resampling.LANCZOS)
    return _encode(small, quality=RESCALE_JPEG_QUALITY)


def _crop(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = im.size
    cw, ch = (max(1, int(s * rng.uniform(*CROP_SIDE))) for s in (w, h))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _encode(im.crop((left, top, left + cw, top + ch)))


def _rotate(im: Image.Image, rng: np.random.Generator) -> bytes:
    angle = float(rng.uniform(*ROTATE_DEGREES)) * (1 if rng.uniform() < 0.5 else -1)
    grey = int(rng.integers(0, 256))
    return _encode(im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(grey, grey, grey)))


def _jpeg(im: Image.Image, rng: np.random.Generator) -> bytes:
    return _encode(im, quality=LOW_JPEG_QUALITY)


def _blur(im: Image.Image, rng: np.random.Generator) -> bytes:
    return _encode(im.filter(ImageFilter.GaussianBlur(BLUR_RADIUS_SHARE * max(im.size))))


def _grayscale(im: Image.Image, rng: np.random.Generator) -> bytes:
    return _encode(ImageOps.grayscale(im).convert("RGB"))


def _mirror(im: Image.Image, rng: np.random.Generator) -> bytes:
    return _encode(ImageOps.mirror(im))


def _banner(im: Image.Image, rng: np.random.Generator) -> bytes:
    im = im.copy()
    w, h = im.size
    bh = int(h * rng.uniform(*BANNER_HEIGHT_SHARE))
    top = int(h * rng.uniform(*BANNER_CENTRE_SHARE)) - bh // 2
    d = ImageDraw.Draw(im)
    d.rectangle([0, top, w, top + bh], fill=_colour(rng, 0, 200))
    text = BANNER_TEXTS[int(rng.integers(len(BANNER_TEXTS)))]
    d.text((w / 2, top + bh / 2), text, fill=(255, 255, 255), font=_font(bh * 0.5), anchor="mm")
    return _encode(im)


def _sticker(im: Image.Image, rng: np.random.Generator) -> bytes:
    im = im.copy()
    w, h = im.size
    r = w * rng.uniform(*STICKER_RADIUS_SHARE)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    d = ImageDraw.Draw(im)
    d.ellipse(
        [cx - r, cy - r, cx + r, cy + r],
        fill=_colour(rng, 120, 256),
        outline=(255, 255, 255),
        width=max(1, int(r * 0.08)),
    )
    text = STICKER_TEXTS[int(rng.integers(len(STICKER_TEXTS)))]
    d.text((cx, cy), text, fill=(20, 20, 20), font=_font(r * 0.6), anchor="mm")
    return _encode(im)


def _thumbnail(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = im.size
    small = im.resize((THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w))), Image.Resampling.LANCZOS)
    return _encode(small, quality=THUMBNAIL_JPEG_QUALITY)


# ---- the poster in a scene ---------------------------------------------------------------------------------------
def perspective_coefficients(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` (4, 2) to input points ``src`` (4, 2)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(np.asarray(dst, np.float64), np.asarray(src, np.float64), strict=True):
        rows.append([x, y, 1, 0, 0, 0, -x * u, -y * u])
        rows.append([0, 0, 0, x, y, 1, -x * v, -y * v])
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows), np.array(rhs)))


def _wall_texture(rng: np.random.Generator) -> np.ndarray:
    w, h = WALL_SIZE
    base = np.array(_colour(rng, 90, 230), dtype=np.float32)
    coarse = rng.normal(0.0, WALL_TEXTURE_SIGMA, size=(h // WALL_TEXTURE_CELL + 1, w // WALL_TEXTURE_CELL + 1, 1))
    coarse = np.asarray(Image.fromarray(coarse[:, :, 0].astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC))[
        :, :, None
    ]
    fine = rng.normal(0.0, WALL_TEXTURE_SIGMA, size=(h, w, 1)).astype(np.float32)
    return base[None, None, :] + coarse + fine


def _wall(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = WALL_SIZE
    wall = _wall_texture(rng)
    ph = h * rng.uniform(*WALL_POSTER_HEIGHT_SHARE)
    pw = ph * im.size[0] / im.size[1]
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    far = ph * rng.uniform(*WALL_YAW_SHARE)  # the far edge is this much shorter than the near one
    inset = far * WALL_FAR_INSET  # ... and this much closer to the centre
    far_is_left = rng.uniform() < 0.5
    l_short, r_short = (far, 0.0) if far_is_left else (0.0, far)
    l_in, r_in = (inset, 0.0) if far_is_left else (0.0, inset)
    left, right, top, bottom = cx - pw / 2, cx + pw / 2, cy - ph / 2, cy + ph / 2
    quad = np.array(
        [
            [left + l_in, top + l_short / 2],
            [right - r_in, top + r_short / 2],
            [right - r_in, bottom - r_short / 2],
            [left + l_in, bottom - l_short / 2],
        ]
    )
    quad += rng.uniform(-1, 1, size=quad.shape) * WALL_JITTER_SHARE * np.array([pw, ph])
    pw0, ph0 = im.size
    src = np.array([[0, 0], [pw0, 0], [pw0, ph0], [0, ph0]], dtype=np.float64)
    coeffs = perspective_coefficients(quad, src)
    warped = im.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    mask = Image.new("L", im.size, 255).transform(
        (w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
    )
    offset, darkening = WALL_SHADOW
    shadow = np.asarray(mask.filter(ImageFilter.GaussianBlur(offset)), dtype=np.float32)[:, :, None] / 255.0
    scene = wall * (1.0 - darkening * np.roll(shadow, (offset, offset), axis=(0, 1)))
    alpha = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0
    scene = scene * (1.0 - alpha) + np.asarray(warped, dtype=np.float32) * alpha
    light = np.linspace(*(WALL_LIGHT if rng.uniform() < 0.5 else WALL_LIGHT[::-1]), w, dtype=np.float32)[None, :, None]
    scene = scene * light + rng.normal(0.0, WALL_NOISE_SIGMA, size=scene.shape).astype(np.float32)
    photo = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    return _encode(photo.filter(ImageFilter.GaussianBlur(WALL_CAMERA_BLUR)), quality=WALL_JPEG_QUALITY)


def _text_lines(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, x: int, y: int, width: int, lines: int, line_height: int = 22
) -> int:
    for _ in range(lines):
        d.rectangle([x, y + 6, x + int(width * rng.uniform(0.55, 1.0)), y + 14], fill=(205, 205, 210))
        y += line_height
    return y


def _screenshot(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = PAGE_SIZE
    page = Image.new("RGB", PAGE_SIZE, (248, 248, 250))
    d = ImageDraw.Draw(page)
    d.rectangle([0, 0, w, PAGE_NAV_HEIGHT], fill=_colour(rng, 10, 90))
    d.text((24, PAGE_NAV_HEIGHT / 2), "MovieBase", fill=(255, 255, 255), font=_font(24), anchor="lm")
    for n, label in enumerate(("Films", "Series", "People", "Lists", "Sign in")):
        d.text((w - 520 + n * 100, PAGE_NAV_HEIGHT / 2), label, fill=(220, 220, 230), font=_font(16), anchor="lm")
    ph = int(rng.integers(*PAGE_POSTER_HEIGHT))
    pw = round(ph * im.size[0] / im.size[1])
    px, py = int(rng.integers(40, 140)), int(rng.integers(PAGE_NAV_HEIGHT + 30, PAGE_NAV_HEIGHT + 90))
    page.paste(im.resize((pw, ph), Image.Resampling.LANCZOS), (px, py))
    tx = px + pw + 40
    d.text((tx, py), "Film title (year)", fill=(30, 30, 35), font=_font(30))
    d.text((tx, py + 44), "Drama, Thriller  ·  2h 04m  ·  rating 7.4", fill=PAGE_TEXT_GREY, font=_font(16))
    y = _text_lines(d, rng, tx, py + 80, w - tx - 60, int(rng.integers(5, 9)))
    d.rounded_rectangle([tx, y + 10, tx + 150, y + 50], radius=8, fill=_colour(rng, 0, 200))
    d.text((tx + 75, y + 30), "Watch trailer", fill=(255, 255, 255), font=_font(16), anchor="mm")
    related_top = max(py + ph, y + 60) + 40
    d.text((40, related_top), "More like this", fill=(30, 30, 35), font=_font(22))
    thumb_h = int(rng.integers(100, 150))
    for n in range(8):
        x = 40 + n * (thumb_h * 2 // 3 + 24)
        if x + thumb_h * 2 // 3 > w:
            break
        d.rectangle([x, related_top + 40, x + thumb_h * 2 // 3, related_top + 40 + thumb_h], fill=_colour(rng, 40, 220))
    return _encode(page, fmt="PNG")


EDITS: dict[str, Callable[[Image.Image, np.random.Generator], bytes]] = {
    "rescale": _rescale,
    "crop": _crop,
    "rotate": _rotate,
    "jpeg": _jpeg,
    "blur": _blur,
    "grayscale": _grayscale,
    "mirror": _mirror,
    "banner": _banner,
    "sticker": _sticker,
    "thumbnail": _thumbnail,
    "wall": _wall,
    "screenshot": _screenshot,
}


def check_kinds(kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate edit kind names (order kept, duplicates dropped)."""
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"edit kinds expected a non-empty subset of {', '.join(EDIT_KINDS)}, got {list(kinds)}")
    return tuple(dict.fromkeys(kinds))


def edited_copy(kind: str, original: bytes, item_id: int, seed: int) -> bytes:
    """Encoded bytes of one edited copy of the poster file ``original`` (``identity``: the file itself)."""
    if kind == IDENTITY:
        return original
    if kind not in EDITS:
        raise ValueError(f"edit kind expected one of {', '.join(EDIT_KINDS)}, got {kind!r}")
    with Image.open(io.BytesIO(original)) as im:
        poster = ImageOps.exif_transpose(im).convert("RGB")
    return EDITS[kind](poster, edit_rng(seed, item_id, kind))
