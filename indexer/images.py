"""Decode any poster file into the model's square RGB input, or say why not.

EXIF orientation is applied; every Pillow mode (P, L, LA, RGBA, CMYK, I;16, F, ...)
becomes RGB with alpha composited on a neutral background; a pixel limit guards
against decompression bombs before any pixel is decoded (Pillow's own guard stays
on too); only well-known raster formats are opened.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from indexer.errors import ImageError, ImageTooLargeError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
Image.init()  # register every plugin now, so the allow-list below is checked against all of them
_OPEN_FORMATS = tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# ImageNet mean colour: after any model's preprocessing, padding is close to zero input.
DEFAULT_BACKGROUND = (124, 116, 104)
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Decoded size guard: Pillow holds most modes at 4 bytes per pixel (RGB is stored as RGBX); a
# 50-megapixel RGB poster is 200 MB decoded. Checked before any pixel is decoded.
DEFAULT_MAX_DECODED_BYTES = 200_000_000
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
WIDE_PIXEL_BYTES = 4  # every other mode (RGB, RGBA, CMYK, I, F, LA, ...)
# Large images are shrunk in their own mode to this many times the model input before any
# conversion, so odd modes never go through a full-size RGB or floating-point copy.
SHRINK_HEADROOM = 2
# EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose; applied after shrinking)
EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_SCALE = 257.0  # 65535 / 255


@dataclass(frozen=True)
class DecodeConfig:
    """How posters become model input."""

    size: int  # the model's square input side, read from the embedder
    resize: str = "pad"  # "pad" (letterbox, keeps the whole poster), "stretch", "center-crop"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    background: tuple[int, int, int] = DEFAULT_BACKGROUND


def _shrink(im: Image.Image, size: int) -> Image.Image:
    """Reduce a much larger image to about SHRINK_HEADROOM x ``size`` in its own mode (box filter where
    Pillow supports the mode, nearest neighbour otherwise): cheap, and bounded memory downstream."""
    factor = min(im.size) // (size * SHRINK_HEADROOM)
    if factor < 2:
        return im
    if im.mode == "1":
        im = im.convert("L")  # same bytes per pixel; box-averaged 1-bit art keeps its grey levels
    try:
        return im.reduce(factor)
    except ValueError:  # modes reduce() does not support (P, I;16, ...)
        w, h = im.size
        return im.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.NEAREST)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        arr = np.asarray(im, dtype=np.float32)  # small by now (_shrink): no full-size float copy
        scale = _SIXTEEN_BIT_SCALE if im.mode in _SIXTEEN_BIT_MODES or arr.max(initial=0) > 255 else 1.0
        im = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.nan_to_num(np.asarray(im)), 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        canvas = Image.new("RGB", im.size, background)
        canvas.paste(im, mask=im.getchannel("A"))
        return canvas
    return im if im.mode == "RGB" else im.convert("RGB")


def _fit(im: Image.Image, size: int, policy: str, background: tuple[int, int, int]) -> Image.Image:
    resample = Image.Resampling.BICUBIC
    w, h = im.size
    if policy == "stretch":
        return im.resize((size, size), resample)
    if policy == "center-crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))
    if policy == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size), background)
        canvas.paste(im.resize((nw, nh), resample), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"resize policy expected pad, stretch or center-crop, got {policy!r}")


def decode_full(data: bytes, config: DecodeConfig, max_side: int) -> Image.Image:
    """Decode encoded image bytes to an RGB image, as displayed (EXIF orientation applied), reduced so
    that its shorter side is about ``max_side`` or less; the same guards as ``decode_image``.

    Raises ImageTooLargeError for inputs above the byte, pixel or decoded-size limits, and ImageError
    with a readable reason for anything that is not a usable image.
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > config.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes, limit is {config.max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as opened:
            im: Image.Image = opened
            w, h = im.size
            if w * h > config.max_pixels:
                raise ImageTooLargeError(f"image is {w}x{h} = {w * h} pixels, limit is {config.max_pixels}")
            if w < 1 or h < 1:
                raise ImageError(f"image has no pixels ({w}x{h})")
            decoded = w * h * BYTES_PER_PIXEL.get(im.mode, WIDE_PIXEL_BYTES)
            if decoded > config.max_decoded_bytes:
                raise ImageTooLargeError(
                    f"image is {w}x{h} in mode {im.mode} = {decoded} bytes decoded, limit is {config.max_decoded_bytes}"
                )
            orientation = im.getexif().get(EXIF_ORIENTATION_TAG)
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced scale, much faster
            im = _shrink(im, max_side)
            if orientation in EXIF_TRANSPOSE:
                im = im.transpose(EXIF_TRANSPOSE[orientation])
            rgb = _to_rgb(im, config.background)
            rgb.load()  # decode now, while the file is open (an RGB image may still be the lazy original)
            return rgb
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError:
        raise ImageError(f"not a recognised image (allowed formats: {', '.join(ALLOWED_FORMATS)})") from None
    except Exception as exc:
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def decode_image(data: bytes, config: DecodeConfig) -> np.ndarray:
    """Decode encoded image bytes to a ``(size, size, 3)`` uint8 array (the model's input).

    Raises ImageTooLargeError for inputs above the byte or pixel limits, and
    ImageError with a readable reason for anything that is not a usable image.
    """
    rgb = decode_full(data, config, config.size)
    try:
        return np.asarray(_fit(rgb, config.size, config.resize, config.background), dtype=np.uint8)
    except ValueError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def fit_to_input(rgb: Image.Image, config: DecodeConfig) -> np.ndarray:
    """An RGB image already decoded (e.g. a window cut from a query photo) -> the model's ``(size, size, 3)``
    uint8 input, with the same resize policy and background as ``decode_image``."""
    return np.asarray(_fit(rgb, config.size, config.resize, config.background), dtype=np.uint8)
