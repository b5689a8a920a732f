"""Contact sheets: poster thumbnails with captions in a grid, as one image.

Used by the server's client tools (query + neighbours) and by the quality reports
(clusters, duplicate pairs, edited copies). Knows nothing of gRPC or bundles.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = (180, 270)  # 2:3 poster thumbnails
CAPTION_HEIGHT = 58
MARGIN = 10
BACKGROUND = (24, 24, 28)
HIGHLIGHT_FRAME = (255, 196, 0)
TEXT = (235, 235, 235)
MUTED = (160, 160, 170)
DEFAULT_COLUMNS = 6
TITLE_WRAP = 24
TITLE_LINES = 2
PLACEHOLDER_WRAP = 16
CAPTION_OFFSET = 40
FRAME_WIDTH = 3


@dataclass(frozen=True)
class Tile:
    """One cell: an image (encoded bytes, a file, a PIL image or None for a placeholder) and two text lines."""

    source: bytes | Path | Image.Image | None
    title: str
    caption: str = ""
    highlight: bool = False  # framed, caption in the highlight colour (the query)


def _placeholder(title: str) -> Image.Image:
    tile = Image.new("RGB", TILE, (60, 60, 70))
    d = ImageDraw.Draw(tile)
    d.multiline_text(
        (TILE[0] / 2, TILE[1] / 2),
        "\n".join(textwrap.wrap(title or "(no poster)", PLACEHOLDER_WRAP)),
        fill=MUTED,
        font=ImageFont.load_default(size=16),
        anchor="mm",
        align="center",
    )
    return tile


def thumbnail(source: bytes | Path | Image.Image | None, title: str) -> Image.Image:
    """The source padded into a TILE-sized RGB thumbnail; a placeholder naming ``title`` if it cannot be read."""
    try:
        if source is None or (isinstance(source, Path) and not source.is_file()):
            return _placeholder(title)
        if isinstance(source, Image.Image):
            return ImageOps.pad(source.convert("RGB"), TILE, color=(0, 0, 0))
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.pad(rgb, TILE, color=(0, 0, 0))
    except (OSError, ValueError, Image.DecompressionBombError):
        return _placeholder(title)


def render_sheet(tiles: Sequence[Tile], columns: int = DEFAULT_COLUMNS) -> Image.Image:
    """Draw ``tiles`` row by row, ``columns`` per row."""
    if not tiles:
        raise ValueError("a contact sheet expected at least one tile, got none")
    cols = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    cell_w, cell_h = TILE[0] + MARGIN, TILE[1] + CAPTION_HEIGHT + MARGIN
    sheet = Image.new("RGB", (cols * cell_w + MARGIN, rows * cell_h + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    for n, tile in enumerate(tiles):
        x, y = MARGIN + (n % cols) * cell_w, MARGIN + (n // cols) * cell_h
        sheet.paste(thumbnail(tile.source, tile.title), (x, y))
        if tile.highlight:
            draw.rectangle(
                [x - FRAME_WIDTH, y - FRAME_WIDTH, x + TILE[0] + FRAME_WIDTH - 1, y + TILE[1] + FRAME_WIDTH - 1],
                outline=HIGHLIGHT_FRAME,
                width=FRAME_WIDTH,
            )
        lines = textwrap.wrap(tile.title, TITLE_WRAP)[:TITLE_LINES]
        draw.multiline_text((x, y + TILE[1] + 4), "\n".join(lines), fill=TEXT, font=font, spacing=2)
        draw.text(
            (x, y + TILE[1] + CAPTION_OFFSET),
            tile.caption,
            fill=HIGHLIGHT_FRAME if tile.highlight else MUTED,
            font=small,
        )
    return sheet
