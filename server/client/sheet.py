"""Contact sheets: the query poster and its neighbours, with titles and scores, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from indexer.contact_sheet import DEFAULT_COLUMNS, Tile, render_sheet
from server.types import Hit


def contact_sheet(
    query_title: str,
    query_image: bytes | Path | None,
    hits: Sequence[Hit],
    posters_dir: Path | None,
    columns: int = DEFAULT_COLUMNS,
) -> Image.Image:
    """Render the query (framed, first) followed by its neighbours (drawing: indexer/contact_sheet.py)."""
    tiles = [Tile(query_image, query_title, "query", highlight=True)]
    for hit in hits:
        path = posters_dir / hit.item.poster if posters_dir is not None and hit.item.poster else None
        tiles.append(Tile(path, hit.item.title, f"{hit.score:.3f}  #{hit.item.item_id}"))
    return render_sheet(tiles, columns)
