"""Decoding: odd modes become RGB model input; hostile files give a reason, never a crash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer.errors import ImageError, ImageTooLargeError
from indexer.images import DEFAULT_BACKGROUND, DecodeConfig, decode_image
from tests.hostile import _save, bad_files, exif_rotated_jpeg, odd_files, pixel_bomb_png

SIZE = 64


@pytest.mark.parametrize("name", sorted(odd_files()))
def test_odd_modes_decode_to_rgb(name: str) -> None:
    out = decode_image(odd_files()[name], DecodeConfig(size=SIZE))
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(set(bad_files()) - {"bomb.png"}))
def test_bad_files_raise_image_error_with_reason(name: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(bad_files()[name], DecodeConfig(size=SIZE))
    assert str(info.value), "the reason must not be empty"


def test_pixel_bomb_is_refused_before_decoding() -> None:
    # 900 Mpx: Pillow's own guard (kept on) refuses it at open
    with pytest.raises(ImageTooLargeError, match="900000000 pixels"):
        decode_image(pixel_bomb_png(), DecodeConfig(size=SIZE, max_pixels=50_000_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 100 Mpx on purpose
def test_configurable_pixel_limit_applies_below_pillows() -> None:
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        decode_image(pixel_bomb_png(10_000), DecodeConfig(size=SIZE, max_pixels=50_000_000))
    # the same image is fine with a higher limit (decoding 100 Mpx of 1-bit is cheap)
    assert decode_image(pixel_bomb_png(10_000), DecodeConfig(size=SIZE, max_pixels=100_000_000)).shape == (
        SIZE,
        SIZE,
        3,
    )


def test_byte_limit() -> None:
    data = _save(Image.new("RGB", (50, 50)), "PNG")
    with pytest.raises(ImageTooLargeError, match=f"limit is {len(data) - 1}"):
        decode_image(data, DecodeConfig(size=SIZE, max_bytes=len(data) - 1))


def test_zero_bytes_reason() -> None:
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", DecodeConfig(size=SIZE))


def _tall_poster() -> Image.Image:
    return Image.new("RGB", (200, 300), (250, 0, 0))


def test_pad_keeps_whole_poster_with_letterbox() -> None:
    out = decode_image(_save(_tall_poster(), "PNG"), DecodeConfig(size=SIZE, resize="pad"))
    assert tuple(out[SIZE // 2, 0]) == DEFAULT_BACKGROUND  # left bar
    assert tuple(out[SIZE // 2, -1]) == DEFAULT_BACKGROUND  # right bar
    assert tuple(out[0, SIZE // 2]) == (250, 0, 0)  # poster touches top
    assert tuple(out[-1, SIZE // 2]) == (250, 0, 0)  # and bottom


@pytest.mark.parametrize("policy", ["stretch", "center-crop"])
def test_stretch_and_crop_fill_the_square(policy: str) -> None:
    out = decode_image(_save(_tall_poster(), "PNG"), DecodeConfig(size=SIZE, resize=policy))
    assert (out == (250, 0, 0)).all()


def test_center_crop_takes_the_middle() -> None:
    arr = np.zeros((300, 100, 3), np.uint8)
    arr[:100] = (0, 0, 255)  # top third blue, rest black
    out = decode_image(_save(Image.fromarray(arr), "PNG"), DecodeConfig(size=SIZE, resize="center-crop"))
    assert out[SIZE // 2].max() == 0  # the middle row is from the black centre


def test_exif_orientation_is_applied() -> None:
    # a wide image with orientation 6 (rotate 90 deg clockwise to display) is really tall
    wide = Image.new("RGB", (300, 100), (0, 200, 0))
    out = decode_image(exif_rotated_jpeg(wide, 6), DecodeConfig(size=SIZE, resize="pad"))
    assert tuple(out[SIZE // 2, 0]) == DEFAULT_BACKGROUND  # letterboxed left/right: displayed tall
    assert abs(int(out[0, SIZE // 2, 1]) - 200) < 30


def test_alpha_is_composited_on_background() -> None:
    im = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    out = decode_image(_save(im, "PNG"), DecodeConfig(size=SIZE, resize="stretch"))
    assert tuple(out[5, 5]) == DEFAULT_BACKGROUND


def test_sixteen_bit_keeps_its_range() -> None:
    arr = np.full((30, 30), 65535, np.uint16)
    out = decode_image(_save(Image.fromarray(arr), "PNG"), DecodeConfig(size=SIZE, resize="stretch"))
    assert out.min() == 255  # white stays white, not clipped garbage


def test_cmyk_becomes_rgb_with_similar_colour() -> None:
    im = Image.new("RGB", (40, 40), (200, 30, 30)).convert("CMYK")
    out = decode_image(_save(im, "JPEG", quality=95), DecodeConfig(size=SIZE, resize="stretch"))
    r, g, b = out[20, 20].astype(int)
    assert r > 150 and g < 80 and b < 80


def _tiff(mode: str, side: int) -> bytes:
    arr = np.zeros((side, side), {"I": np.int32, "F": np.float32, "I;16": np.uint16}[mode])
    arr[: side // 2] = 50_000 if mode == "I;16" else 200  # bright top half; compressible, a small upload
    buf = io.BytesIO()
    Image.fromarray(arr, mode if mode != "I;16" else None).save(buf, "TIFF", compression="tiff_deflate")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["I", "F", "I;16"])
def test_wide_modes_decode_without_full_size_float_copies(mode: str) -> None:
    """A small upload of a 6300 x 6300 32-bit TIFF once cost 1.2 GB in float64 copies (issue #8, item 4)."""
    import tracemalloc

    data = _tiff(mode, 6300)
    assert len(data) < 2_000_000
    tracemalloc.start()
    try:
        out = decode_image(data, DecodeConfig(size=224))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (224, 224, 3)
    assert out[:60].mean() > out[-60:].mean()  # the bright half survived the shrink (content, not noise)
    assert peak < 32_000_000, f"NumPy peak {peak / 1e6:.0f} MB while decoding"  # a float64 copy is 317 MB


def test_decoded_size_is_capped_before_decoding() -> None:
    data = _tiff("I", 3000)  # 9 Mpx x 4 bytes = 36 MB decoded
    with pytest.raises(ImageTooLargeError, match="bytes decoded, limit is 10000000"):
        decode_image(data, DecodeConfig(size=224, max_decoded_bytes=10_000_000))
    assert decode_image(data, DecodeConfig(size=224, max_decoded_bytes=40_000_000)).shape == (224, 224, 3)
