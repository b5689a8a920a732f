"""Contact sheets: the query poster and its neighbours, with titles and scores, as one PNG."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from server.types import Hit

TILE = (180, 270)  # 2:3 poster thumbnails
CAPTION_HEIGHT = 58
MARGIN = 10
BACKGROUND = (24, 24, 28)
QUERY_FRAME = (255, 196, 0)
TEXT = (235, 235, 235)
MUTED = (160, 160, 170)


def _placeholder(title: str) -> Image.Image:
    tile = Image.new("RGB", TILE, (60, 60, 70))
    d = ImageDraw.Draw(tile)
    d.multiline_text((TILE[0] / 2, TILE[1] / 2), "\n".join(textwrap.wrap(title or "(no poster)", 16)),
                     fill=MUTED, font=ImageFont.load_default(size=16), anchor="mm", align="center")
    return tile


def _thumbnail(source: bytes | Path | None, title: str) -> Image.Image:
    try:
        if source is None or (isinstance(source, Path) and not source.is_file()):
            return _placeholder(title)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.pad(im, TILE, color=(0, 0, 0))
    except (OSError, ValueError, Image.DecompressionBombError):
        return _placeholder(title)


def contact_sheet(query_title: str, query_image: bytes | Path | None, hits: Sequence[Hit],
                  posters_dir: Path | None, columns: int = 6) -> Image.Image:
    """Render the query (framed, first) followed by its neighbours."""
    tiles = [(_thumbnail(query_image, query_title), query_title, "query")]
    for hit in hits:
        path = posters_dir / hit.item.poster if posters_dir is not None and hit.item.poster else None
        tiles.append((_thumbnail(path, hit.item.title), hit.item.title, f"{hit.score:.3f}  #{hit.item.item_id}"))
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    cell_w, cell_h = TILE[0] + MARGIN, TILE[1] + CAPTION_HEIGHT + MARGIN
    sheet = Image.new("RGB", (cols * cell_w + MARGIN, rows * cell_h + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    for n, (thumb, title, caption) in enumerate(tiles):
        x, y = MARGIN + (n % cols) * cell_w, MARGIN + (n // cols) * cell_h
        sheet.paste(thumb, (x, y))
        if n == 0:
            draw.rectangle([x - 3, y - 3, x + TILE[0] + 2, y + TILE[1] + 2], outline=QUERY_FRAME, width=3)
        lines = textwrap.wrap(title, 24)[:2]
        draw.multiline_text((x, y + TILE[1] + 4), "\n".join(lines), fill=TEXT, font=font, spacing=2)
        draw.text((x, y + TILE[1] + 40), caption, fill=QUERY_FRAME if n == 0 else MUTED, font=small)
    return sheet
