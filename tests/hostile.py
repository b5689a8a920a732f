"""Generators of hostile and odd poster files (made at test time, never downloaded)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 30_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pixel_bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to ~100 KB."""
    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def poster(seed: int, size: tuple[int, int] = (200, 300)) -> Image.Image:
    """A simple synthetic poster: gradient, a disc and a title band, seeded."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    arr = (top * (1 - t) + bottom * t).repeat(w, axis=1)
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.6) * h, rng.uniform(0.15, 0.3) * w
    yy, xx = np.mgrid[0:h, 0:w]
    arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    arr[int(h * 0.8) :] = arr[int(h * 0.8) :] * 0.3
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(im: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, "JPEG", exif=exif.tobytes(), quality=92)


def odd_files() -> dict[str, bytes]:
    """Unusual but valid images: every one must be embedded."""
    base = poster(1)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    gray16 = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    frames = [poster(2), poster(3)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.info["transparency"] = 0
    return {
        "cmyk.jpg": _save(base.convert("CMYK"), "JPEG", quality=90),
        "gray16.png": _save(gray16, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "palette.gif": _save(pal, "GIF", transparency=0),
        "animated.gif": anim.getvalue(),
        "la.png": _save(base.convert("LA"), "PNG"),
        "bilevel.png": _save(base.convert("1"), "PNG"),
        "tiny.png": _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "wide.png": _save(Image.new("RGB", (10_000, 10), (10, 200, 10)), "PNG"),
        "rotated.jpg": exif_rotated_jpeg(base),
        "poster.webp": _save(base, "WEBP", quality=80),
    }


def bad_files() -> dict[str, bytes]:
    """Files that are not usable images: each must be reported with a reason, never crash a build."""
    good_jpeg = _save(poster(4), "JPEG", quality=90)
    good_png = _save(poster(5), "PNG")
    corrupt_png = bytearray(good_png)
    corrupt_png[60:200] = bytes(140)  # IDAT data destroyed: CRC mismatch / bad zlib stream
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image, just a text file named .jpg\n",
        "page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "bomb.png": pixel_bomb_png(),
        "corrupt.png": bytes(corrupt_png),
        "truncated.png": good_png[: len(good_png) // 3],
    }


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths
